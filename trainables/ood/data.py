"""The OOD family's data: an ID set (single-label) and OOD test sets, as `MultiLabelDataset`s.

An ID split is a `MultiLabelDataset` with one-hot labels [N, K]; an OOD set or an image pool is one
with no classes (labels [N, 0]). So the frozen-feature cache, the image loader and the corrupt-image
handling of the MLR family serve both.

Kinds: ImageNet's folder layout (`train/<wnid>/*`, `val/<wnid>/*`, names from a `<wnid> <name>`
file), the MLR manifest format (`image,labels`, one label per image), folders of images (OOD sets),
and generated shapes: single objects of chosen classes, or no object at all (a far-OOD "texture").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from trainables import atomic
from trainables.data import synthetic
from trainables.data.base import MultiLabelDataset
from trainables.data.manifest import from_manifest
from trainables.errors import UserInputError
from trainables.ood.config import IDDatasetConfig, ImageSetConfig, OODTrialConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STREAMS = {"train": 10, "test": 11, "ood": 12}
"""Random streams of generated OOD-family images (the MLR set uses 0 and 1, pre-training 2)."""


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# -- ID sets ----------------------------------------------------------------------------------------


def _imagenet_names(cfg: IDDatasetConfig, wnids: list[str]) -> list[str]:
    if cfg.classnames_file is None:
        return wnids
    if not cfg.classnames_file.is_file():
        raise UserInputError(f"ID dataset '{cfg.name}': classnames_file {cfg.classnames_file} does not exist")
    names = {}
    for line in cfg.classnames_file.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition("\t" if "\t" in line else " ")
            names[wnid] = name.strip()
    missing = [w for w in wnids if w not in names]
    if missing:
        raise UserInputError(f"ID dataset '{cfg.name}': {cfg.classnames_file} names no class for {', '.join(missing[:5])}")
    return [names[w] for w in wnids]


def _imagenet(cfg: IDDatasetConfig, split: str) -> MultiLabelDataset:
    folders = {"train": cfg.root / "train", "test": cfg.root / "val"}
    for folder in folders.values():
        if not folder.is_dir():
            raise UserInputError(f"ID dataset '{cfg.name}': {folder} is not a folder (expected train/<wnid>/* and val/<wnid>/*)")
    wnids = sorted(d.name for d in folders["train"].iterdir() if d.is_dir())
    if not wnids:
        raise UserInputError(f"ID dataset '{cfg.name}': no class folders in {folders['train']}")
    paths, labels = [], []
    for index, wnid in enumerate(wnids):
        images = _images_under(folders[split] / wnid) if (folders[split] / wnid).is_dir() else []
        paths += images
        labels += [index] * len(images)
    if not paths:
        raise UserInputError(f"ID dataset '{cfg.name}': no images in {folders[split]}/<wnid>/")
    one_hot = np.zeros((len(paths), len(wnids)), dtype=np.int8)
    one_hot[np.arange(len(paths)), labels] = 1
    ids = [str(path.relative_to(cfg.root)) for path in paths]
    return MultiLabelDataset(cfg.name, "imagenet", split, _imagenet_names(cfg, wnids), ids, paths, one_hot, cfg.skip_corrupt_images)


def _manifest(cfg: IDDatasetConfig, split: str) -> MultiLabelDataset:
    paths = {"train": cfg.train_manifest, "test": cfg.test_manifest}
    path = paths[split] if cfg.root is None or paths[split].is_absolute() else cfg.root / paths[split]
    if not path.is_file():
        raise UserInputError(f"ID dataset '{cfg.name}': {split} manifest {path} does not exist (CSV image,labels)")
    classnames = None if split == "train" else id_dataset(cfg, "train").classnames
    dataset = from_manifest(cfg.name, "manifest", split, path, classnames, cfg.skip_corrupt_images)
    counts = dataset.labels.sum(axis=1)
    if (counts != 1).any():
        row = int(np.flatnonzero(counts != 1)[0])
        raise UserInputError(f"ID dataset '{cfg.name}': {path} image {dataset.image_ids[row]} has {counts[row]} labels; an ID set has one per image")
    return dataset


def _generated(name: str, folder_parent: Path, parameters: dict, rows_of: Callable[[], list[tuple[list[int], int]]]) -> Path:
    """`<folder_parent>/<name>-<hash of parameters>`, generated once: image i shows the classes of
    `rows_of()[i]` (none: a bare background), drawn from that row's random stream."""
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]

    def write(target: Path) -> None:
        target.mkdir()
        (target / "params.json").write_text(json.dumps(parameters, indent=2, sort_keys=True) + "\n")
        (target / "images").mkdir()
        rows = []
        for index, (classes, stream) in enumerate(rows_of()):
            rng = np.random.default_rng([synthetic.GENERATOR_SEED, stream, parameters["seed_offset"], index])
            canvas = synthetic.render_background(rng, parameters["image_size"])
            for class_index in classes:
                canvas = synthetic.draw_object(rng, canvas, class_index, int(rng.integers(4)))
            Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).save(target / "images" / f"{index:05d}.png")
            rows.append({"image": f"images/{index:05d}.png", "labels": ";".join(synthetic.SHAPE_CLASSES[c].name for c in classes)})
        pd.DataFrame(rows, columns=["image", "labels"]).to_csv(target / "manifest.csv", index=False)

    return atomic.build_once(folder_parent / f"{name}-{digest}", write)


