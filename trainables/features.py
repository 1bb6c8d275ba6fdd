"""The frozen-feature cache: encode each image once per (backbone, image size, augmentation draw).

The image encoder is frozen, so its dense features are a pure function of (backbone and weights,
input size, image, transform and augmentation draw). Every trial of a grid that shares those reads
one memory-mapped fp16 array instead of running the encoder again:

    <cache_dir>/features/<key>.npy    float16 [N, L, d], opened read-only with mmap_mode="r"
    <cache_dir>/features/<key>.json   the key's inputs, the shape, the skipped (unreadable) images
    <cache_dir>/features/<key>.lock   held while one process encodes; the others wait, then read

A writer fills `<key>.npy.tmp-<pid>` and renames it into place last (after the sidecar), so a
killed writer leaves only a temporary file, which no reader opens and the next writer deletes.
Readers need no lock: a rename is atomic, so they see either no file or a complete one.

Views: `"test"` is the resize-only transform (the test split, and the train split in `cached`
mode); `("train", v)` is augmented view v, where view v of image i is seeded by
(augmentation_seed, v, i), so it is the same array in every process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from trainables import clip as clip_lib
from trainables import data
from trainables.config import BackboneConfig, DatasetConfig, FeatureConfig
from trainables.pretrain import load_backbone
from trainables.errors import UserInputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the stored layout or the meaning of a key changes."""

View = Literal["test"] | tuple[Literal["train"], int]
Encoding = Literal["dense", "global"]
"""`dense`: per-location features [N, L, d] (the MLR setups); `global`: CLIP's image embedding,
stored as [N, 1, d] (LAPT)."""


class DenseFeatures(NamedTuple):
    """Dense features of a dataset split and which rows hold a real image."""

    features: np.ndarray
    """float16 [N, L, d], a read-only memory map."""
    valid: np.ndarray
    """bool [N]: False for images skipped as unreadable (their rows are zeros)."""


def _view_transform(view: View, image_size: int) -> tuple[Callable, int | None]:
    if view == "test":
        return data.test_transform(image_size), None
    kind, index = view
    if kind != "train" or not isinstance(index, int) or index < 0:
        raise ValueError(f'a view is "test" or ("train", view_index >= 0), got {view!r}')
    return data.train_transform(image_size), index


