"""A generated multi-label image set ("shapes"): the embedded default for the demo and the tests.

Each image shows 1-4 objects of distinct classes (no more than there are classes), one per quadrant
of a 2x2 grid (so none hides another), with a random size, position inside its quadrant and
rotation, on a noisy low-saturation background. A class is a shape with a real-word name
("circle", "star", ...) AND a hue family (and, for classes 9-16, a striped texture), because a
random-weight backbone sees colour and local texture far better than outline: that is what makes
the set learnable by a tiny untrained CLIP.

Generation is deterministic (image i of a split depends only on (split, i, number of classes,
image size)), written into a temporary folder and renamed into place under a file lock, so
concurrent trials generate it once, and reused when present. It is stored as two manifests
(`train.csv`, `test.csv`) beside `classes.txt` and the PNG images.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from trainables import atomic
from trainables.config import DatasetConfig
from trainables.data.base import MultiLabelDataset
from trainables.data.manifest import from_manifest
from trainables.errors import UserInputError

GENERATOR_VERSION = 1
"""Bump when the rendering changes, so cached sets (and features keyed on them) are not reused."""
GENERATOR_SEED = 20240917
SPLIT_STREAMS = {"train": 0, "test": 1}
MAX_OBJECTS = 4


def _regular(sides: int, start: float = -math.pi / 2) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.4) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart(samples: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, samples, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 17.0


def _ellipse(rx: float, ry: float, cx: float = 0.0, samples: int = 48) -> np.ndarray:
    t = 2 * math.pi * np.arange(samples) / samples
    return np.stack([cx + rx * np.cos(t), ry * np.sin(t)], axis=1)


@dataclass(frozen=True)
class ShapeClass:
    """A class: its name, outline in unit coordinates (filled, minus holes), hue and texture."""

    name: str
    outline: np.ndarray
    hue: float
    """Centre of the hue family, in degrees."""
    striped: bool
    holes: tuple[np.ndarray, ...] = ()


_ARM = 0.35
# The first eight hues are 45 degrees apart; the next eight sit between them and are striped.
SHAPE_CLASSES = [
    ShapeClass("circle", _ellipse(1.0, 1.0), 0.0, False),
    ShapeClass("square", _regular(4, math.pi / 4), 45.0, False),
    ShapeClass("triangle", _regular(3), 90.0, False),
    ShapeClass("star", _star(), 135.0, False),
    ShapeClass("cross", np.array([(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)]), 180.0, False),
    ShapeClass("ring", _ellipse(1.0, 1.0), 225.0, False, (_ellipse(0.55, 0.55),)),
    ShapeClass("diamond", np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]), 270.0, False),
    ShapeClass("hexagon", _regular(6), 315.0, False),
    ShapeClass("heart", _heart(), 22.5, True),
    ShapeClass("crescent", _ellipse(1.0, 1.0), 67.5, True, (_ellipse(0.85, 0.85, cx=0.45),)),
    ShapeClass("arrow", np.array([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)]), 112.5, True),
    ShapeClass("pentagon", _regular(5), 157.5, True),
    ShapeClass("octagon", _regular(8, math.pi / 8), 202.5, True),
    ShapeClass("ellipse", _ellipse(1.0, 0.55), 247.5, True),
    ShapeClass("trapezoid", np.array([(-1, 0.6), (1, 0.6), (0.5, -0.6), (-0.5, -0.6)]), 292.5, True),
    ShapeClass("parallelogram", np.array([(-1, 0.5), (0.4, 0.5), (1, -0.5), (-0.4, -0.5)]), 337.5, True),
]  # fmt: skip


def classnames(num_classes: int) -> list[str]:
    """The first `num_classes` class names, in class order."""
    return [shape.name for shape in SHAPE_CLASSES[:num_classes]]


def _parameters(cfg: DatasetConfig) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train": cfg.synthetic_num_train,
        "num_test": cfg.synthetic_num_test,
        "num_classes": cfg.synthetic_num_classes,
        "image_size": cfg.synthetic_image_size,
    }


def dataset_dir(cfg: DatasetConfig, data_dir: Path | None) -> Path:
    """`<root or data_dir>/synthetic-<hash of the generation parameters>`."""
    parent = cfg.root if cfg.root is not None else data_dir
    if parent is None:
        raise UserInputError(f"dataset '{cfg.name}': a synthetic dataset needs a root or a data directory to generate into")
    digest = hashlib.sha256(json.dumps(_parameters(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(parent) / f"synthetic-{digest}"


def check(cfg: DatasetConfig, data_dir: Path | None) -> None:
    """The folder the set is generated into is a folder (or can be created)."""
    parent = dataset_dir(cfg, data_dir).parent
    if parent.exists() and not parent.is_dir():
        raise UserInputError(f"dataset '{cfg.name}': {parent} is not a folder (synthetic data is generated under it)")


def _place(points: np.ndarray, centre: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]]:
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return [tuple(p) for p in (points @ rotation.T) * radius + np.asarray(centre)]


def _object_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    jittered = ((hue + rng.uniform(-8.0, 8.0)) % 360.0) / 360.0
    return 255.0 * np.array(colorsys.hsv_to_rgb(jittered, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)))


def render_image(rng: np.random.Generator, num_classes: int, size: int) -> tuple[np.ndarray, list[int]]:
    """One image (uint8 [size, size, 3]) and the sorted classes it shows."""
    canvas = render_background(rng, size)
    # Capped by the number of classes (objects are of distinct classes). The draw itself stays the
    # same for every class count, so that sets with 4 or more classes keep their images.
    count = min(int(rng.integers(1, MAX_OBJECTS + 1)), num_classes)
    classes = rng.choice(num_classes, size=count, replace=False)
    quadrants = rng.permutation(4)[:count]
    for class_index, quadrant in zip(classes, quadrants, strict=True):
        canvas = draw_object(rng, canvas, int(class_index), int(quadrant))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), sorted(int(c) for c in classes)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A noisy, low-saturation background, float [size, size, 3] in 0..255 (before rounding)."""
    background = 255.0 * np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.7)))
    return background + rng.normal(0.0, 12.0, (size, size, 3))


