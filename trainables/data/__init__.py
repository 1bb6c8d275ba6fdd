"""Datasets (COCO 2014, VOC 2007, manifests, generated shapes), partial labels and transforms.

    ds = build_dataset(cfg, "train", data_dir)   # ds.classnames, ds.labels int8 [N, K], ds.load_image(i)
    check(cfg, data_dir)                         # fast layout check before any work
    partial_labels(ds.labels, ratio, seed, key)  # the same mask for every setup, nested across ratios
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from trainables.config import DatasetConfig
from trainables.data import coco, manifest, synthetic, voc
from trainables.data.base import ImageTensors, MultiLabelDataset, batches_of, view_seed
from trainables.data.partial import (
    dataset_key,
    dataset_partial_labels,
    kept_fraction,
    load_partial_labels,
    partial_labels,
    save_partial_labels,
)
from trainables.data.transforms import (
    Augmentation,
    normalise,
    test_transform,
    train_transform,
)

Split = Literal["train", "test"]
SPLITS = ("train", "test")


def check(cfg: DatasetConfig, data_dir: Path | None = None) -> None:
    """Fail fast, before any work, with one line naming the path and the layout expected."""
    if cfg.kind == "synthetic":
        synthetic.check(cfg, data_dir)
    else:
        {"coco": coco.check, "voc": voc.check, "manifest": manifest.check}[cfg.kind](cfg)


def classnames(cfg: DatasetConfig, data_dir: Path | None = None) -> list[str]:
    """The dataset's class names; COCO's, VOC's and the generated set's are fixed, so they need no data on disk."""
    if cfg.kind == "coco":
        return list(coco.CLASSNAMES)
    if cfg.kind == "voc":
        return list(voc.CLASSNAMES)
    if cfg.kind == "synthetic":
        return synthetic.classnames(cfg.synthetic_num_classes)
    return build_dataset(cfg, "train", data_dir).classnames


def build_dataset(cfg: DatasetConfig, split: Split, data_dir: Path | None = None) -> MultiLabelDataset:
    """One split of the dataset `cfg` declares; `data_dir` holds generated data when root is None."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.kind == "synthetic":
        return synthetic.load(cfg, split, data_dir)
    return {"coco": coco.load, "voc": voc.load, "manifest": manifest.load}[cfg.kind](cfg, split)


__all__ = [
    "Augmentation",
    "ImageTensors",
    "MultiLabelDataset",
    "Split",
    "batches_of",
    "build_dataset",
    "check",
    "dataset_key",
    "dataset_partial_labels",
    "kept_fraction",
    "load_partial_labels",
    "normalise",
    "partial_labels",
    "save_partial_labels",
    "test_transform",
    "train_transform",
    "view_seed",
]
