"""The decoded store of the online mode: the pixels the train transform's resize makes, bit for bit;
online batches the same with it and without it; a truncated store rebuilt, a killed build resumed,
an unreadable image one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import data
from trainables.config import DatasetConfig, FeatureConfig
from trainables.errors import UserInputError
from trainables.features import decoded
from trainables.features.decoded import DecodedStore
from trainables.mlr.config import TrialConfig


def _jpegs(root: Path, count: int = 10, broken: int | None = None) -> data.MultiLabelDataset:
    """`count` generated 64 x 48 JPEGs in a manifest dataset (image `broken` not an image)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = ["image,labels"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg", quality=90)
        rows.append(f"images/{i}.jpg,{'cat' if i % 2 else 'dog'}")
    if broken is not None:
        (root / "images" / f"{broken}.jpg").write_bytes(b"not a JPEG")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    config = DatasetConfig(name="mine", kind="manifest", train_manifest=root / "list.csv", test_manifest=root / "list.csv")
    return data.build_dataset(config, "train", root)


def test_the_store_holds_what_decoding_and_resizing_again_gives(tmp_path):
    dataset = _jpegs(tmp_path)
    stored = DecodedStore(tmp_path / "cache").images(dataset, 40, num_workers=2)
    resize = data.train_transform(40).transforms[0]
    for i in range(len(dataset)):
        np.testing.assert_array_equal(np.asarray(stored.load_image(i)), np.asarray(resize(dataset.load_image(i))))
        # Resizing a stored image again to the same size is a copy: the transform computes the same.
        np.testing.assert_array_equal(np.asarray(resize(stored.load_image(i))), np.asarray(stored.load_image(i)))


def test_online_batches_are_the_same_with_the_store_and_without(tmp_path):
    from trainables.mlr.train import MLRTrial

    def first_epoch(store: bool) -> list[torch.Tensor]:
        config = TrialConfig(
            setup="baseline", dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=24, synthetic_num_test=8),
            backbone={"model": "RN-tiny", "image_size": 64}, features=FeatureConfig(mode="online", decoded_store=store),
            training={"batch_size": 8, "num_workers": 0}, label_ratio=0.5, seed=3, cache_dir=tmp_path / "cache",
            data_dir=tmp_path / "data", device="cpu",
        )  # fmt: skip
        return [feats.clone() for feats, _ in MLRTrial(config).train_batches(0)]

    without, with_store = first_epoch(False), first_epoch(True)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 1
    for a, b in zip(without, with_store, strict=True):
        assert torch.equal(a, b)


def test_a_truncated_store_is_rebuilt_never_read_as_zeros(tmp_path):
    dataset = _jpegs(tmp_path)
    store = DecodedStore(tmp_path / "cache")
    first = np.asarray(store.images(dataset, 32).pixels).copy()
    (path,) = (tmp_path / "cache" / "decoded").glob("*[!l].npy")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert store.read(dataset, 32) is None
    np.testing.assert_array_equal(np.asarray(store.images(dataset, 32).pixels), first)


def test_a_killed_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    dataset = _jpegs(tmp_path, count=12)
    monkeypatch.setattr(decoded, "CHUNK_IMAGES", 4)
    reads, kill_at = [], 9
    real_load = data.MultiLabelDataset.load_image

    def load(self, index):
        reads.append(index)
        if index == kill_at:
            raise KeyboardInterrupt  # the build is killed in its third chunk
        return real_load(self, index)

    monkeypatch.setattr(data.MultiLabelDataset, "load_image", load)
    store = DecodedStore(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        store.images(dataset, 32)
    assert store.read(dataset, 32) is None  # nothing half-built is read
    (record,) = (tmp_path / "cache" / "decoded").glob("*.partial.json")
    assert json.loads(record.read_text())["done"] == 8
    reads.clear()
    kill_at = None
    resumed = store.images(dataset, 32)
    assert reads == [8, 9, 10, 11]  # only the chunk it was killed in, and what came after
    fresh = DecodedStore(tmp_path / "fresh").images(dataset, 32)
    np.testing.assert_array_equal(np.asarray(resumed.pixels), np.asarray(fresh.pixels))
    assert not list((tmp_path / "cache" / "decoded").glob("*.partial*"))


def test_an_unreadable_image_is_one_line(tmp_path):
    dataset = _jpegs(tmp_path, broken=3)
    with pytest.raises(UserInputError, match=r"^dataset 'mine': cannot read image .*3\.jpg"):
        DecodedStore(tmp_path / "cache").images(dataset, 32, num_workers=2)


def test_a_store_the_disk_cannot_hold_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    from collections import namedtuple

    dataset = _jpegs(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(decoded.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserInputError, match=r"needs 0\.0 GiB under .*, where 0\.0 GiB are free: free room, or set features\.decoded_store: false$"):
        DecodedStore(tmp_path / "cache").images(dataset, 32)
    assert not list((tmp_path / "cache" / "decoded").glob("*.npy"))
