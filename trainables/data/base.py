"""The dataset every kind is loaded into: image paths, class names and a label matrix.

Labels are int8 in {1, 0, -1}: present, absent, unknown (ignored by the loss and by mAP).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables.errors import UserInputError

log = logging.getLogger(__name__)

# What PIL raises for a missing, truncated or undecodable file (UnidentifiedImageError and
# FileNotFoundError are OSErrors; some decoders raise ValueError or SyntaxError).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def describe(error: BaseException) -> str:
    """An exception's message on one line (UserInputError messages are printed as one line)."""
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True, eq=False)
class MultiLabelDataset:
    """One split of a multi-label dataset, with images read lazily from disk."""

    name: str
    kind: str
    split: str
    classnames: list[str]
    image_ids: list[str]
    image_paths: list[Path]
    labels: np.ndarray
    """int8 [N, K] in {1, 0, -1}."""
    skip_corrupt_images: bool = False
    """When True, consumers (feature cache, image loader) skip unreadable images and count them."""
    content_tag: str = ""
    """What else identifies the images' content (a generated set's parameters); in the fingerprint."""

    def __post_init__(self) -> None:
        n, k = len(self.image_ids), len(self.classnames)
        if self.labels.shape != (n, k) or self.labels.dtype != np.int8:
            raise ValueError(f"labels must be int8 [{n}, {k}], got {self.labels.dtype} {self.labels.shape}")
        if len(self.image_paths) != n:
            raise ValueError(f"{len(self.image_paths)} image paths for {n} image ids")
        # Checked once here, so that no training step has to (a check there waits for the device).
        invalid = ~np.isin(self.labels, (1, 0, -1))
        if invalid.any():
            found = sorted(set(self.labels[invalid].tolist()))
            raise UserInputError(
                f"dataset '{self.name}' ({self.split}): labels must be 1 (present), 0 (absent) or -1 (unknown), found {found}"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, index: int) -> Image.Image:
        """The image as RGB; UserInputError naming the path when it cannot be read."""
        path = self.image_paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except UNREADABLE_IMAGE_ERRORS as error:
            raise UserInputError(f"dataset '{self.name}': cannot read image {path}: {describe(error)}") from error

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of (kind, content tag, class names, image ids, labels).

        It changes when the image list or the labels change, not when an image file is rewritten in
        place under the same name (hashing every file's bytes would cost a pass over the dataset).
        """
        digest = hashlib.sha256()
        parts = (self.kind, self.content_tag, "\n".join(self.classnames), "\n".join(self.image_ids), str(self.labels.shape))
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


def view_seed(augmentation_seed: int, view: int, index: int) -> int:
    """The torch seed of augmented view `view` of image `index`: a pure function of the three."""
    return int(np.random.SeedSequence([augmentation_seed, view, index]).generate_state(1, dtype=np.uint64)[0])


class ImageTensors(torch.utils.data.Dataset):
    """Transformed images for a DataLoader: item i is (image [3,S,S], i, valid).

    `view=None` draws augmentations from torch's global generator. With a `view` number, image i's
    augmentation is seeded by (augmentation_seed, view, i), so view v of image i is the same tensor
    in every process and every epoch (cached views). An item may also be asked for as (view, i)
    (online training: view = the epoch, augmentation_seed = the trial's seed), whatever the
    DataLoader worker that decodes it.
    Unreadable images raise UserInputError, or, when the dataset skips them, come back as zeros
    with valid=False so the consumer can drop and count them.
    """

    def __init__(
        self,
        dataset: MultiLabelDataset,
        transform: Callable[[Image.Image], torch.Tensor],
        image_size: int,
        view: int | None = None,
        augmentation_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.image_size = image_size
        self.view = view
        self.augmentation_seed = augmentation_seed
        self.dtype = dtype
        """What `transform` returns: the dtype of an unreadable image's zeros."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        view, index = item if isinstance(item, tuple) else (self.view, item)
        try:
            image = self.dataset.load_image(index)
        except UserInputError as error:
            if not self.dataset.skip_corrupt_images:
                raise
            log.warning("skipping unreadable image: %s", error)
            return torch.zeros(3, self.image_size, self.image_size, dtype=self.dtype), index, False
        if view is None:
            return self.transform(image), index, True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.augmentation_seed, view, index))
            return self.transform(image), index, True


def batches_of(loader: torch.utils.data.DataLoader) -> Iterator:
    """The batches of `loader`. A UserInputError raised in one of its worker processes (an unreadable
    image) is raised here as itself, in one line: torch re-raises it with the worker's traceback
    folded into the message."""
    try:
        yield from loader
    except UserInputError as error:
        text = str(error).strip()
        if "Original Traceback" not in text:
            raise
        raise UserInputError(text.splitlines()[-1].split(f"{UserInputError.__name__}: ", 1)[-1]) from None


def check_layout(name: str, root: Path, entries: list[str], expected: str) -> None:
    """UserInputError naming `root` and its first missing entry (a trailing '/' means a folder)."""
    if not root.is_dir():
        raise UserInputError(f"dataset '{name}': root {root} does not exist (expected {expected})")
    for entry in entries:
        path = root / entry
        if not (path.is_dir() if entry.endswith("/") else path.is_file()):
            raise UserInputError(f"dataset '{name}': root {root} has no {entry} (expected {expected})")
