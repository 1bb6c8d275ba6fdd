"""The frozen CLIP that both task families and the feature cache compute with.

`load_backbone(config, data_dir, device)` builds the backbone a trial config names, the one entry a
trial or a fill uses; `load_clip(model, pretrained, image_size)` builds one from its parts (random
weights when `pretrained` is None). Inside: `runtime` (`FrozenCLIP`: dense image features, the text encoder over prompt embeddings), `weights` (an
open_clip tag, a checkpoint file, random or `synthetic`), `pretrain` (the synthetic weights'
contrastive pre-training on generated shapes), `precision` (the dtype the encoders and steps run in).
"""

from trainables.backbone.runtime import FrozenCLIP
from trainables.backbone.weights import (
    SYNTHETIC_WEIGHTS,
    load_backbone,
    load_clip,
    resolve_pretrained,
)

__all__ = ["SYNTHETIC_WEIGHTS", "FrozenCLIP", "load_backbone", "load_clip", "resolve_pretrained"]
