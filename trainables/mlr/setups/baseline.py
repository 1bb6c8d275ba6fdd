"""The vision-only Baseline (paper section 3.1): a linear projector to a presence and an absence map per class.

Reference: `SamyakR99/PositiveCoOp` `models/baseline.py`: `nn.Linear(d, 2K)` (PyTorch default
init) on the unnormalised dense features, every one of the 2K maps weighted by its own spatial
softmax, logits `5 * sum_l w * z`.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.mlr.setups.aggregation import spatial_pool
from trainables.mlr.setups.base import MLRSetup, SetupOptions


class BaselineOptions(SetupOptions):
    """The baseline has no options."""


class Baseline(MLRSetup):
    Options = BaselineOptions
    lr_groups = ("projector",)

    def __init__(self, classnames: list[str], clip: FrozenCLIP, options: BaselineOptions):
        super().__init__(classnames, clip)
        # Drawn by the CPU generator whatever the device, so a seed starts the same on a GPU and a CPU.
        self.projector = nn.Linear(clip.embed_dim, 2 * self.num_classes).to(clip.device)

    def class_embeddings(self) -> None:
        return None

    def logits_from_features(self, features: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, K, 2]; the baseline has no class embeddings (`class_embeddings` is ignored)."""
        batch, locations, _ = features.shape
        # a(h, w) = Phi(z(h, w)) in R^{K x 2}: [B, L, K, 2] -> maps [B, K, 2, L]
        maps = self.projector(features).view(batch, locations, self.num_classes, 2).permute(0, 2, 3, 1)
        return spatial_pool(maps, maps)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"projector": list(self.projector.parameters())}
