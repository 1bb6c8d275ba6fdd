"""Images per second and per core of the online path's CPU work: read an image, augment it, hand it
over as a tensor; from the JPEG or from the decoded store, with either RandAugment.

    python -m benchmarks.augmentation [--images 200] [--size 448] [--json]

On generated 640 x 480 JPEGs (photographs' size in COCO), in one process on one thread, what a
DataLoader worker of an online trial does for each image (`data.ImageTensors` with its per-image
seed): `before` is the path as it was (decode, resize, Cutout, torchvision's RandAugment, ToTensor
and Normalize in float32 on the CPU); `jpeg` decodes and resizes every time and hands over uint8
(normalised on the device); `store` reads the image decoded and resized once (`trainables.features.decoded`).
Each figure is the best of `--repeats` passes. Not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables import data
from trainables.config import DatasetConfig
from trainables.features.decoded import DecodedStore


def jpegs(root: Path, count: int) -> data.MultiLabelDataset:
    """`count` generated 640 x 480 JPEGs (smooth shapes and noise, quality 90) as a manifest dataset."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    y, x = np.mgrid[0:480, 0:640]
    rows = ["image,labels"]
    for i in range(count):
        base = np.stack([np.sin(x / (20 + i % 7)) * 90 + 120, np.cos(y / (15 + i % 5)) * 90 + 120, (x + y + 3 * i) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.jpg", quality=90)
        rows.append(f"images/{i}.jpg,thing")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    config = DatasetConfig(name="jpegs", kind="manifest", train_manifest=root / "list.csv", test_manifest=root / "list.csv")
    return data.build_dataset(config, "train", root)


def images_per_second(images: data.ImageTensors, repeats: int) -> float:
    best = float("inf")
    for repeat in range(repeats):
        started = time.perf_counter()
        for i in range(len(images)):
            images[(repeat, i)]  # view = the pass, as an epoch: each image's own seeded draws
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as work:
        dataset = jpegs(Path(work), args.images)
        started = time.perf_counter()
        stored = DecodedStore(Path(work) / "cache").images(dataset, args.size)
        build = args.images / (time.perf_counter() - started)
        paths = {"before": (dataset, "torchvision", True)}
        for policy in ("reference", "torchvision"):
            paths[f"jpeg, {policy}"] = (dataset, policy, False)
            paths[f"store, {policy}"] = (stored, policy, False)
        rates = {}
        for name, (source, policy, normalised) in paths.items():
            transform = data.train_transform(args.size, normalised=normalised, augmentation=policy)
            dtype = torch.float32 if normalised else torch.uint8
            rates[name] = images_per_second(data.ImageTensors(source, transform, args.size, dtype=dtype), args.repeats)

    figures = {
        "images": args.images, "size": args.size, "store_build_images_per_second": build,
        "images_per_second_per_core": rates,
        "store_reference_vs_before": rates["store, reference"] / rates["before"],
        "store_vs_jpeg": {p: rates[f"store, {p}"] / rates[f"jpeg, {p}"] for p in ("reference", "torchvision")},
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.images} generated 640 x 480 JPEGs to {args.size} px, one core; best of {args.repeats} passes:")
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:8.1f} images/s  ({1000 / rate:.2f} ms an image)")
    print(f"  building the store: {build:.1f} images/s, once")
    print(f"store, reference vs before: {figures['store_reference_vs_before']:.2f}x; store vs JPEG: "
          + ", ".join(f"{p} {r:.2f}x" for p, r in figures["store_vs_jpeg"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
