"""Class-specific region aggregation (PositiveCoOp paper section 3.1, DualCoOp `DualCoop.forward`).

Every location l of the dense features gets a presence and an absence score per class; a spatial
softmax over the locations turns the scores into attention weights, and the logit is the weighted
sum of the scores. Two conventions for the weights of the absence map:

- `"paper"` (default): each map weighted by its own softmax, A+ = softmax(a+), A- = softmax(a-)
  (PositiveCoOp paper, section 3.1 equations for A+ and A-).
- `"reference"`: both maps weighted by the softmax of the presence map, as the DualCoOp and
  PositiveCoOp code does (`w = softmax_l(S+)` applied to S+ and S-).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Aggregation = Literal["paper", "reference"]

SIMILARITY_SCALE = 20.0
"""Scores are 20 * cos(feature, class embedding): hard-coded in DualCoOp `models/dualcoop.py`
(`DualCoop.forward`), whose `--logit_scale` option is never used."""

LOGIT_SCALE = 5.0
"""Logits are 5 * sum_l w_l * score_l, again hard-coded in DualCoOp (and in PositiveCoOp's baseline)."""

PAPER_TEMPERATURE = SIMILARITY_SCALE * LOGIT_SCALE
"""A prompt setup's logit is 100 * (softmax-weighted mean cosine): the learned temperature
exp(logit_scale) of OpenAI's CLIP, which ends training at CLIP's clamp of 100."""

LogitScale = Literal["paper", "backbone"]

PRESENCE, ABSENCE = 0, 1
"""Index of the presence and absence entries on the last axis of logits [B, K, 2]."""


def spatial_pool(maps: torch.Tensor, weight_logits: torch.Tensor, scale: float = LOGIT_SCALE) -> torch.Tensor:
    """scale * sum_l softmax_l(weight_logits) * maps, over the last axis (the locations)."""
    weights = torch.softmax(weight_logits, dim=-1)
    return scale * (weights * maps).sum(dim=-1)


def similarity_maps(features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """SIMILARITY_SCALE * cosine [B, K, 2, L] of dense features [B, L, d] with unit class embeddings [K, 2, d].

    The features are L2-normalised over channels at every location (DualCoOp `models/dualcoop.py`).
    """
    features = F.normalize(features, dim=-1)
    return SIMILARITY_SCALE * torch.einsum("bld,kcd->bkcl", features, class_embeddings.to(features.dtype))


def region_logits(
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    aggregation: Aggregation = "paper",
    temperature: float = PAPER_TEMPERATURE,
) -> torch.Tensor:
    """Logits [B, K, 2] (presence, absence) of dense features [B, L, d] against class embeddings [K, 2, d]:
    `temperature` * sum_l w_l cos_l, with the spatial weights w = softmax(20 cos) at any temperature."""
    maps = similarity_maps(features, class_embeddings)
    if aggregation == "paper":
        weight_logits = maps
    elif aggregation == "reference":
        weight_logits = maps[:, :, PRESENCE : PRESENCE + 1].expand_as(maps)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return spatial_pool(maps, weight_logits, temperature / SIMILARITY_SCALE)
