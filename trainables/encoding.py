"""What the frozen image encoder computes for a cache entry: its view of each image, its encoding,
and the encoding of a dataset's rows into an fp16 array (`trainables.features` stores them).

Views: `"test"` is the resize-only transform (the test split, and the train split in `cached`
mode); `("train", v)` is augmented view v, where view v of image i is seeded by
(augmentation_seed, v, i), so it is the same array in every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainables import clip as clip_lib
from trainables import data
from trainables.config import FeatureConfig

View = Literal["test"] | tuple[Literal["train"], int]
"""`"test"` or `("train", v)` (above)."""

Encoding = Literal["dense", "global"]
"""`dense`: per-location features [N, L, d] (the MLR setups); `global`: CLIP's image embedding,
stored as [N, 1, d] (LAPT)."""


def view_transform(view: View, image_size: int) -> tuple[Callable, int | None]:
    if view == "test":
        return data.test_transform(image_size), None
    kind, index = view
    if kind != "train" or not isinstance(index, int) or index < 0:
        raise ValueError(f'a view is "test" or ("train", view_index >= 0), got {view!r}')
    return data.train_transform(image_size), index


def train_views(features: FeatureConfig) -> list[View]:
    """The train-split views a trial reads: none (online), the resize-only one, or K augmented ones."""
    if features.mode == "online":
        return []
    if features.mode == "cached":
        return ["test"]
    return [("train", v) for v in range(features.views)]


def fill_views(features: FeatureConfig) -> list[tuple[data.Split, View]]:
    """(split, view) of every entry a trial reads: the train split's views, then the test split."""
    return [("train", view) for view in train_views(features)] + [("test", "test")]


def encode_rows(
    clip: clip_lib.FrozenCLIP,
    dataset: data.MultiLabelDataset,
    view: View,
    encoding: Encoding,
    rows: range,
    path: Path,
    augmentation_seed: int,
    batch_size: int,
    device: torch.device | str | None,
    num_workers: int,
    on_batch: Callable[[int], None] | None,
) -> list[dict]:
    """Encode the images of `dataset` at `rows`, seen in `view`, into a new .npy file at `path`, synced
    to disk; the skipped (unreadable) images."""
    transform, view_index = view_transform(view, clip.image_size)
    images = data.ImageTensors(dataset, transform, clip.image_size, view_index, augmentation_seed)
    subset = torch.utils.data.Subset(images, list(rows))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    device = torch.device(device) if device is not None else next(clip.parameters()).device
    features = None
    skipped = []
    for batch, indices, valid in data.batches_of(loader):
        with torch.no_grad():
            pixels = batch.to(device)
            encoded = clip.encode_dense(pixels) if encoding == "dense" else clip.encode_image(pixels).unsqueeze(1)
            encoded = encoded.to(torch.float16).cpu().numpy()
        encoded[~valid.numpy()] = 0
        if features is None:  # (L, d) are known once the first batch is encoded
            features = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(rows), *encoded.shape[1:]))
        features[indices.numpy() - rows.start] = encoded
        skipped += [{"index": i, "path": str(dataset.image_paths[i])} for i in indices[~valid].tolist()]
        if on_batch is not None:
            on_batch(len(indices))
    features.flush()
    del features
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return skipped


