"""The feature cache's read side: where an entry's features live, the key that names them, and
whether a stored entry or shard can be trusted. Writing them is `trainables.features.cache`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trainables import data
from trainables.backbone import precision
from trainables.backbone.runtime import FrozenCLIP
from trainables.features.encoding import Encoding, View, view_transform

FORMAT_VERSION = 1
"""Bump when the stored layout or the meaning of a key changes."""

SHARD_IMAGES = 2048
"""Images per shard: encoded and stored one shard at a time (by a trial, the driver or the cluster's
GPUs in parallel), so an interrupted fill resumes with the shards it stored."""


class DenseFeatures(NamedTuple):
    """Dense features of a dataset split and which rows hold a real image."""

    features: np.ndarray
    """float16 [N, L, d], a read-only memory map."""
    valid: np.ndarray
    """bool [N]: False for images skipped as unreadable (their rows are zeros)."""


class CacheReader:
    """The stored entries of (backbone, dataset split, view): their keys, paths and trusted contents."""

    def __init__(self, cache_dir: Path, augmentation_seed: int = 0, augmentation: data.Augmentation = "reference") -> None:
        self.directory = Path(cache_dir) / "features"
        self.augmentation_seed = augmentation_seed
        self.augmentation = augmentation
        """The RandAugment of the augmented train views (`features.augmentation`); part of their keys."""

    def key_inputs(
        self, clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> dict:
        """Everything the features depend on, as JSON-able values (dense keys predate `encoding`)."""
        transform, view_index = view_transform(view, clip.image_size, self.augmentation)
        # Keys made before an input existed keep it out at its old value: fp32, dense.
        computed = precision.encoder_precision(clip.device)
        return (
            ({} if encoding == "dense" else {"encoding": encoding}) | ({} if computed == "fp32" else {"encoder_precision": computed})
        ) | {
            "format": FORMAT_VERSION,
            "backbone": clip.identity,
            "image_size": clip.image_size,
            "dataset": dataset.fingerprint,
            "dataset_name": dataset.name,
            "split": dataset.split,
            "transform": repr(transform),
            "view": view_index,
            "augmentation_seed": None if view_index is None else self.augmentation_seed,
        }  # fmt: skip

    def key(
        self, clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> str:
        """sha256 of the key inputs."""
        inputs = self.key_inputs(clip, dataset, view, encoding)
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.directory / f"{key}.npy", self.directory / f"{key}.json", self.directory / f"{key}.lock"

    def _read(self, key: str, num_images: int) -> DenseFeatures | None:
        """The stored features, or None when they are missing or cannot be trusted."""
        array_path, sidecar_path, _ = self._paths(key)
        if not array_path.is_file():
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
            features = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        if (
            not isinstance(sidecar, dict)
            or sidecar.get("key") != key
            or features.dtype != np.float16
            or features.ndim != 3
            or list(features.shape) != sidecar.get("shape")
            or features.shape[0] != num_images
        ):
            return None
        valid = np.ones(num_images, dtype=bool)
        try:
            valid[[entry["index"] for entry in sidecar["skipped"]]] = False
        except (KeyError, TypeError, IndexError):
            return None
        return DenseFeatures(features, valid)

    def contains(
        self, clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> bool:
        """Whether these features are stored and trusted."""
        return self._read(self.key(clip, dataset, view, encoding), len(dataset)) is not None

    def shards(self, num_images: int) -> list[range]:
        """The rows of each shard: the unit of encoding, of a fill's parallel work and of its resumption."""
        return [range(start, min(start + SHARD_IMAGES, num_images)) for start in range(0, num_images, SHARD_IMAGES)]

    def missing_shards(self, key: str, num_images: int) -> dict[int, range]:
        """The shards of `key` that no process has stored yet, by index, with their rows (none once
        the entry itself is stored)."""
        if self._read(key, num_images) is not None:
            return {}
        return {i: rows for i, rows in enumerate(self.shards(num_images)) if self._read_shard(key, i, rows) is None}

    def _shard_paths(self, key: str, index: int) -> tuple[Path, Path, Path]:
        folder = self.directory / f"{key}.shards"
        return folder / f"{index:05d}.npy", folder / f"{index:05d}.json", folder / f"{index:05d}.lock"

    def _read_shard(self, key: str, index: int, rows: range) -> tuple[np.ndarray, list[dict]] | None:
        """A stored shard (its features and skipped images), or None when it is missing or cannot be trusted."""
        array_path, sidecar_path, _ = self._shard_paths(key, index)
        try:
            sidecar = json.loads(sidecar_path.read_text())
            features = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        if sidecar.get("rows") != [rows.start, rows.stop] or features.dtype != np.float16 or features.shape[0] != len(rows):
            return None
        return features, sidecar["skipped"]
