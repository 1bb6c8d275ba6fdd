"""The decoded store: every image of a dataset split decoded and resized to the trials' input size
once, as uint8, for the `online` feature mode.

Its training transform starts with a resize that draws nothing, so decoding a JPEG and resizing it
again in every epoch of every trial computes the same pixels each time. The store keeps them:

    <cache_dir>/decoded/<key>.npy    uint8 [N, S, S, 3], opened read-only with mmap_mode="r"
    <cache_dir>/decoded/<key>.json   the key's inputs and the images skipped as unreadable
    <cache_dir>/decoded/<key>.lock   held while one process builds it; the others wait, then read

An image read from the store is the image the train transform's resize makes (bit for bit), and
resizing it again to the same size is a copy, so trials compute the same with and without it. A
build goes in chunks into `<key>.partial.npy`, recording after each flushed chunk how many rows are
done, so a build that is killed resumes where it stopped; the finished file is renamed into place
after its sidecar (`trainables.atomic`), so no reader ever opens a half-written store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from tqdm.auto import tqdm

from trainables import atomic, data
from trainables.errors import UserInputError
from trainables.features.encoding import RowLoader

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_IMAGES = 512
"""Images decoded between two records of a build's progress."""


class ResizedPixels:
    """PIL image -> uint8 [3, S, S]: the train transform's first step (`data.train_transform`)."""

    def __init__(self, size: int) -> None:
        self.resize = T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return T.functional.pil_to_tensor(self.resize(image))


class DecodedImages:
    """A dataset split read from the store: what `data.ImageTensors` asks of a dataset."""

    def __init__(self, dataset: data.MultiLabelDataset, pixels: np.ndarray, valid: np.ndarray) -> None:
        self.dataset, self.pixels, self.valid = dataset, pixels, valid
        self.name, self.skip_corrupt_images = dataset.name, dataset.skip_corrupt_images

    def __len__(self) -> int:
        return len(self.dataset)

    def load_image(self, index: int) -> Image.Image:
        if not self.valid[index]:
            return self.dataset.load_image(index)  # unreadable: raises as reading the file does
        return Image.fromarray(np.asarray(self.pixels[index]), "RGB")


class DecodedStore:
    """Decoded, resized images of (dataset split, size), built once and shared by every online trial."""

    def __init__(self, cache_dir: Path) -> None:
        self.directory = Path(cache_dir) / "decoded"

    @staticmethod
    def nbytes(num_images: int, size: int) -> int:
        return num_images * size * size * 3

    def key_inputs(self, dataset: data.MultiLabelDataset, size: int) -> dict:
        return {"format": FORMAT_VERSION, "dataset": dataset.fingerprint, "dataset_name": dataset.name,
                "split": dataset.split, "size": size, "resize": repr(ResizedPixels(size).resize)}  # fmt: skip

    def key(self, dataset: data.MultiLabelDataset, size: int) -> str:
        return hashlib.sha256(json.dumps(self.key_inputs(dataset, size), sort_keys=True).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path, Path, Path]:
        """(the store, its sidecar, a build's partial array, its progress record)."""
        d = self.directory
        return d / f"{key}.npy", d / f"{key}.json", d / f"{key}.partial.npy", d / f"{key}.partial.json"

    def read(self, dataset: data.MultiLabelDataset, size: int) -> DecodedImages | None:
        """The stored images, or None when they are missing or cannot be trusted (a truncated file)."""
        array_path, sidecar_path, _, _ = self._paths(self.key(dataset, size))
        try:
            sidecar = json.loads(sidecar_path.read_text())
            pixels = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError, EOFError):
            return None
        if pixels.dtype != np.uint8 or pixels.shape != (len(dataset), size, size, 3) or sidecar.get("inputs") != self.key_inputs(dataset, size):
            return None
        valid = np.ones(len(dataset), dtype=bool)
        valid[sidecar["skipped"]] = False
        return DecodedImages(dataset, pixels, valid)

    def images(self, dataset: data.MultiLabelDataset, size: int, num_workers: int = 0, progress: bool = False) -> DecodedImages:
        """The stored images of (dataset, size), built first if no process has yet."""
        stored = self.read(dataset, size)
        if stored is not None:
            return stored
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.key(dataset, size)
        with atomic.lock(self._paths(key)[0]):
            stored = self.read(dataset, size)
            if stored is None:
                self._build(dataset, size, key, num_workers, progress)
                stored = self.read(dataset, size)
        if stored is None:
            raise UserInputError(f"the decoded store {self._paths(key)[0]} was just built but cannot be read back")
        return stored

    def _build(self, dataset: data.MultiLabelDataset, size: int, key: str, num_workers: int, progress: bool) -> None:
        """Decode every image not yet in `<key>.partial.npy` (resuming a killed build), then publish it."""
        array_path, sidecar_path, partial_path, progress_path = self._paths(key)
        shape = (len(dataset), size, size, 3)
        done, skipped = self._progress(progress_path, partial_path, shape)
        needed, free = 0 if done else self.nbytes(len(dataset), size), shutil.disk_usage(self.directory).free
        if needed > free:
            raise UserInputError(
                f"the decoded store of dataset '{dataset.name}' ({dataset.split}, {size} px) needs {needed / 2**30:.1f} GiB "
                f"under {self.directory}, where {free / 2**30:.1f} GiB are free: free room, or set features.decoded_store: false"
            )
        pixels = np.lib.format.open_memmap(partial_path, mode="r+" if done else "w+", dtype=np.uint8, shape=shape)
        images = data.ImageTensors(dataset, ResizedPixels(size), size, dtype=torch.uint8)
        loader = RowLoader(images, 64, num_workers, torch.device("cpu"))
        with tqdm(total=len(dataset), initial=done, unit="img", desc=f"decoded {dataset.name}/{dataset.split} at {size} px",
                  disable=None if progress else True) as bar:  # fmt: skip
            for start in range(done, len(dataset), CHUNK_IMAGES):
                chunk = range(start, min(start + CHUNK_IMAGES, len(dataset)))
                for batch, indices, valid in loader.batches(chunk):
                    rows = indices.numpy()
                    pixels[rows] = batch.permute(0, 2, 3, 1).numpy()  # stored as images are: [S, S, 3]
                    skipped += rows[~valid.numpy()].tolist()
                    bar.update(len(rows))
                pixels.flush()
                record = json.dumps({"done": chunk.stop, "skipped": skipped})
                atomic.replace(progress_path, lambda path: path.write_text(record))
        del pixels
        with open(partial_path, "rb+") as handle:
            os.fsync(handle.fileno())
        sidecar = json.dumps({"key": key, "inputs": self.key_inputs(dataset, size), "skipped": skipped}, indent=1)
        atomic.replace(sidecar_path, lambda path: path.write_text(sidecar + "\n"))
        os.replace(partial_path, array_path)  # the commit: readers trust the array once it is there
        progress_path.unlink(missing_ok=True)

    @staticmethod
    def _progress(progress_path: Path, partial_path: Path, shape: tuple) -> tuple[int, list[int]]:
        """(rows done, skipped rows) of a killed build to resume; (0, []) when there is none to trust."""
        try:
            record = json.loads(progress_path.read_text())
            partial = np.load(partial_path, mmap_mode="r")
            if partial.shape == shape and partial.dtype == np.uint8 and 0 < record["done"] <= shape[0]:
                return int(record["done"]), list(record["skipped"])
        except (OSError, ValueError, EOFError, KeyError, TypeError):
            pass
        return 0, []
