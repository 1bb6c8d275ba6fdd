"""The frozen-feature cache: equals fresh encoding, read not recomputed, atomic, shared safely."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import trainables.data as data
from trainables.config import BackboneConfig, DatasetConfig, FeatureConfig
from trainables.errors import UserInputError
from trainables.features.cache import FeatureCache
from trainables.features.fill import fill

SHAPES = DatasetConfig(
    name="shapes", kind="synthetic", synthetic_num_train=10, synthetic_num_test=8, synthetic_num_classes=4, synthetic_image_size=48
)


@pytest.fixture
def train_set(tmp_path: Path) -> data.MultiLabelDataset:
    return data.build_dataset(SHAPES, "train", tmp_path / "data")


class CountingEncoder:
    """Wraps a backbone's encode_dense and counts the images it encodes."""

    def __init__(self, clip, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = clip.encode_dense

        def encode_dense(images: torch.Tensor) -> torch.Tensor:
            self.images += len(images)
            return original(images)

        monkeypatch.setattr(clip, "encode_dense", encode_dense)


def fresh_features(clip, dataset: data.MultiLabelDataset) -> np.ndarray:
    """encode_dense of the resize-only images, written out without the cache."""
    transform = data.test_transform(clip.image_size)
    images = torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))])
    with torch.no_grad():
        return clip.encode_dense(images).numpy()


def test_cached_equals_fresh_and_second_trial_reads(tmp_path: Path, train_set, tiny_rn, monkeypatch) -> None:
    counter = CountingEncoder(tiny_rn, monkeypatch)
    first = FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test", batch_size=4)
    assert counter.images == len(train_set)
    expected = fresh_features(tiny_rn, train_set)
    assert first.features.dtype == np.float16 and first.features.shape == expected.shape == (10, 17, 64)
    np.testing.assert_allclose(np.asarray(first.features, dtype=np.float32), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    assert first.valid.all()

    counter.images = 0
    second = FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test")  # another trial
    assert counter.images == 0
    assert isinstance(second.features, np.memmap) and not second.features.flags.writeable
    np.testing.assert_array_equal(second.features, first.features)
    files = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir())
    key = FeatureCache(tmp_path / "cache").key(tiny_rn, train_set, "test")
    assert files == [f"{key}.json", f"{key}.lock", f"{key}.npy"]
    sidecar = json.loads((tmp_path / "cache" / "features" / f"{key}.json").read_text())
    assert sidecar["shape"] == [10, 17, 64] and sidecar["inputs"]["backbone"] == tiny_rn.identity


