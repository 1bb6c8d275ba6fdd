"""A generic multi-label manifest for users' own data.

CSV with columns `image,labels` (class names separated by `;` or `|`, empty for no label), or
JSON Lines with one `{"image": "...", "labels": ["...", ...]}` per line (`.jsonl`, `.ndjson`,
`.json`). Image paths are relative to the manifest's folder (absolute paths are kept). A relative
manifest path is relative to the dataset root when one is given. The class list is the sorted
union of the train manifest's labels; a test label outside it is an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from trainables.config import DatasetConfig
from trainables.data.base import MultiLabelDataset, describe
from trainables.errors import UserInputError

CSV_SUFFIXES = (".csv",)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")
LABEL_SEPARATORS = re.compile(r"[;|]")
LAYOUT = 'CSV with columns image,labels (labels separated by ";" or "|") or JSON Lines {"image": ..., "labels": [...]}'


def manifest_path(cfg: DatasetConfig, split: str) -> Path:
    """The split's manifest file, relative paths resolved against the root when there is one."""
    path = cfg.train_manifest if split == "train" else cfg.test_manifest
    return cfg.root / path if cfg.root is not None and not path.is_absolute() else path


def check(cfg: DatasetConfig) -> None:
    """Both manifest files exist and have a known format."""
    for split in ("train", "test"):
        path = manifest_path(cfg, split)
        if not path.is_file():
            raise UserInputError(f"dataset '{cfg.name}': {split} manifest {path} does not exist (expected {LAYOUT})")
        if path.suffix.lower() not in CSV_SUFFIXES + JSON_LINES_SUFFIXES:
            raise UserInputError(
                f"dataset '{cfg.name}': manifest {path} is neither .csv nor .jsonl/.ndjson/.json (expected {LAYOUT})"
            )


def _read_csv(name: str, path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UserInputError(f"dataset '{name}': manifest {path} is not {LAYOUT}: {describe(error)}") from error
    missing = {"image", "labels"} - set(table.columns)
    if missing:
        raise UserInputError(f"dataset '{name}': manifest {path} lacks column(s) {', '.join(sorted(missing))} (expected {LAYOUT})")
    labels = [[part.strip() for part in LABEL_SEPARATORS.split(cell) if part.strip()] for cell in table["labels"]]
    return table["image"].tolist(), labels


def _read_json_lines(name: str, path: Path) -> tuple[list[str], list[list[str]]]:
    images, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise UserInputError(f"dataset '{name}': manifest {path} line {number} is not JSON: {describe(error)}") from error
        image = record.get("image") if isinstance(record, dict) else None
        names = record.get("labels") if isinstance(record, dict) else None
        if not isinstance(image, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserInputError(
                f"dataset '{name}': manifest {path} line {number} is not {{\"image\": \"<path>\", \"labels\": [\"<class>\", ...]}}"
            )
        images.append(image)
        labels.append([n.strip() for n in names if n.strip()])
    return images, labels


def read_manifest(name: str, path: Path) -> tuple[list[str], list[list[str]]]:
    """(image path as written, class names) per row of a CSV or JSON Lines manifest."""
    if not path.is_file():
        raise UserInputError(f"dataset '{name}': manifest {path} does not exist (expected {LAYOUT})")
    reader = _read_csv if path.suffix.lower() in CSV_SUFFIXES else _read_json_lines
    images, labels = reader(name, path)
    if not images:
        raise UserInputError(f"dataset '{name}': manifest {path} lists no images")
    return images, labels


def from_manifest(
    name: str,
    kind: str,
    split: str,
    path: Path,
    classnames: list[str] | None,
    skip_corrupt_images: bool,
    content_tag: str = "",
) -> MultiLabelDataset:
    """A dataset from one manifest; `classnames=None` takes the sorted union of its labels."""
    images, names_per_image = read_manifest(name, path)
    if classnames is None:
        classnames = sorted({n for names in names_per_image for n in names})
    unknown = sorted({n for names in names_per_image for n in names} - set(classnames))
    if unknown:
        raise UserInputError(f"dataset '{name}': manifest {path} uses classes outside the train classes: {', '.join(unknown)}")
    rows = [row for row, names in enumerate(names_per_image) for _ in names]
    columns = pd.Index(classnames).get_indexer([n for names in names_per_image for n in names])
    labels = np.zeros((len(images), len(classnames)), dtype=np.int8)
    labels[rows, columns] = 1
    return MultiLabelDataset(
        name=name,
        kind=kind,
        split=split,
        classnames=list(classnames),
        image_ids=images,
        image_paths=[path.parent / image for image in images],
        labels=labels,
        skip_corrupt_images=skip_corrupt_images,
        content_tag=content_tag,
    )


def load(cfg: DatasetConfig, split: str) -> MultiLabelDataset:
    """One split of a manifest dataset; the class list always comes from the train manifest."""
    train_path = manifest_path(cfg, "train")
    train = from_manifest(cfg.name, "manifest", "train", train_path, None, cfg.skip_corrupt_images)
    if not train.classnames:
        raise UserInputError(f"dataset '{cfg.name}': train manifest {train_path} has no labels")
    if split == "train":
        return train
    return from_manifest(cfg.name, "manifest", split, manifest_path(cfg, split), train.classnames, cfg.skip_corrupt_images)
