"""COCO, VOC and manifest datasets built from small fixtures written here; layout and image errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainables.data as data
from trainables.config import DatasetConfig
from trainables.errors import UserInputError


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


# -- COCO ---------------------------------------------------------------------------------------

# Category ids out of order and with a gap, as COCO's are (1..90 for 80 classes).
COCO_CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 2, "name": "bicycle", "supercategory": "vehicle"},
]


def write_coco_split(root: Path, folder: str, images: dict[int, list[int]], unannotated: list[int]) -> None:
    """images: image id -> category ids of its annotations."""
    entries = [{"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": 20, "height": 16} for i in [*images, *unannotated]]
    annotations = [
        {"id": 1000 * image_id + n, "image_id": image_id, "category_id": c, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0}
        for image_id, categories in images.items()
        for n, c in enumerate(categories)
    ]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    document = {"images": entries, "annotations": annotations, "categories": COCO_CATEGORIES}
    (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(document))
    for entry in entries:
        write_image(root / folder / entry["file_name"])


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    write_coco_split(root, "train2014", {30: [2, 1], 9: [1, 3, 3], 25: [90]}, unannotated=[42])
    write_coco_split(root, "val2014", {7: [3]}, unannotated=[8])
    return root


def test_coco_classes_sorted_by_category_id_and_labels(coco_root: Path) -> None:
    cfg = DatasetConfig(name="coco", kind="coco", root=coco_root)
    data.check(cfg)
    train = data.build_dataset(cfg, "train")
    assert train.classnames == ["person", "bicycle", "car", "toothbrush"]
    # Only annotated images (42 has none), in image-id order.
    assert train.image_ids == ["9", "25", "30"]
    expected = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=np.int8)
    np.testing.assert_array_equal(train.labels, expected)
    assert train.labels.dtype == np.int8
    assert train.image_paths[0] == coco_root / "train2014" / "COCO_train2014_000000000009.jpg"
    assert train.load_image(0).mode == "RGB"

    test = data.build_dataset(cfg, "test")
    assert test.image_ids == ["7"]
    np.testing.assert_array_equal(test.labels, [[0, 0, 1, 0]])
    assert test.fingerprint != train.fingerprint


def test_coco_missing_annotation_file_names_it(coco_root: Path) -> None:
    (coco_root / "annotations" / "instances_val2014.json").unlink()
    cfg = DatasetConfig(name="coco", kind="coco", root=coco_root)
    with pytest.raises(UserInputError, match=r"annotations/instances_val2014\.json \(expected the COCO 2014 layout") as error:
        data.check(cfg)
    assert str(coco_root) in str(error.value)
    assert "\n" not in str(error.value)


def test_coco_annotation_file_that_is_not_json(coco_root: Path) -> None:
    (coco_root / "annotations" / "instances_train2014.json").write_text("{not json")
    cfg = DatasetConfig(name="coco", kind="coco", root=coco_root)
    with pytest.raises(UserInputError, match="instances_train2014.json is not a COCO instances file"):
        data.build_dataset(cfg, "train")


# -- VOC ----------------------------------------------------------------------------------------


def voc_xml(objects: list[tuple[str, int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{difficult}</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for name, difficult in objects
    )
    return f"<annotation><folder>VOC2007</folder><size><width>20</width><height>16</height><depth>3</depth></size>{body}</annotation>"


VOC_IMAGES = {
    "000001": [("dog", 0), ("person", 1)],  # person only as difficult
    "000002": [("car", 1), ("car", 0), ("tvmonitor", 0)],  # car both difficult and visible
    "000003": [("cat", 1)],  # cat only as difficult
    "000004": [("chair", 0), ("diningtable", 0)],
}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000003\n000004\n")
    for image_id, objects in VOC_IMAGES.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects))
        write_image(root / "JPEGImages" / f"{image_id}.jpg")
    return root


VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()


def label_row(present: list[str], unknown: list[str] = ()) -> list[int]:
    return [1 if c in present else -1 if c in unknown else 0 for c in VOC_CLASSES]


def test_voc_difficult_negative_as_the_reference(voc_root: Path) -> None:
    cfg = DatasetConfig(name="voc", kind="voc", root=voc_root)
    data.check(cfg)
    train = data.build_dataset(cfg, "train")
    test = data.build_dataset(cfg, "test")
    assert train.classnames == VOC_CLASSES
    assert train.image_ids == ["000001", "000002"] and test.image_ids == ["000003", "000004"]
    np.testing.assert_array_equal(train.labels, [label_row(["dog"]), label_row(["car", "tvmonitor"])])
    np.testing.assert_array_equal(test.labels, [label_row([]), label_row(["chair", "diningtable"])])
    assert test.image_paths[1] == voc_root / "JPEGImages" / "000004.jpg"


def test_voc_difficult_unknown(voc_root: Path) -> None:
    cfg = DatasetConfig(name="voc", kind="voc", root=voc_root, voc_difficult="unknown")
    train = data.build_dataset(cfg, "train")
    test = data.build_dataset(cfg, "test")
    np.testing.assert_array_equal(train.labels, [label_row(["dog"], ["person"]), label_row(["car", "tvmonitor"])])
    np.testing.assert_array_equal(test.labels, [label_row([], ["cat"]), label_row(["chair", "diningtable"])])
    negative = data.build_dataset(cfg.model_copy(update={"voc_difficult": "negative"}), "test")
    assert negative.fingerprint != test.fingerprint


def test_voc_missing_root_and_wrong_layout(tmp_path: Path, voc_root: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserInputError, match=f"dataset 'voc': root {missing} does not exist .expected the VOC2007 layout"):
        data.check(DatasetConfig(name="voc", kind="voc", root=missing))
    (voc_root / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(UserInputError, match=f"root {voc_root} has no ImageSets/Main/test.txt .expected the VOC2007 layout"):
        data.check(DatasetConfig(name="voc", kind="voc", root=voc_root))
    with pytest.raises(UserInputError, match=f"root {tmp_path} has no ImageSets/Main/ "):
        data.build_dataset(DatasetConfig(name="voc", kind="voc", root=tmp_path), "train")


def test_voc_unknown_class_and_missing_annotation(voc_root: Path) -> None:
    cfg = DatasetConfig(name="voc", kind="voc", root=voc_root)
    (voc_root / "Annotations" / "000002.xml").write_text(voc_xml([("unicorn", 0)]))
    with pytest.raises(UserInputError, match=r"000002\.xml names classes outside VOC2007: unicorn"):
        data.build_dataset(cfg, "train")
    (voc_root / "Annotations" / "000003.xml").unlink()
    with pytest.raises(UserInputError, match=r"cannot read annotation .*000003\.xml"):
        data.build_dataset(cfg, "test")


# -- manifest -----------------------------------------------------------------------------------


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    for name in ("a.png", "b.png", "sub/c.png", "d.png"):
        write_image(root / "images" / name)
    (root / "train.csv").write_text("image,labels\nimages/a.png,zebra;apple\nimages/b.png,\nimages/sub/c.png, mango | apple\n")
    lines = [{"image": "images/d.png", "labels": ["mango"]}, {"image": str(root / "images" / "a.png"), "labels": []}]
    (root / "test.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def test_manifest_csv_and_json_lines(manifest_dir: Path) -> None:
    cfg = DatasetConfig(name="mine", kind="manifest", root=manifest_dir, train_manifest=Path("train.csv"), test_manifest=Path("test.jsonl"))
    data.check(cfg)
    train = data.build_dataset(cfg, "train")
    assert train.classnames == ["apple", "mango", "zebra"]
    np.testing.assert_array_equal(train.labels, [[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    assert train.image_paths[2] == manifest_dir / "images" / "sub" / "c.png"
    test = data.build_dataset(cfg, "test")
    assert test.classnames == train.classnames
    np.testing.assert_array_equal(test.labels, [[0, 1, 0], [0, 0, 0]])
    assert test.image_paths[1] == manifest_dir / "images" / "a.png"  # absolute paths kept
    assert test.load_image(0).size == (20, 16)


def test_manifest_test_labels_outside_train_classes(manifest_dir: Path) -> None:
    (manifest_dir / "test.jsonl").write_text(json.dumps({"image": "images/d.png", "labels": ["kiwi", "mango", "fig"]}) + "\n")
    cfg = DatasetConfig(name="mine", kind="manifest", train_manifest=manifest_dir / "train.csv", test_manifest=manifest_dir / "test.jsonl")
    with pytest.raises(UserInputError, match="uses classes outside the train classes: fig, kiwi"):
        data.build_dataset(cfg, "test")


def test_manifest_errors(manifest_dir: Path) -> None:
    cfg = DatasetConfig(name="mine", kind="manifest", train_manifest=manifest_dir / "train.csv", test_manifest=manifest_dir / "gone.csv")
    with pytest.raises(UserInputError, match=f"test manifest {manifest_dir / 'gone.csv'} does not exist"):
        data.check(cfg)
    (manifest_dir / "train.csv").write_text("path,classes\na.png,x\n")
    with pytest.raises(UserInputError, match=r"train\.csv lacks column\(s\) image, labels"):
        data.build_dataset(cfg, "train")
    (manifest_dir / "test.jsonl").write_text('{"image": "images/d.png", "labels": "mango"}\n')
    bad = cfg.model_copy(update={"train_manifest": manifest_dir / "test.jsonl"})
    with pytest.raises(UserInputError, match=r"test\.jsonl line 1 is not"):
        data.build_dataset(bad, "train")


# -- unreadable images --------------------------------------------------------------------------


def test_corrupt_image_fails_with_its_path_or_is_skipped(manifest_dir: Path) -> None:
    corrupt = manifest_dir / "images" / "b.png"
    corrupt.write_bytes(b"this is not a PNG")
    truncated = manifest_dir / "images" / "sub" / "c.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    cfg = DatasetConfig(name="mine", kind="manifest", train_manifest=manifest_dir / "train.csv", test_manifest=manifest_dir / "test.jsonl")
    train = data.build_dataset(cfg, "train")
    for index, path in ((1, corrupt), (2, truncated)):
        with pytest.raises(UserInputError, match=f"dataset 'mine': cannot read image {path}") as error:
            train.load_image(index)
        assert "\n" not in str(error.value)
    images = data.ImageTensors(train, data.test_transform(32), 32)
    with pytest.raises(UserInputError, match=str(corrupt)):
        images[1]

    skipping = data.build_dataset(cfg.model_copy(update={"skip_corrupt_images": True}), "train")
    items = [data.ImageTensors(skipping, data.test_transform(32), 32)[i] for i in range(3)]
    assert [valid for _, _, valid in items] == [True, False, False]
    assert torch.equal(items[1][0], torch.zeros(3, 32, 32))
    assert [index for _, index, _ in items] == [0, 1, 2]
