"""Partial labels: keep each (image, class) label independently with probability `ratio`.

As the DualCoOp reference (`mask = rand(N, K) < pp`, unknown = -1), but seeded: the uniform draw
u[i, k] comes from a generator seeded by (key, seed) only, so the mask is the same for every setup
of a grid (paired comparisons), in every process, and nested across ratios (u < 0.1 implies
u < 0.2: what is kept at 10% is also kept at 20%).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from trainables import atomic
from trainables.data.base import MultiLabelDataset
from trainables.errors import UserInputError

UNKNOWN = -1


def _uniforms(shape: tuple[int, int], key: str, seed: int) -> np.ndarray:
    # sha256, not hash(): Python salts str hashes per process.
    entropy = int.from_bytes(hashlib.sha256(f"{key}\0{seed}".encode()).digest(), "big")
    return np.random.default_rng(entropy).random(shape)


def partial_labels(labels: np.ndarray, ratio: float, seed: int, key: str) -> np.ndarray:
    """int8 [N, K]: `labels` where u[i, k] < ratio, else -1; entries already -1 stay -1."""
    if not 0.0 < ratio <= 1.0:
        raise UserInputError(f"label ratio {ratio} is outside (0, 1]")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, K], got shape {labels.shape}")
    kept = _uniforms(labels.shape, key, seed) < ratio
    return np.where(kept, labels, UNKNOWN).astype(np.int8)


def dataset_key(dataset: MultiLabelDataset) -> str:
    """The mask key of a dataset split: its fingerprint (which changes with its images or labels)."""
    return f"{dataset.fingerprint}/{dataset.split}"


def dataset_partial_labels(dataset: MultiLabelDataset, ratio: float, seed: int) -> np.ndarray:
    """The partial labels of a dataset split: the same for every setup with this (ratio, seed)."""
    return partial_labels(dataset.labels, ratio, seed, dataset_key(dataset))


def kept_fraction(partial: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of known labels (not -1 in `labels`) that `partial` keeps."""
    known = np.asarray(labels) != UNKNOWN
    if not known.any():
        return 0.0
    return float((np.asarray(partial)[known] != UNKNOWN).mean())


def save_partial_labels(path: Path, partial: np.ndarray, labels: np.ndarray, *, ratio: float, seed: int, key: str) -> None:
    """Write the mask beside a run as .npz (partial, labels, ratio, seed, key, kept_fraction), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez_compressed(
                handle,
                partial=np.asarray(partial, dtype=np.int8),
                labels=np.asarray(labels, dtype=np.int8),
                ratio=np.float64(ratio),
                seed=np.int64(seed),
                key=np.str_(key),
                kept_fraction=np.float64(kept_fraction(partial, labels)),
            )

    atomic.replace(path, write)


def load_partial_labels(path: Path) -> dict:
    """The arrays and scalars `save_partial_labels` wrote, as a dict of plain values."""
    with np.load(path) as archive:
        return {
            "partial": archive["partial"],
            "labels": archive["labels"],
            "ratio": float(archive["ratio"]),
            "seed": int(archive["seed"]),
            "key": str(archive["key"]),
            "kept_fraction": float(archive["kept_fraction"]),
        }
