"""COCO 2014 through pycocotools, as the DualCoOp reference reads it (REFERENCE.md section 1).

Train = train2014, test = val2014. Only images that have annotations are kept; category ids are
sorted and mapped to 0..K-1; class names are the categories' `name` fields (the short names the
ASL / DualCoOp list uses: "motorcycle", "tv", "couch", ...).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO

from trainables.config import DatasetConfig
from trainables.data.base import MultiLabelDataset, check_layout, describe
from trainables.errors import UserInputError

SPLIT_FOLDERS = {"train": "train2014", "test": "val2014"}
CLASSNAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip
"""The 80 COCO 2014 category names in category-id order, as the annotation files give them; for
describing a grid without the data. Loading always reads the names from the annotation file."""

LAYOUT = "the COCO 2014 layout: annotations/instances_{train2014,val2014}.json, train2014/, val2014/"


def _layout_entries(split: str) -> list[str]:
    folder = SPLIT_FOLDERS[split]
    return [f"annotations/instances_{folder}.json", f"{folder}/"]


def check(cfg: DatasetConfig) -> None:
    """Both splits' annotation files and image folders exist under the root."""
    check_layout(cfg.name, cfg.root, _layout_entries("train") + _layout_entries("test"), LAYOUT)


def load(cfg: DatasetConfig, split: str) -> MultiLabelDataset:
    """One split of COCO 2014 with labels in {0, 1}."""
    check_layout(cfg.name, cfg.root, _layout_entries(split), LAYOUT)
    folder = SPLIT_FOLDERS[split]
    annotation_file = cfg.root / "annotations" / f"instances_{folder}.json"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing lines
            coco = COCO(str(annotation_file))
        category_ids = sorted(coco.cats)
        classnames = [coco.cats[c]["name"] for c in category_ids]
        image_ids = sorted(coco.imgToAnns)
        file_names = [coco.imgs[i]["file_name"] for i in image_ids]
        annotations = coco.dataset["annotations"]
        annotated_images = np.array([a["image_id"] for a in annotations], dtype=np.int64)
        annotated_categories = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise UserInputError(f"dataset '{cfg.name}': {annotation_file} is not a COCO instances file: {describe(error)}") from error

    if not image_ids:
        raise UserInputError(f"dataset '{cfg.name}': {annotation_file} has no annotated images")
    unknown = sorted(set(annotated_categories.tolist()) - set(category_ids))
    if unknown:
        raise UserInputError(f"dataset '{cfg.name}': {annotation_file} annotates undeclared category ids {unknown[:5]}")
    labels = np.zeros((len(image_ids), len(category_ids)), dtype=np.int8)
    rows = np.searchsorted(np.array(image_ids, dtype=np.int64), annotated_images)
    columns = np.searchsorted(np.array(category_ids, dtype=np.int64), annotated_categories)
    labels[rows, columns] = 1
    return MultiLabelDataset(
        name=cfg.name,
        kind="coco",
        split=split,
        classnames=classnames,
        image_ids=[str(i) for i in image_ids],
        image_paths=[cfg.root / folder / name for name in file_names],
        labels=labels,
        skip_corrupt_images=cfg.skip_corrupt_images,
    )
