"""Training images per label: LAPT's sample collector, pluggable.

A collector turns labels into training examples: rows of an image set's cached features, each with
a label index (ID labels 0..K-1, then the negative labels). Two ship here:

- the ID training set itself, for the ID labels (`id_examples`);
- retrieval from a local image pool: the top-k pool images per label by the cosine of their CLIP
  image embeddings to the label's hand-crafted text embedding (`retrieve`), as LAPT's nearest
  neighbours from LAION.

A text-to-image backend (LAPT's SDXL images) is one more function of the same shape: generate
`per_label` images per label prompt into a folder, write a manifest `image,labels` with the label
names, and read it as an ID-kind `manifest` set; its rows and labels then join the others'.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def retrieve(pool_features: torch.Tensor, label_features: torch.Tensor, per_label: int) -> torch.Tensor:
    """[L, per_label] pool indices per label, most similar first (ties: the lower index first)."""
    if per_label > len(pool_features):
        raise ValueError(f"cannot retrieve {per_label} images per label from a pool of {len(pool_features)}")
    similarity = F.normalize(label_features.float(), dim=-1) @ F.normalize(pool_features.float(), dim=-1).T
    order = torch.argsort(-similarity, dim=1, stable=True)
    return order[:, :per_label]


def id_examples(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, label indices) of a one-hot ID split [N, K]: every image with its class."""
    rows, classes = np.nonzero(labels == 1)
    return rows, classes


def keep_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions into `labels` to keep: ceil(fraction * n) of each label's n examples, chosen by a
    permutation seeded by (seed, label), so a smaller fraction keeps a subset of a larger one's."""
    kept = []
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(label)]).permutation(len(positions))
        kept.append(positions[np.sort(order[: math.ceil(fraction * len(positions))])])
    return np.sort(np.concatenate(kept)) if kept else np.array([], dtype=np.int64)