def _synthetic_id(cfg: IDDatasetConfig, split: str, data_dir: Path) -> MultiLabelDataset:
    per_class = cfg.synthetic_per_class if split == "train" else max(1, cfg.synthetic_per_class // 2)
    classes = list(range(cfg.synthetic_classes))
    parameters = {"generator_version": synthetic.GENERATOR_VERSION, "kind": "ood-id", "split": split, "classes": classes,
                  "per_class": per_class, "image_size": cfg.synthetic_image_size, "seed_offset": 0}  # fmt: skip
    folder = _generated("shapes-id", Path(data_dir), parameters, lambda: [([c], STREAMS[split]) for c in classes for _ in range(per_class)])
    names = synthetic.classnames(cfg.synthetic_classes)
    tag = f"shapes-id-v{synthetic.GENERATOR_VERSION}@{cfg.synthetic_image_size}px"
    return from_manifest(cfg.name, "synthetic", split, folder / "manifest.csv", names, cfg.skip_corrupt_images, tag)


def id_dataset(cfg: IDDatasetConfig, split: str, data_dir: Path | None = None) -> MultiLabelDataset:
    """One split (`train` or `test`) of the ID set, labels one-hot [N, K]."""
    if cfg.kind == "imagenet":
        return _imagenet(cfg, split)
    if cfg.kind == "manifest":
        return _manifest(cfg, split)
    if data_dir is None:
        raise UserInputError(f"ID dataset '{cfg.name}': a generated set needs a data directory")
    return _synthetic_id(cfg, split, data_dir)


# -- OOD sets and pools -----------------------------------------------------------------------------


def ood_set(cfg: ImageSetConfig, data_dir: Path | None = None) -> MultiLabelDataset:
    """An OOD test set (or a retrieval pool): images with no classes, labels [N, 0]."""
    if cfg.kind == "folder":
        if not cfg.root.is_dir():
            raise UserInputError(f"image set '{cfg.name}': {cfg.root} is not a folder of images")
        paths = _images_under(cfg.root)
        if not paths:
            raise UserInputError(f"image set '{cfg.name}': no images ({', '.join(IMAGE_SUFFIXES)}) under {cfg.root}")
        return _unlabelled(cfg.name, "folder", [str(p.relative_to(cfg.root)) for p in paths], paths)
    if cfg.kind == "manifest":
        if not cfg.root.is_file():
            raise UserInputError(f"image set '{cfg.name}': manifest {cfg.root} does not exist (CSV with an image column)")
        table = pd.read_csv(cfg.root, dtype=str, keep_default_na=False)
        if "image" not in table.columns or table.empty:
            raise UserInputError(f"image set '{cfg.name}': manifest {cfg.root} needs an image column and at least one row")
        ids = table["image"].tolist()
        return _unlabelled(cfg.name, "manifest", ids, [cfg.root.parent / i for i in ids])
    if data_dir is None:
        raise UserInputError(f"image set '{cfg.name}': a generated set needs a data directory")
    classes = list(cfg.synthetic_classes)
    parameters = {"generator_version": synthetic.GENERATOR_VERSION, "kind": "ood", "classes": classes, "count": cfg.synthetic_count,
                  "image_size": cfg.synthetic_image_size, "seed_offset": sum((c + 1) * 31**i for i, c in enumerate(classes))}  # fmt: skip
    rows = lambda: [([classes[i % len(classes)]] if classes else [], STREAMS["ood"]) for i in range(cfg.synthetic_count)]  # noqa: E731
    folder = _generated("shapes-ood", Path(data_dir), parameters, rows)
    ids = [f"images/{i:05d}.png" for i in range(cfg.synthetic_count)]
    tag = f"shapes-ood-v{synthetic.GENERATOR_VERSION}@{cfg.synthetic_image_size}px-{parameters['seed_offset']}"
    return _unlabelled(cfg.name, "synthetic", ids, [folder / i for i in ids], tag)


def _unlabelled(name: str, kind: str, ids: list[str], paths: list[Path], tag: str = "") -> MultiLabelDataset:
    return MultiLabelDataset(name, kind, "test", [], ids, paths, np.zeros((len(ids), 0), dtype=np.int8), content_tag=tag)


def image_sets(config: OODTrialConfig) -> list[tuple[IDDatasetConfig | ImageSetConfig, str]]:
    """(image set, split) of every set a trial of `config` encodes (CLIP's global embedding, into the
    feature cache): the ID test split and the OOD sets, and, for the tuned variant, what it collects
    training images from (the ID training split, the pool). A fill ahead of the run encodes these."""
    sets = [(config.id_dataset, "test"), *((ood, "test") for ood in config.ood_sets)]
    if config.options.variant == "lapt":
        if config.collector.kind == "id_train":
            sets.append((config.id_dataset, "train"))
        if config.collector.pool is not None:
            sets.append((config.collector.pool, "test"))
    return sets


def open_image_set(image_set: IDDatasetConfig | ImageSetConfig, split: str, data_dir) -> MultiLabelDataset:
    """The dataset of an entry of `image_sets`."""
    if isinstance(image_set, IDDatasetConfig):
        return id_dataset(image_set, split, data_dir)
    return ood_set(image_set, data_dir)
