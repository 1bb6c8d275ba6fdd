"""Image transforms as the DualCoOp reference uses them (REFERENCE.md section 1).

Train: Resize((S, S)) bilinear, CutoutPIL(0.5), RandAugment (the reference's policy,
`trainables.data.randaugment`, or torchvision's), ToTensor, CLIP normalisation.
Test: Resize((S, S)) bilinear, ToTensor, CLIP normalisation (no crop, no flip).
Every random draw comes from torch's generator, so seeding torch makes a view reproducible
(`trainables.data.ImageTensors` does that per (view, image)).
"""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image, ImageDraw
from torchvision import transforms as T

from trainables.data.randaugment import ReferenceRandAugment

Augmentation = Literal["reference", "torchvision"]
"""Which RandAugment the training views get (`features.augmentation`)."""

# open_clip.constants.OPENAI_DATASET_MEAN / _STD, written out so that importing the data package
# (e.g. for a spec's layout check) does not import open_clip.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CUTOUT_FACTOR = 0.5
"""The reference's `CutoutPIL(cutout_factor=0.5)`."""


class CutoutPIL:
    """The reference's CutoutPIL (DualCoOp `dataloaders/helper.py`, from ASL), applied every time.

    A rectangle of side int(factor * side + 0.5) centred at a uniform random pixel, clipped to the
    image and filled with a uniform random RGB colour. As in the reference, the corners are
    centre -/+ side // 2 and PIL draws them inclusively. Unlike the reference, it draws on a copy
    (the reference mutates its input) and draws from torch's generator instead of numpy/random.
    """

    def __init__(self, cutout_factor: float = CUTOUT_FACTOR) -> None:
        self.cutout_factor = cutout_factor

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        half_w = int(self.cutout_factor * width + 0.5) // 2
        half_h = int(self.cutout_factor * height + 0.5) // 2
        centre_y = int(torch.randint(height, ()).item())
        centre_x = int(torch.randint(width, ()).item())
        box = [
            min(max(centre_x - half_w, 0), width),
            min(max(centre_y - half_h, 0), height),
            min(max(centre_x + half_w, 0), width),
            min(max(centre_y + half_h, 0), height),
        ]
        fill = tuple(int(c) for c in torch.randint(256, (3,)).tolist())
        image = image.copy()
        ImageDraw.Draw(image).rectangle(box, fill=fill)
        return image

    def __repr__(self) -> str:
        return f"CutoutPIL(cutout_factor={self.cutout_factor})"


def _normalise() -> T.Normalize:
    return T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)


def train_transform(size: int, normalised: bool = True, augmentation: Augmentation = "reference") -> T.Compose:
    """PIL image -> normalised tensor [3, size, size] with the reference's augmentation (with
    `normalised=False`: uint8 pixels, for `normalise` on the device; a quarter of the bytes to copy).

    RandAugment: `reference`, PyPI `randaugment` 1.0.2's policy as the reference trains with it
    (two slots at p = 0.5 of 15 operations at levels 1-9; `trainables.data.randaugment`), or
    `torchvision`'s (always two of 14 operations, Identity among them, at magnitude 9 of 31).
    """
    return T.Compose(
        [
            T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
            CutoutPIL(CUTOUT_FACTOR),
            ReferenceRandAugment() if augmentation == "reference" else T.RandAugment(),
            *([T.ToTensor(), _normalise()] if normalised else [T.PILToTensor()]),
        ]
    )


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 3, S, S] on any device -> float32, as `ToTensor` then CLIP's `Normalize`
    compute them (the same operations in the same order: bit for bit on a CPU)."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return pixels.float().div(255).sub(mean).div(std)


def test_transform(size: int) -> T.Compose:
    """PIL image -> normalised tensor [3, size, size]: resize only, as the reference's test loader."""
    return T.Compose(
        [
            T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            _normalise(),
        ]
    )


# The name starts with "test": keep pytest from collecting it when a test module imports it.
test_transform.__test__ = False
