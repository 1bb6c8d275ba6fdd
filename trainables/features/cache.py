"""The frozen-feature cache: encode each image once per (backbone, image size, augmentation draw).

The image encoder is frozen, so its dense features are a pure function of (backbone and weights,
input size, image, transform and augmentation draw). Every trial of a grid that shares those reads
one memory-mapped fp16 array instead of running the encoder again:

    <cache_dir>/features/<key>.npy    float16 [N, L, d], opened read-only with mmap_mode="r"
    <cache_dir>/features/<key>.json   the key's inputs, the shape, the skipped (unreadable) images
    <cache_dir>/features/<key>.lock   held while one process encodes; the others wait, then read

Images are encoded a shard at a time (`SHARD_IMAGES`), each shard stored under its own lock as
`<key>.shards/<i>.npy` with its sidecar, so that a fill interrupted midway resumes with the shards
it stored and several processes (the GPUs of a cluster, `orchestrator.run.fill`) encode one entry's
shards in parallel. Once every shard is stored, they are joined, under the key's lock, into a
temporary file, which is renamed into place last, after the sidecar (`trainables.atomic`). A killed writer leaves
only temporary files, which no reader opens and the next writer deletes. Readers need no lock: a
rename is atomic, so they see either no file or a complete one.

What an entry holds (its view and encoding) and how its images are encoded is `trainables.features.encoding`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from trainables import atomic, data
from trainables.backbone.runtime import FrozenCLIP
from trainables.errors import UserInputError
from trainables.features.encoding import Encoding, EntryLoader, View, encode_rows
from trainables.features.reading import CacheReader, DenseFeatures

log = logging.getLogger(__name__)


class FeatureCache(CacheReader):
    """Dense features of (backbone, dataset split, view), computed once and shared by every trial."""

    def dense_features(
        self,
        clip: FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View = "test",
        *,
        batch_size: int = 32,
        num_workers: int = 0,
        progress: bool = False,
        encoding: Encoding = "dense",
    ) -> DenseFeatures:
        """Read the features of (clip, dataset, view), encoding them first on the clip's device if no process has yet."""
        key = self.key(clip, dataset, view, encoding)
        stored = self._read(key, len(dataset))
        if stored is None:
            stored = self._write(clip, dataset, view, encoding, key, batch_size, num_workers, progress)
        skipped = np.flatnonzero(~stored.valid)
        if len(skipped) and not dataset.skip_corrupt_images:
            # Encoded by a trial that skipped unreadable images; this one was not told to.
            raise UserInputError(
                f"dataset '{dataset.name}': cannot read image {dataset.image_paths[skipped[0]]} "
                f"({len(skipped)} unreadable image(s); set skip_corrupt_images to skip them)"
            )
        return stored

    # -- writing: shards, then the entry ------------------------------------------------------------

    def encode_shard(
        self,
        clip: FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View,
        index: int,
        *,
        encoding: Encoding = "dense",
        images: EntryLoader | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> bool:
        """Encode shard `index` of (clip, dataset, view) and store it, under its own lock; False when
        another process stored it first. `images`: the entry's loader (`entry_loader`), kept by a
        caller that encodes several shards; else one is made of `batch_size` and `num_workers`.
        `on_batch(images)` is called as batches are encoded.

        Shards are written like entries: into a temporary file named by host and process, renamed
        into place after their sidecar, so a killed writer leaves nothing that is read."""
        key = self.key(clip, dataset, view, encoding)
        rows = self.shards(len(dataset))[index]
        array_path, sidecar_path, lock_path = self._shard_paths(key, index)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path)):
            if self._read_shard(key, index, rows) is not None:
                return False
            atomic.clear_leftovers(array_path)
            atomic.clear_leftovers(sidecar_path)

            loader = images or self.entry_loader(clip, dataset, view, batch_size, num_workers)

            def encode(temporary: Path) -> None:
                skipped = encode_rows(clip, loader, encoding, rows, temporary, dataset, on_batch)
                sidecar = json.dumps({"rows": [rows.start, rows.stop], "skipped": skipped}) + "\n"
                atomic.replace(sidecar_path, lambda path: path.write_text(sidecar))

            atomic.replace(array_path, encode)
        return True

    def entry_loader(
        self, clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, batch_size: int, num_workers: int
    ) -> EntryLoader:
        """The loader of (dataset, view) for `encode_shard`: one set of decoding workers for every shard."""
        return EntryLoader(
            dataset, view, clip.image_size, self.augmentation, self.augmentation_seed, batch_size, num_workers, clip.device
        )

    def assemble(
        self, clip: FrozenCLIP, dataset: data.MultiLabelDataset, view: View, encoding: Encoding = "dense"
    ) -> DenseFeatures:
        """Join the stored shards into the entry under the key's lock (nothing to do if another process
        did) and remove them; every shard must be stored."""
        key = self.key(clip, dataset, view, encoding)
        array_path, sidecar_path, lock_path = self._paths(key)
        with FileLock(str(lock_path)):
            stored = self._read(key, len(dataset))
            if stored is not None:
                return stored
            # Holding the lock, no other writer of the entry is active: anything left is from a killed one.
            array_path.unlink(missing_ok=True)
            atomic.clear_leftovers(array_path)
            atomic.clear_leftovers(sidecar_path)
            shards = [self._read_shard(key, i, rows) for i, rows in enumerate(self.shards(len(dataset)))]
            missing = [i for i, shard in enumerate(shards) if shard is None]
            if missing:
                raise RuntimeError(f"cannot assemble {array_path}: shards {missing} are not stored")
            shape = (len(dataset), *shards[0][0].shape[1:])
            skipped = [entry for _, shard_skipped in shards for entry in shard_skipped]
            sidecar = {
                "key": key, "shape": list(shape), "dtype": "float16",
                "inputs": self.key_inputs(clip, dataset, view, encoding), "skipped": skipped,
            }  # fmt: skip

            def join(temporary: Path) -> None:
                joined = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float16, shape=shape)
                for rows, (features, _) in zip(self.shards(len(dataset)), shards):
                    joined[rows.start : rows.stop] = features
                joined.flush()
                del joined
                with open(temporary, "rb+") as handle:
                    os.fsync(handle.fileno())
                atomic.replace(sidecar_path, lambda path: path.write_text(json.dumps(sidecar, indent=2) + "\n"))

            atomic.replace(array_path, join)  # the commit: readers trust the array once it exists
            shutil.rmtree(self._shard_paths(key, 0)[0].parent, ignore_errors=True)
        if skipped:
            log.warning(
                "dataset '%s' %s: skipped %d unreadable image(s), listed in %s",
                dataset.name, dataset.split, len(skipped), sidecar_path,
            )  # fmt: skip
        stored = self._read(key, len(dataset))
        if stored is None:
            raise RuntimeError(f"features just written to {array_path} cannot be read back")
        return stored

    def _write(
        self,
        clip: FrozenCLIP,
        dataset: data.MultiLabelDataset,
        view: View,
        encoding: Encoding,
        key: str,
        batch_size: int,
        num_workers: int,
        progress: bool,
    ) -> DenseFeatures:
        """Encode the shards no process has stored, then the entry, under the key's lock: one process
        encodes an entry at a time, the others wait and read it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        array_path, _, lock_path = self._paths(key)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process to encode %s (%s/%s)", array_path, dataset.name, dataset.split)
            lock.acquire()
        try:
            missing = self.missing_shards(key, len(dataset))
            label = "test transform" if view == "test" else f"train view {view[1]}"
            total = sum(map(len, missing.values()))
            images = self.entry_loader(clip, dataset, view, batch_size, num_workers) if missing else None
            with tqdm(total=total, unit="img", desc=f"{dataset.name}/{dataset.split} {label}", disable=None if progress else True) as bar:  # None: off when not a terminal
                for index in missing:
                    self.encode_shard(clip, dataset, view, index, encoding=encoding, images=images, on_batch=bar.update)
        finally:
            lock.release()
        return self.assemble(clip, dataset, view, encoding)