class FeatureCache:
    """Dense features of (backbone, dataset split, view), computed once and shared by every trial."""

    def __init__(self, cache_dir: Path, augmentation_seed: int = 0) -> None:
        self.directory = Path(cache_dir) / "features"
        self.augmentation_seed = augmentation_seed

    def key_inputs(
        self, clip: clip_lib.FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> dict:
        """Everything the features depend on, as JSON-able values (dense keys predate `encoding`)."""
        transform, view_index = _view_transform(view, clip.image_size)
        return ({} if encoding == "dense" else {"encoding": encoding}) | {
            "format": FORMAT_VERSION,
            "backbone": clip.identity,
            "image_size": clip.image_size,
            "dataset": dataset.fingerprint,
            "dataset_name": dataset.name,
            "split": dataset.split,
            "transform": repr(transform),
            "view": view_index,
            "augmentation_seed": None if view_index is None else self.augmentation_seed,
        }

    def key(
        self, clip: clip_lib.FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
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
        self, clip: clip_lib.FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> bool:
        """Whether these features are stored and trusted."""
        return self._read(self.key(clip, dataset, view, encoding), len(dataset)) is not None

    def dense_features(
        self,
        clip: clip_lib.FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View = "test",
        *,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        num_workers: int = 0,
        progress: bool = False,
        encoding: Encoding = "dense",
    ) -> DenseFeatures:
        """Read the features of (clip, dataset, view), encoding them first if no process has yet."""
        key = self.key(clip, dataset, view, encoding)
        stored = self._read(key, len(dataset))
        if stored is None:
            stored = self._write(clip, dataset, view, encoding, key, batch_size, device, num_workers, progress)
        skipped = np.flatnonzero(~stored.valid)
        if len(skipped) and not dataset.skip_corrupt_images:
            # Encoded by a trial that skipped unreadable images; this one was not told to.
            raise UserInputError(
                f"dataset '{dataset.name}': cannot read image {dataset.image_paths[skipped[0]]} "
                f"({len(skipped)} unreadable image(s); set skip_corrupt_images to skip them)"
            )
        return stored

    def _write(
        self,
        clip: clip_lib.FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View,
        encoding: Encoding,
        key: str,
        batch_size: int,
        device: torch.device | str | None,
        num_workers: int,
        progress: bool,
    ) -> DenseFeatures:
        """Encode and store the features under the key's lock, unless another process just did."""
        self.directory.mkdir(parents=True, exist_ok=True)
        array_path, sidecar_path, lock_path = self._paths(key)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process to encode %s (%s/%s)", array_path, dataset.name, dataset.split)
            lock.acquire()
        try:
            stored = self._read(key, len(dataset))  # another process may have written it while we waited
            if stored is not None:
                return stored
            # Holding the lock, no other writer is active: anything left is from a killed writer.
            for leftover in [array_path, *self.directory.glob(f"{key}.*.tmp-*")]:
                leftover.unlink(missing_ok=True)
            temporary_array = array_path.with_name(f"{array_path.name}.tmp-{os.getpid()}")
            shape, skipped = self._encode(
                clip, dataset, view, encoding, temporary_array, batch_size, device, num_workers, progress
            )
            sidecar = {
                "key": key,
                "shape": list(shape),
                "dtype": "float16",
                "inputs": self.key_inputs(clip, dataset, view, encoding),
                "skipped": skipped,
            }
            temporary_sidecar = sidecar_path.with_name(f"{sidecar_path.name}.tmp-{os.getpid()}")
            temporary_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
            os.replace(temporary_sidecar, sidecar_path)
            os.replace(temporary_array, array_path)  # the commit: readers trust the array once it exists
        finally:
            lock.release()
        if skipped:
            log.warning(
                "dataset '%s' %s: skipped %d unreadable image(s), listed in %s",
                dataset.name, dataset.split, len(skipped), sidecar_path,
            )  # fmt: skip
        stored = self._read(key, len(dataset))
        if stored is None:
            raise RuntimeError(f"features just written to {array_path} cannot be read back")
        return stored

    def _encode(
        self,
        clip: clip_lib.FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View,
        encoding: Encoding,
        path: Path,
        batch_size: int,
        device: torch.device | str | None,
        num_workers: int,
        progress: bool,
    ) -> tuple[tuple[int, ...], list[dict]]:
        """Encode every image into a new .npy file at `path`, synced to disk; (shape, skipped images)."""
        transform, view_index = _view_transform(view, clip.image_size)
        images = data.ImageTensors(dataset, transform, clip.image_size, view_index, self.augmentation_seed)
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers)
        device = torch.device(device) if device is not None else next(clip.parameters()).device
        features = None
        skipped = []
        label = "test transform" if view_index is None else f"train view {view_index}"
        with tqdm(total=len(dataset), unit="img", desc=f"{dataset.name}/{dataset.split} {label}", disable=None if progress else True) as bar:  # None: off when not a terminal
            for batch, indices, valid in loader:
                with torch.no_grad():
                    pixels = batch.to(device)
                    encoded = clip.encode_dense(pixels) if encoding == "dense" else clip.encode_image(pixels).unsqueeze(1)
                    encoded = encoded.to(torch.float16).cpu().numpy()
                encoded[~valid.numpy()] = 0
                if features is None:  # (L, d) are known once the first batch is encoded
                    shape = (len(dataset), *encoded.shape[1:])
                    features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
                features[indices.numpy()] = encoded
                skipped += [{"index": i, "path": str(dataset.image_paths[i])} for i in indices[~valid].tolist()]
                bar.update(len(indices))
        features.flush()
        shape = features.shape
        del features
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        return shape, skipped


def train_views(features: FeatureConfig) -> list[View]:
    """The train-split views a trial reads: none (online), the resize-only one, or K augmented ones."""
    if features.mode == "online":
        return []
    if features.mode == "cached":
        return ["test"]
    return [("train", v) for v in range(features.views)]


def _activation(clip: clip_lib.FrozenCLIP) -> str:
    return f"{'QuickGELU' if clip.quick_gelu else 'GELU'} ({clip.quick_gelu_reason})"


def fill(
    dataset_config: DatasetConfig,
    backbone: BackboneConfig,
    features: FeatureConfig,
    *,
    cache_dir: Path,
    data_dir: Path,
    device: str = "auto",
    batch_size: int = 100,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Encode everything a trial on `dataset_config` reads (its train views and the test split) ahead of a run.

    The features depend on (dataset, backbone, feature mode) only, so one call covers every setup,
    label ratio, seed and loss setting on that dataset. Returns counts for a report.
    """
    device = clip_lib.resolve_device(device)
    clip = load_backbone(backbone, data_dir, device)
    data.check(dataset_config, data_dir)
    cache = FeatureCache(cache_dir)
    jobs = [(data.build_dataset(dataset_config, "train", data_dir), view) for view in train_views(features)]
    jobs.append((data.build_dataset(dataset_config, "test", data_dir), "test"))
    summary = {"encoded": 0, "reused": 0, "skipped_images": 0, "activation": _activation(clip)}
    for dataset, view in jobs:
        summary["reused" if cache.contains(clip, dataset, view) else "encoded"] += 1
        stored = cache.dense_features(
            clip, dataset, view, batch_size=batch_size, device=device, num_workers=num_workers, progress=progress
        )
        summary["skipped_images"] += int((~stored.valid).sum())
    return summary
