"""RandAugment as the DualCoOp reference trains with it: the policy of PyPI's `randaugment` 1.0.2
(whose `RandAugment` its training transform uses), written here, since that package no longer
imports on NumPy >= 1.24 (`np.int`).

Two slots; each picks one of 15 operations and a level from 1 to 9 (of AutoAugment's 10 magnitude
bins, level 0 never drawn), both uniformly, and applies it with probability 0.5, so about one
operation an image. There is no identity among them; rotations turn one way only (counter-clockwise,
0-30 degrees); the operations that move pixels fill with grey (128), Cutout with (125, 122, 113).
An operation with a direction (shear, translate, the enhancements) draws its sign, Cutout its
centre. Every draw comes from torch's generator, so seeding torch makes an image's augmentation
reproducible (`trainables.data.ImageTensors` seeds it per image).

torchvision's RandAugment, the other choice (`features.augmentation: torchvision`), always applies
two of 14 operations (Identity among them) at the fixed magnitude 9 of 31, with black fill: a
different, stronger augmentation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

OPERATIONS = (
    "invert", "cutout", "sharpness", "autocontrast", "posterize", "shear_x", "translate_x", "translate_y",
    "shear_y", "rotate", "equalize", "contrast", "color", "solarize", "brightness",
)  # fmt: skip
"""The package's 15 operations, in its order."""

LEVELS = range(1, 10)
SLOT_PROBABILITY = 0.5
GREY = (128, 128, 128)
CUTOUT_FILL = (125, 122, 113)

_BINS = 10
_RANGES = {  # AutoAugment's magnitude ranges, as the package spaces them (np.linspace over 10 bins)
    "shear_x": (0.0, 0.3), "shear_y": (0.0, 0.3), "translate_x": (0.0, 150 / 331), "translate_y": (0.0, 150 / 331),
    "rotate": (0.0, 30.0), "color": (0.0, 0.9), "contrast": (0.0, 0.9), "sharpness": (0.0, 0.9),
    "brightness": (0.0, 0.9), "solarize": (256.0, 0.0),
}  # fmt: skip
_WHOLE_RANGES = {"posterize": (8, 4), "cutout": (0, 20)}  # rounded to whole numbers: bits, side in pixels
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "sharpness", "brightness"})


def magnitude(operation: str, level: int) -> float | int:
    """The operation's magnitude at `level` (0-9): a shear factor, a fraction of the image, degrees,
    an enhancement step, a solarize threshold, posterize bits or a Cutout side."""
    if operation in _WHOLE_RANGES:
        return int(np.round(np.linspace(*_WHOLE_RANGES[operation], _BINS))[level])
    if operation in _RANGES:
        return float(np.linspace(*_RANGES[operation], _BINS)[level])
    return 0


def apply(image: Image.Image, operation: str, level: int, sign: int = 1, centre: tuple[int, int] = (0, 0)) -> Image.Image:
    """`operation` at `level` on an RGB image, given its draws: `sign` (+1 or -1) for the operations
    with a direction, `centre` (x, y) for Cutout."""
    m = magnitude(operation, level)
    width, height = image.size
    if operation in ("shear_x", "shear_y", "translate_x", "translate_y"):
        matrix = {
            "shear_x": (1, m * sign, 0, 0, 1, 0), "shear_y": (1, 0, 0, m * sign, 1, 0),
            "translate_x": (1, 0, m * width * sign, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, m * height * sign),
        }[operation]  # fmt: skip
        resample = Image.Resampling.BICUBIC if operation.startswith("shear") else Image.Resampling.NEAREST
        return image.transform(image.size, Image.Transform.AFFINE, matrix, resample, fillcolor=GREY)
    if operation == "rotate":
        return image.rotate(m, resample=Image.Resampling.NEAREST, fillcolor=GREY)
    if operation in ("color", "contrast", "sharpness", "brightness"):
        enhancer = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                    "sharpness": ImageEnhance.Sharpness, "brightness": ImageEnhance.Brightness}[operation]  # fmt: skip
        return enhancer(image).enhance(1 + m * sign)
    if operation == "posterize":
        return ImageOps.posterize(image, m)
    if operation == "solarize":
        return ImageOps.solarize(image, m)
    if operation == "cutout":
        return _cutout(image, m, centre)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[operation](image)


def _cutout(image: Image.Image, side: int, centre: tuple[int, int]) -> Image.Image:
    """A square of `side` (half on each side of `centre`, clipped to the image) in CUTOUT_FILL."""
    x, y = centre
    half = side // 2
    pixels = np.array(image)
    pixels[max(0, y - half) : min(image.height, y + half), max(0, x - half) : min(image.width, x + half)] = CUTOUT_FILL
    return Image.fromarray(pixels, mode=image.mode)


class Choice(NamedTuple):
    operation: str
    level: int


class ReferenceRandAugment:
    """The reference's RandAugment (module docstring): PIL image in, PIL image out."""

    def choose(self) -> list[Choice]:
        """The operations applied to one image, in order: each slot's (operation, level), where it fires."""
        chosen = []
        for _ in range(2):
            operation = OPERATIONS[int(torch.randint(len(OPERATIONS), ()))]
            level = int(torch.randint(LEVELS.start, LEVELS.stop, ()))
            if float(torch.rand(())) < SLOT_PROBABILITY:
                chosen.append(Choice(operation, level))
        return chosen

    def __call__(self, image: Image.Image) -> Image.Image:
        for operation, level in self.choose():
            sign = int(torch.randint(2, ())) * 2 - 1 if operation in SIGNED else 1
            centre = (int(torch.randint(image.width, ())), int(torch.randint(image.height, ()))) if operation == "cutout" else (0, 0)
            image = apply(image, operation, level, sign, centre)
        return image

    def __repr__(self) -> str:
        return "ReferenceRandAugment(randaugment==1.0.2: 2 slots, p=0.5, 15 operations, levels 1-9 of 10)"
