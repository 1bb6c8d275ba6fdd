"""Train and test transforms: the reference's pipeline, CLIP normalisation, reproducible views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import trainables.data as data
from trainables.config import DatasetConfig
from trainables.data.transforms import CutoutPIL

# CLIP's preprocessing constants, as published with the OpenAI CLIP models.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def random_image(width: int = 50, height: int = 37, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_constants_are_open_clips() -> None:
    np.testing.assert_allclose(MEAN, open_clip.OPENAI_DATASET_MEAN)
    np.testing.assert_allclose(STD, open_clip.OPENAI_DATASET_STD)


def test_test_transform_is_resize_then_normalise() -> None:
    image = random_image()
    expected = np.asarray(image.resize((40, 40), Image.BILINEAR), dtype=np.float64) / 255.0
    expected = ((expected - MEAN) / STD).transpose(2, 0, 1)
    actual = data.test_transform(40)(image)
    assert actual.shape == (3, 40, 40) and actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5)


def test_train_transform_pipeline_order() -> None:
    steps = [type(step).__name__ for step in data.train_transform(64).transforms]
    assert steps == ["Resize", "CutoutPIL", "ReferenceRandAugment", "ToTensor", "Normalize"]
    torchvision = data.train_transform(64, augmentation="torchvision")
    assert [type(step).__name__ for step in torchvision.transforms][2] == "RandAugment"
    assert "num_ops=2" in repr(torchvision) and "magnitude=9" in repr(torchvision)
    for augmentation in ("reference", "torchvision"):
        assert data.train_transform(64, augmentation=augmentation)(random_image()).shape == (3, 64, 64)


def test_cutout_draws_one_filled_square_of_half_the_side() -> None:
    size = 64
    side = 2 * (int(0.5 * size + 0.5) // 2) + 1  # corners at centre -/+ 16, drawn inclusively
    image = Image.new("RGB", (size, size), (0, 0, 0))
    full_squares = 0
    torch.manual_seed(0)
    for _ in range(200):
        out = np.asarray(CutoutPIL(0.5)(image))
        changed = out.any(axis=2)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert changed.sum() == len(rows) * len(cols)  # a filled axis-aligned rectangle
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        assert len(np.unique(out[changed], axis=0)) == 1  # of one colour
        assert len(rows) <= side and len(cols) <= side
        inside = rows[0] > 0 and cols[0] > 0 and rows[-1] < size - 1 and cols[-1] < size - 1
        if inside:
            assert len(rows) == len(cols) == side
            full_squares += 1
    assert full_squares > 20
    assert not np.asarray(image).any()  # the input image is left untouched


def test_views_are_reproducible(tmp_path: Path) -> None:
    cfg = DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=8, synthetic_num_test=8, synthetic_image_size=32)
    dataset = data.build_dataset(cfg, "train", tmp_path)
    transform = data.train_transform(48)
    view0 = data.ImageTensors(dataset, transform, 48, view=0)
    again = data.ImageTensors(dataset, data.train_transform(48), 48, view=0)
    view1 = data.ImageTensors(dataset, transform, 48, view=1)
    other_seed = data.ImageTensors(dataset, transform, 48, view=0, augmentation_seed=1)
    torch.manual_seed(1)
    first = [view0[i][0] for i in range(4)]
    torch.manual_seed(2)  # the global generator does not matter for a numbered view
    for i in reversed(range(4)):
        assert torch.equal(again[i][0], first[i])
    assert not any(torch.equal(view1[i][0], first[i]) for i in range(4))
    assert not any(torch.equal(other_seed[i][0], first[i]) for i in range(4))
    online = data.ImageTensors(dataset, transform, 48)
    assert not torch.equal(online[0][0], online[0][0])  # online: a fresh draw each time


@pytest.mark.parametrize("size", [32, 96])
def test_sizes(size: int) -> None:
    image = random_image()
    assert data.train_transform(size)(image).shape == data.test_transform(size)(image).shape == (3, size, size)
