"""PASCAL VOC 2007 from its own layout, as the DualCoOp reference reads it (REFERENCE.md section 1).

Train = trainval, test = test. Class names raw (`diningtable`, `pottedplant`, `tvmonitor`).
Objects marked difficult:
- `negative` (the reference): skipped, so a class present only as difficult is labelled 0, in
  both splits;
- `unknown`: a class present only as difficult is labelled -1, in both splits. At evaluation mAP
  ignores it; in training the loss ignores it (and partial labels keep it unknown) rather than
  teaching a visible-but-hard object as absent.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from trainables.config import DatasetConfig
from trainables.data.base import MultiLabelDataset, check_layout, describe
from trainables.errors import UserInputError

CLASSNAMES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
SPLIT_LISTS = {"train": "trainval", "test": "test"}
LAYOUT = "the VOC2007 layout: ImageSets/Main, Annotations/*.xml, JPEGImages/"


def _layout_entries(split: str) -> list[str]:
    return ["ImageSets/Main/", f"ImageSets/Main/{SPLIT_LISTS[split]}.txt", "Annotations/", "JPEGImages/"]


def check(cfg: DatasetConfig) -> None:
    """The image lists of both splits, the annotation folder and the image folder exist."""
    entries = ["ImageSets/Main/", *(f"ImageSets/Main/{name}.txt" for name in SPLIT_LISTS.values()), "Annotations/", "JPEGImages/"]
    check_layout(cfg.name, cfg.root, entries, LAYOUT)


def _objects(cfg: DatasetConfig, xml_path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) for every object of one annotation file."""
    try:
        root = ElementTree.parse(xml_path).getroot()
        objects = [(obj.findtext("name", "").strip(), obj.findtext("difficult", "0").strip() == "1") for obj in root.iter("object")]
    except (OSError, ElementTree.ParseError) as error:
        raise UserInputError(f"dataset '{cfg.name}': cannot read annotation {xml_path}: {describe(error)}") from error
    unknown = sorted({name for name, _ in objects} - set(CLASSNAMES))
    if unknown:
        raise UserInputError(f"dataset '{cfg.name}': {xml_path} names classes outside VOC2007: {', '.join(unknown)}")
    return objects


def load(cfg: DatasetConfig, split: str) -> MultiLabelDataset:
    """One split of VOC 2007 with labels in {0, 1}, or {0, 1, -1} when difficult means unknown."""
    check_layout(cfg.name, cfg.root, _layout_entries(split), LAYOUT)
    list_file = cfg.root / "ImageSets" / "Main" / f"{SPLIT_LISTS[split]}.txt"
    image_ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not image_ids:
        raise UserInputError(f"dataset '{cfg.name}': image list {list_file} is empty")
    column = {name: k for k, name in enumerate(CLASSNAMES)}
    labels = np.zeros((len(image_ids), len(CLASSNAMES)), dtype=np.int8)
    for row, image_id in enumerate(image_ids):
        objects = _objects(cfg, cfg.root / "Annotations" / f"{image_id}.xml")
        if cfg.voc_difficult == "unknown":
            labels[row, [column[name] for name, difficult in objects if difficult]] = -1
        # Visible (non-difficult) objects win over difficult ones of the same class.
        labels[row, [column[name] for name, difficult in objects if not difficult]] = 1
    return MultiLabelDataset(
        name=cfg.name,
        kind="voc",
        split=split,
        classnames=list(CLASSNAMES),
        image_ids=image_ids,
        image_paths=[cfg.root / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids],
        labels=labels,
        skip_corrupt_images=cfg.skip_corrupt_images,
    )
