"""What the frozen image encoder computes for a cache entry: its view of each image, its encoding,
and the encoding of a dataset's rows into an fp16 array (`trainables.features.cache` stores them).

Views: `"test"` is the resize-only transform (the test split, and the train split in `cached`
mode); `("train", v)` is augmented view v, where view v of image i is seeded by
(augmentation_seed, v, i), so it is the same array in every process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainables import data
from trainables.backbone import precision
from trainables.backbone.runtime import FrozenCLIP
from trainables.config import FeatureConfig

View = Literal["test"] | tuple[Literal["train"], int]
"""`"test"` or `("train", v)` (above)."""

Encoding = Literal["dense", "global"]
"""`dense`: per-location features [N, L, d] (the MLR setups); `global`: CLIP's image embedding,
stored as [N, 1, d] (LAPT)."""


def view_transform(view: View, image_size: int, augmentation: data.Augmentation = "reference") -> tuple[Callable, int | None]:
    """The transform of `view` (augmented ones with `augmentation`'s RandAugment) and its view index."""
    if view == "test":
        return data.test_transform(image_size), None
    kind, index = view
    if kind != "train" or not isinstance(index, int) or index < 0:
        raise ValueError(f'a view is "test" or ("train", view_index >= 0), got {view!r}')
    return data.train_transform(image_size, augmentation=augmentation), index


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


def exit_with_parent(_worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: end the worker at once when the process that started it
    dies. A killed fill actor or trial otherwise leaves its workers running for a while, holding
    what they inherited at the fork, the encoding shard's file lock among them, so the shard's next
    encoder waits for them. `os._exit`: no exit handlers, which may block on a queue nobody reads."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


PARENT_POLL_S = 0.2


class RowBatches(torch.utils.data.Sampler):
    """A batch sampler over whichever rows are set (`rows`) before each pass: one loader, and its
    persistent workers, serves every shard of an entry."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.rows: Sequence[int] = range(0)

    def __iter__(self):
        for start in range(0, len(self.rows), self.batch_size):
            yield list(self.rows[start : start + self.batch_size])

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)


class RowLoader:
    """`images` (a `data.ImageTensors`) decoded by `num_workers` workers that are started once and
    kept for every pass over whichever rows it is given (each shard of a cache entry, each epoch of
    an online trial, each chunk of a decoded store); pinned for a CUDA device, whose copies then overlap."""

    def __init__(self, images: data.ImageTensors, batch_size: int, num_workers: int, device: torch.device) -> None:
        self.sampler = RowBatches(batch_size)
        self.loader = torch.utils.data.DataLoader(
            images, batch_sampler=self.sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
            pin_memory=device.type == "cuda", worker_init_fn=exit_with_parent if num_workers else None,
        )  # fmt: skip

    def batches(self, rows: Sequence) -> Iterator:
        """(images, indices, valid) batches of `rows`, in order."""
        self.sampler.rows = rows
        return data.batches_of(self.loader)


class EntryLoader(RowLoader):
    """The images of one cache entry (a dataset at a view), for every shard of it."""

    def __init__(
        self, dataset: data.MultiLabelDataset, view: View, image_size: int, augmentation: data.Augmentation,
        augmentation_seed: int, batch_size: int, num_workers: int, device: torch.device,
    ) -> None:  # fmt: skip
        transform, view_index = view_transform(view, image_size, augmentation)
        super().__init__(data.ImageTensors(dataset, transform, image_size, view_index, augmentation_seed), batch_size, num_workers, device)


def encode_rows(
    clip: FrozenCLIP,
    images: EntryLoader,
    encoding: Encoding,
    rows: range,
    path: Path,
    dataset: data.MultiLabelDataset,
    on_batch: Callable[[int], None] | None,
) -> list[dict]:
    """Encode the images of `dataset` at `rows` (read through `images`) into a new .npy file at
    `path`, synced to disk; the skipped (unreadable) images. On CUDA the encoder computes in
    `precision.encoder_precision` and the copies in do not wait."""
    device = clip.device
    features = None
    skipped = []
    for batch, indices, valid in images.batches(rows):
        with torch.no_grad(), precision.autocast(precision.encoder_precision(device), device):
            pixels = batch.to(device, non_blocking=True)
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
