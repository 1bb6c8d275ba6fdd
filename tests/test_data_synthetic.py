"""The generated shapes set: deterministic, generated once (also concurrently), learnable."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

import trainables.data as data
from trainables.config import DatasetConfig
from trainables.errors import UserInputError

SMALL = DatasetConfig(
    name="shapes", kind="synthetic", synthetic_num_train=12, synthetic_num_test=8, synthetic_num_classes=5, synthetic_image_size=40
)


def pixels(dataset: data.MultiLabelDataset) -> np.ndarray:
    return np.stack([np.asarray(dataset.load_image(i)) for i in range(len(dataset))])


def test_class_names_labels_and_images(tmp_path: Path) -> None:
    train = data.build_dataset(SMALL, "train", tmp_path)
    test = data.build_dataset(SMALL, "test", tmp_path)
    assert train.classnames == test.classnames == ["circle", "square", "triangle", "star", "cross"]
    assert train.labels.shape == (12, 5) and test.labels.shape == (8, 5)
    objects = train.labels.sum(axis=1)
    assert objects.min() >= 1 and objects.max() <= 4 and set(np.unique(train.labels)) <= {0, 1}
    assert pixels(train).shape == (12, 40, 40, 3)
    assert train.image_paths[0].parent.parent.parent.name.startswith("synthetic-")
    data.check(SMALL, tmp_path)


def test_sixteen_classes_are_real_words(tmp_path: Path) -> None:
    cfg = SMALL.model_copy(update={"synthetic_num_classes": 16})
    names = data.build_dataset(cfg, "train", tmp_path).classnames
    assert len(set(names)) == 16 and all(name.isalpha() and name.islower() for name in names)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_fewer_classes_than_objects_per_image(tmp_path: Path, num_classes: int) -> None:
    """With fewer than 4 classes an image shows at most one object of each class."""
    cfg = SMALL.model_copy(update={"synthetic_num_classes": num_classes, "synthetic_num_train": 16})
    train = data.build_dataset(cfg, "train", tmp_path)
    assert train.classnames == ["circle", "square", "triangle"][:num_classes]
    objects = train.labels.sum(axis=1)
    assert objects.min() >= 1 and objects.max() == num_classes  # 16 images: some show every class
    assert (train.labels.sum(axis=0) > 0).all()
    assert pixels(train).shape == (16, 40, 40, 3)


def test_deterministic_and_independent_of_location(tmp_path: Path) -> None:
    one_train = data.build_dataset(SMALL, "train", tmp_path / "one")
    two_train = data.build_dataset(SMALL, "train", tmp_path / "two")
    np.testing.assert_array_equal(pixels(one_train), pixels(two_train))
    np.testing.assert_array_equal(one_train.labels, two_train.labels)
    assert one_train.fingerprint == two_train.fingerprint
    # More images: the first ones are the same images (image i depends on (split, i) only).
    larger = data.build_dataset(SMALL.model_copy(update={"synthetic_num_train": 16}), "train", tmp_path / "one")
    assert larger.image_paths[0].parent != one_train.image_paths[0].parent
    np.testing.assert_array_equal(pixels(larger)[:12], pixels(one_train))
    # Train and test are different images.
    test = data.build_dataset(SMALL, "test", tmp_path / "one")
    assert not np.array_equal(pixels(test), pixels(one_train)[:8])


def test_fingerprint_follows_the_images_not_the_other_split(tmp_path: Path) -> None:
    train = data.build_dataset(SMALL, "train", tmp_path)
    smaller_images = data.build_dataset(SMALL.model_copy(update={"synthetic_image_size": 32}), "train", tmp_path)
    assert smaller_images.fingerprint != train.fingerprint
    more_test_images = data.build_dataset(SMALL.model_copy(update={"synthetic_num_test": 9}), "train", tmp_path)
    assert more_test_images.fingerprint == train.fingerprint  # its train features stay valid


def test_reused_when_present_and_leftovers_ignored(tmp_path: Path) -> None:
    first = data.build_dataset(SMALL, "train", tmp_path)
    folder = first.image_paths[0].parents[2]
    leftover = tmp_path / f".{folder.name}.tmp-999999"  # what a killed generator leaves
    leftover.mkdir()
    stamp = first.image_paths[0].stat().st_mtime_ns
    second = data.build_dataset(SMALL, "train", tmp_path)
    assert second.image_paths[0].stat().st_mtime_ns == stamp
    assert second.fingerprint == first.fingerprint
    assert leftover.exists()  # not touched: the set was reused without taking the writer's path

    other = SMALL.model_copy(update={"synthetic_image_size": 32})
    other_leftover = tmp_path / f".{data.synthetic.dataset_dir(other, tmp_path).name}.tmp-999999"
    other_leftover.mkdir()
    data.build_dataset(other, "train", tmp_path)
    assert not other_leftover.exists()  # the next writer cleans a killed writer's folder


def test_concurrent_builds_generate_once(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: data.build_dataset(SMALL, "train", tmp_path), range(4)))
    assert len({d.fingerprint for d in built}) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [built[0].image_paths[0].parents[2].name]


def test_root_overrides_data_dir_and_is_required(tmp_path: Path) -> None:
    cfg = SMALL.model_copy(update={"root": tmp_path / "mine"})
    dataset = data.build_dataset(cfg, "test", tmp_path / "unused")
    assert dataset.image_paths[0].is_relative_to(tmp_path / "mine")
    assert not (tmp_path / "unused").exists()
    with pytest.raises(UserInputError, match="needs a root or a data directory"):
        data.build_dataset(SMALL, "train", None)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserInputError, match="is not a folder"):
        data.check(SMALL.model_copy(update={"root": tmp_path / "file"}))


def test_learnable_by_a_linear_probe_on_tiny_random_backbone(tmp_path: Path, tiny_rn) -> None:
    """The default set, mean-pooled dense features of the random-weight tiny RN, a logistic probe."""
    cfg = DatasetConfig(name="shapes", kind="synthetic")
    train = data.build_dataset(cfg, "train", tmp_path)
    test = data.build_dataset(cfg, "test", tmp_path)
    transform = data.test_transform(tiny_rn.image_size)

    def pooled(dataset: data.MultiLabelDataset) -> np.ndarray:
        images = torch.stack([transform(dataset.load_image(i)) for i in range(len(dataset))])
        with torch.no_grad():
            return torch.cat([tiny_rn.encode_dense(batch).mean(dim=1) for batch in images.split(64)]).numpy()

    train_features = pooled(train)
    scaler = StandardScaler().fit(train_features)
    probe = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(scaler.transform(train_features), train.labels)
    scores = probe.predict_proba(scaler.transform(pooled(test)))
    probe_map = 100 * average_precision_score(test.labels, scores, average="macro")
    chance_map = 100 * test.labels.mean()  # AP of a random ranking = the positive rate
    assert probe_map > chance_map + 30, (probe_map, chance_map)