def draw_object(rng: np.random.Generator, canvas: np.ndarray, class_index: int, quadrant: int) -> np.ndarray:
    """`canvas` with one object of class `class_index` drawn in `quadrant` (0-3) of the 2x2 grid."""
    size = canvas.shape[0]
    ys, xs = np.mgrid[0:size, 0:size]
    half = size / 2
    shape = SHAPE_CLASSES[class_index]
    side = rng.uniform(0.28, 0.45) * size
    corner = np.array([quadrant % 2, quadrant // 2]) * half
    centre = tuple(corner + side / 2 + rng.uniform(0.0, half - side, size=2))
    angle = rng.uniform(0.0, 2 * math.pi)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(_place(shape.outline, centre, side / 2, angle), fill=255)
    for hole in shape.holes:
        draw.polygon(_place(hole, centre, side / 2, angle), fill=0)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    colour = np.broadcast_to(_object_colour(rng, shape.hue), (size, size, 3))
    if shape.striped:
        direction = rng.uniform(0.0, math.pi)
        band = np.floor((xs * math.cos(direction) + ys * math.sin(direction)) / max(side / 6, 2.0)) % 2
        colour = colour * np.where(band == 0, 1.0, 0.45)[..., None]
    return canvas * (1 - alpha) + colour * alpha


def _generate(target: Path, parameters: dict) -> None:
    names = classnames(parameters["num_classes"])
    target.mkdir()
    (target / "classes.txt").write_text("\n".join(names) + "\n")
    (target / "params.json").write_text(json.dumps(parameters, indent=2, sort_keys=True) + "\n")
    for split, count in (("train", parameters["num_train"]), ("test", parameters["num_test"])):
        (target / "images" / split).mkdir(parents=True)
        rows = []
        for index in range(count):
            rng = np.random.default_rng([GENERATOR_SEED, SPLIT_STREAMS[split], index])
            pixels, present = render_image(rng, parameters["num_classes"], parameters["image_size"])
            relative = f"images/{split}/{index:05d}.png"
            Image.fromarray(pixels).save(target / relative)
            rows.append({"image": relative, "labels": ";".join(names[c] for c in present)})
        pd.DataFrame(rows, columns=["image", "labels"]).to_csv(target / f"{split}.csv", index=False)


def ensure_generated(cfg: DatasetConfig, data_dir: Path | None) -> Path:
    """The generated set's folder, generating it first if it is not there yet."""
    parameters = _parameters(cfg)
    return atomic.build_once(dataset_dir(cfg, data_dir), lambda target: _generate(target, parameters))


def load(cfg: DatasetConfig, split: str, data_dir: Path | None) -> MultiLabelDataset:
    """One split of the generated set (generated on first use)."""
    folder = ensure_generated(cfg, data_dir)
    names = (folder / "classes.txt").read_text().splitlines()
    # Image ids and labels do not show the renderer version or the image size: the tag does.
    tag = f"shapes-v{GENERATOR_VERSION}@{cfg.synthetic_image_size}px"
    return from_manifest(cfg.name, "synthetic", split, folder / f"{split}.csv", names, cfg.skip_corrupt_images, tag)