def test_views_are_distinct_reproducible_entries(tmp_path: Path, train_set, tiny_rn) -> None:
    cache = FeatureCache(tmp_path / "cache")
    view0 = cache.dense_features(tiny_rn, train_set, ("train", 0))
    view1 = cache.dense_features(tiny_rn, train_set, ("train", 1))
    plain = cache.dense_features(tiny_rn, train_set, "test")
    assert not np.array_equal(view0.features, view1.features)
    assert not np.array_equal(view0.features, plain.features)
    elsewhere = FeatureCache(tmp_path / "other").dense_features(tiny_rn, train_set, ("train", 0))
    np.testing.assert_array_equal(elsewhere.features, view0.features)
    # View 0 is encode_dense of the augmented images that ImageTensors yields for view 0.
    images = data.ImageTensors(train_set, data.train_transform(tiny_rn.image_size), tiny_rn.image_size, view=0)
    with torch.no_grad():
        expected = tiny_rn.encode_dense(torch.stack([images[i][0] for i in range(3)])).numpy()
    np.testing.assert_allclose(np.asarray(view0.features[:3], dtype=np.float32), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
    with pytest.raises(ValueError, match="a view is"):
        cache.dense_features(tiny_rn, train_set, ("val", 0))


def test_keys_change_with_backbone_and_data(tmp_path: Path, train_set, tiny_rn, tiny_vit) -> None:
    cache = FeatureCache(tmp_path / "cache")
    test_set = data.build_dataset(SHAPES, "test", tmp_path / "data")
    keys = {
        cache.key(tiny_rn, train_set, "test"),
        cache.key(tiny_vit, train_set, "test"),
        cache.key(tiny_rn, test_set, "test"),
        cache.key(tiny_rn, train_set, ("train", 0)),
        FeatureCache(tmp_path / "cache", augmentation_seed=1).key(tiny_rn, train_set, ("train", 0)),
    }
    assert len(keys) == 5
    assert FeatureCache(tmp_path / "elsewhere").key(tiny_rn, train_set, "test") == cache.key(tiny_rn, train_set, "test")


def test_killed_writer_is_not_trusted(tmp_path: Path, train_set, tiny_rn, monkeypatch) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key(tiny_rn, train_set, "test")
    folder = tmp_path / "cache" / "features"
    folder.mkdir(parents=True)
    # A writer killed before its rename: a temporary array and sidecar, no final array.
    np.lib.format.open_memmap(folder / f"{key}.npy.tmp-424242", mode="w+", dtype=np.float16, shape=(10, 17, 64))
    (folder / f"{key}.json.tmp-424242").write_text("{")
    # And a final array cut short (a copy interrupted by hand, a full disk): header but no data.
    truncated = folder / f"{key}.npy"
    np.save(truncated, np.ones((10, 17, 64), dtype=np.float16))
    truncated.write_bytes(truncated.read_bytes()[:300])
    (folder / f"{key}.json").write_text(json.dumps({"key": key, "shape": [10, 17, 64], "skipped": []}))
    assert not cache.contains(tiny_rn, train_set, "test")

    counter = CountingEncoder(tiny_rn, monkeypatch)
    features = cache.dense_features(tiny_rn, train_set, "test")
    assert counter.images == len(train_set)
    np.testing.assert_allclose(np.asarray(features.features, np.float32), fresh_features(tiny_rn, train_set), rtol=2e-3, atol=1e-2)
    assert sorted(p.name for p in folder.iterdir()) == [f"{key}.json", f"{key}.lock", f"{key}.npy"]


def test_array_without_its_sidecar_is_not_trusted(tmp_path: Path, train_set, tiny_rn) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cache.dense_features(tiny_rn, train_set, "test")
    key = cache.key(tiny_rn, train_set, "test")
    (tmp_path / "cache" / "features" / f"{key}.json").unlink()
    assert not cache.contains(tiny_rn, train_set, "test")


def test_concurrent_trials_encode_once(tmp_path: Path, train_set, tiny_rn, monkeypatch) -> None:
    """Three trials start on an empty cache at once: one encodes, the others wait for it and read."""
    counter = CountingEncoder(tiny_rn, monkeypatch)
    slow_encode = tiny_rn.encode_dense

    def encode_dense(images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)  # keep the writer busy long enough for the others to reach the lock
        return slow_encode(images)

    monkeypatch.setattr(tiny_rn, "encode_dense", encode_dense)
    start = threading.Barrier(3)

    def trial(_: int) -> np.ndarray:
        start.wait()
        return np.asarray(FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test", batch_size=2).features)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(trial, range(3)))
    assert counter.images == len(train_set)
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


WORKER = """
import sys
from pathlib import Path
import trainables.data as data
from trainables.backbone import load_clip
from trainables.config import DatasetConfig
from trainables.features.cache import FeatureCache

clip = load_clip("RN-tiny", None, image_size=128)
dataset = data.build_dataset(DatasetConfig.model_validate_json(sys.argv[1]), "train", Path(sys.argv[2]))
FeatureCache(Path(sys.argv[3])).dense_features(clip, dataset, "test")
"""


def test_features_from_another_process_are_valid_here(tmp_path: Path, train_set, tiny_rn, monkeypatch) -> None:
    """A trial process fills the cache; this process reads it, and it equals its own encoding."""
    arguments = [sys.executable, "-c", WORKER, SHAPES.model_dump_json(), str(tmp_path / "data"), str(tmp_path / "cache")]
    subprocess.run(arguments, check=True, capture_output=True)
    counter = CountingEncoder(tiny_rn, monkeypatch)
    stored = FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test")
    assert counter.images == 0
    expected = fresh_features(tiny_rn, train_set)
    np.testing.assert_allclose(np.asarray(stored.features, np.float32), expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())


def test_unreadable_image_fails_or_is_skipped_and_counted(tmp_path: Path, train_set, tiny_rn) -> None:
    broken = train_set.image_paths[3]
    broken.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match=f"cannot read image {broken}"):
        FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test")

    skipping = data.build_dataset(SHAPES.model_copy(update={"skip_corrupt_images": True}), "train", tmp_path / "data")
    stored = FeatureCache(tmp_path / "cache").dense_features(tiny_rn, skipping, "test", batch_size=4)
    np.testing.assert_array_equal(stored.valid, np.arange(10) != 3)
    assert not np.asarray(stored.features[3]).any()
    key = FeatureCache(tmp_path / "cache").key(tiny_rn, skipping, "test")
    sidecar = json.loads((tmp_path / "cache" / "features" / f"{key}.json").read_text())
    assert sidecar["skipped"] == [{"index": 3, "path": str(broken)}]
    again = FeatureCache(tmp_path / "cache").dense_features(tiny_rn, skipping, "test")
    np.testing.assert_array_equal(again.valid, stored.valid)
    # A trial that does not skip fails on the cached skip too, naming the image.
    with pytest.raises(UserInputError, match=f"cannot read image {broken} .1 unreadable"):
        FeatureCache(tmp_path / "cache").dense_features(tiny_rn, train_set, "test")


@pytest.mark.parametrize(("features", "train_entries"), [(FeatureConfig(mode="cached_views", views=2), 2), (FeatureConfig(mode="online"), 0)])
def test_fill(tmp_path: Path, features: FeatureConfig, train_entries: int) -> None:
    def fill_once() -> dict:
        backbone = BackboneConfig(model="RN-tiny", image_size=64)
        paths = {"cache_dir": tmp_path / "cache", "data_dir": tmp_path / "data"}
        return fill(SHAPES, backbone, features, **paths, device="cpu", batch_size=8, progress=False)

    summary = fill_once()
    gelu = "GELU (random weights: the model config's GELU)"
    assert summary == {"encoded": train_entries + 1, "reused": 0, "skipped_images": 0, "activation": gelu}
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == train_entries + 1
    assert fill_once() == {"encoded": 0, "reused": train_entries + 1, "skipped_images": 0, "activation": gelu}


def test_one_set_of_decoding_workers_serves_every_shard_of_an_entry(tiny_rn, train_set, tmp_path, monkeypatch):
    """Workers are started once per entry, not once per shard (each start costs a fork and imports),
    and the shards they encode are what one batch-by-batch pass gives."""
    from trainables.features import reading as features

    monkeypatch.setattr(features, "SHARD_IMAGES", 3)  # 8 images: 3 shards
    started = []
    real_iter = torch.utils.data.dataloader._MultiProcessingDataLoaderIter.__init__

    def count_starts(self, loader):
        started.append(loader)
        real_iter(self, loader)

    monkeypatch.setattr(torch.utils.data.dataloader._MultiProcessingDataLoaderIter, "__init__", count_starts)
    stored = FeatureCache(tmp_path / "sharded").dense_features(tiny_rn, train_set, "test", batch_size=2, num_workers=2)
    assert len(started) == 1
    monkeypatch.setattr(features, "SHARD_IMAGES", 2048)
    whole = FeatureCache(tmp_path / "whole").dense_features(tiny_rn, train_set, "test", batch_size=2)
    # Other batch compositions (shards of 3 in batches of 2): the same features up to fp16 rounding.
    np.testing.assert_allclose(np.asarray(stored.features, np.float32), np.asarray(whole.features, np.float32), rtol=2e-3, atol=2e-3)


def test_a_local_fill_for_gpu_trials_runs_in_a_process_of_its_own(make_spec, monkeypatch):
    """On a GPU the driver must not keep a CUDA context and the encoder's memory on the GPU its trials
    share: the fill runs in a spawned process, whose errors come back as themselves (one line)."""
    from trainables.features import fill as trial_fill

    from orchestrator.run import fill
    from orchestrator.specs import grid

    def not_here(*args, **kwargs):
        raise AssertionError("the driver loaded a backbone")

    monkeypatch.setattr(fill, "own_process", lambda device: True)
    monkeypatch.setattr(trial_fill, "load_backbone", not_here)
    spec = make_spec(features={"mode": "cached"})
    fill.fill_locally(grid.Plan.of(spec))
    assert len(list((spec.cache_dir / "features").glob("*.npy"))) == 2  # the train and test splits

    Path("broken.jpg").write_bytes(b"not a JPEG")
    Path("list.csv").write_text("image,labels\nbroken.jpg,cat\n")
    broken = make_spec(datasets=[{"name": "mine", "kind": "manifest", "train_manifest": "list.csv", "test_manifest": "list.csv"}])
    with pytest.raises(UserInputError, match=r"^dataset 'mine': cannot read image .*broken.jpg"):
        fill.fill_locally(grid.Plan.of(broken))
