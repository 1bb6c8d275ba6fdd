"""Partial-label masks: ratio, determinism (across processes too), nesting, unknowns, saving."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trainables.data as data
from trainables.config import DatasetConfig
from trainables.errors import UserInputError

RATIOS = [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(123)
    full = (rng.random((1500, 20)) < 0.3).astype(np.int8)
    full[rng.random(full.shape) < 0.05] = -1  # some labels unknown to begin with (VOC difficult)
    return full


@pytest.mark.parametrize("ratio", RATIOS)
def test_kept_fraction_matches_ratio(labels: np.ndarray, ratio: float) -> None:
    partial = data.partial_labels(labels, ratio, seed=1, key="coco/train")
    assert partial.dtype == np.int8 and partial.shape == labels.shape
    known = labels != -1
    kept = (partial != -1) & known
    # Independent Bernoulli(ratio) per known label: within 4 binomial standard deviations.
    n = known.sum()
    assert abs(kept.sum() / n - ratio) < 4 * np.sqrt(ratio * (1 - ratio) / n)
    assert data.kept_fraction(partial, labels) == pytest.approx(kept.sum() / n)
    # Per class too (each class masked independently, not a fixed subset of classes).
    per_class = kept.sum(0) / known.sum(0)
    assert np.all(np.abs(per_class - ratio) < 5 * np.sqrt(ratio * (1 - ratio) / known.sum(0)))
    # Kept labels keep their value; unknown stays unknown.
    np.testing.assert_array_equal(partial[kept], labels[kept])
    assert np.all(partial[~known] == -1)
    assert set(np.unique(partial)) <= {-1, 0, 1}


def test_nested_across_ratios(labels: np.ndarray) -> None:
    masks = [data.partial_labels(labels, r, seed=3, key="voc/train") != -1 for r in RATIOS]
    for smaller, larger in zip(masks, masks[1:]):
        assert np.all(larger[smaller])  # kept at the smaller ratio => kept at the larger
        assert larger.sum() > smaller.sum()
    np.testing.assert_array_equal(data.partial_labels(labels, 1.0, seed=3, key="voc/train"), labels)


def test_depends_only_on_key_seed_and_ratio(labels: np.ndarray) -> None:
    first = data.partial_labels(labels, 0.4, seed=7, key="k/train")
    np.testing.assert_array_equal(first, data.partial_labels(labels.copy(), 0.4, seed=7, key="k/train"))
    assert not np.array_equal(first, data.partial_labels(labels, 0.4, seed=8, key="k/train"))
    assert not np.array_equal(first, data.partial_labels(labels, 0.4, seed=7, key="other/train"))


def test_same_mask_in_another_process(labels: np.ndarray, tmp_path: Path) -> None:
    """A salted str hash would differ between processes: the mask must not."""
    np.save(tmp_path / "labels.npy", labels)
    script = (
        "import hashlib, numpy as np, trainables.data as d;"
        f"m = d.partial_labels(np.load({str(tmp_path / 'labels.npy')!r}), 0.3, 5, 'coco/train');"
        "print(hashlib.sha256(m.tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    here = hashlib.sha256(data.partial_labels(labels, 0.3, 5, "coco/train").tobytes()).hexdigest()
    assert output.strip() == here


def test_same_mask_for_every_setup_of_the_same_data(tmp_path: Path) -> None:
    """The mask of a dataset depends on its content, not on where it lives or who asks."""
    cfg = DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=16, synthetic_num_test=8, synthetic_image_size=32)
    one = data.build_dataset(cfg, "train", tmp_path / "a")
    two = data.build_dataset(cfg, "train", tmp_path / "b")
    assert data.dataset_key(one) == data.dataset_key(two)
    np.testing.assert_array_equal(data.dataset_partial_labels(one, 0.5, 1), data.dataset_partial_labels(two, 0.5, 1))
    test = data.build_dataset(cfg, "test", tmp_path / "a")
    assert data.dataset_key(test) != data.dataset_key(one)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(labels: np.ndarray, ratio: float) -> None:
    with pytest.raises(UserInputError, match=f"label ratio {ratio} is outside"):
        data.partial_labels(labels, ratio, seed=0, key="k")


def test_save_and_load(labels: np.ndarray, tmp_path: Path) -> None:
    partial = data.partial_labels(labels, 0.2, seed=2, key="k/train")
    path = tmp_path / "run" / "partial_labels.npz"
    data.save_partial_labels(path, partial, labels, ratio=0.2, seed=2, key="k/train")
    loaded = data.load_partial_labels(path)
    np.testing.assert_array_equal(loaded["partial"], partial)
    np.testing.assert_array_equal(loaded["labels"], labels)
    assert (loaded["ratio"], loaded["seed"], loaded["key"]) == (0.2, 2, "k/train")
    assert loaded["kept_fraction"] == pytest.approx(((partial != -1) & (labels != -1)).sum() / (labels != -1).sum())
    assert [p.name for p in path.parent.iterdir()] == ["partial_labels.npz"]
