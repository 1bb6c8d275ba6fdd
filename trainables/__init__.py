"""The library half: CLIP backbones, the MLR setups, data, losses, metrics and the per-trial loop.

Models, data, losses and metrics import neither Ray nor MLflow, so a notebook can use them alone;
only `trainables.trainable` (the Ray Tune function trainable) touches Ray.
"""
