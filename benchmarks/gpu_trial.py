"""The real trial loop on a COCO-shaped generated set: where a trial's time goes, and what packing
several trials on one device gives.

    python -m benchmarks.gpu_trial [--model RN101] [--image-size 448] [--train 4096] [--test 1024]
                                   [--batch 32] [--setups baseline,positive_coop,negative_coop,dual_coop]
                                   [--processes 1,2,4,8] [--workers N] [--workdir DIR] [--json out.json]

A manifest of random JPEGs (640 x 480, COCO's 80 class names, about 2.9 labels per image as COCO)
is written once; the frozen-feature cache is filled from it (images/s, with `--workers` loader
processes); then, for each setup, `trainables.mlr.train.MLRTrial` (what every MLR trial runs) is built
and timed on the device `auto` picks, eager and, on CUDA, as one CUDA graph per step:

- `data ms`: one epoch of the data path alone (gathering the batches and their targets);
- `step ms`: one training epoch (after a warm-up epoch) divided by its steps;
- `eval s`: scoring and ranking the test split once;
- `epoch/(steps x step)`: a real epoch against its steps at the step time alone;
- `COCO trial min`: 50 epochs of 82,081 training images (2,566 steps) with the 40,137 test images
  evaluated after each, extrapolated from the measured step and per-image evaluation times.

Then K trial processes of the heaviest setup share the device (`--processes`), each training for
`--seconds` on the same set (`orchestrator.run.packing`, what `tune-packing` measures): their total
training images/s against one process's.
Random weights: the cost does not depend on them. Not a test (`tests/test_benchmarks.py` runs it
small on a CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables.config import BackboneConfig, DatasetConfig, FeatureConfig
from trainables.data.coco import CLASSNAMES as COCO_CLASSNAMES
from trainables.devices import trial_device
from trainables.features.fill import fill
from trainables.mlr import setups
from trainables.mlr.config import TrialConfig
from trainables.mlr.train import MLRTrial

from orchestrator import family
from orchestrator.families.mlr.cost import KNOWN_IMAGES
from orchestrator.run import packing

(COCO_TRAIN, COCO_TEST), COCO_EPOCHS = KNOWN_IMAGES["coco"], 50
"""COCO 2014's train and val images, and the paper's epochs (PositiveCoOp section 4.2)."""

LABELS_PER_IMAGE = 2.9
"""COCO 2014's mean number of object classes per image."""


def write_manifest(root: Path, count: int, split: str, seed: int) -> Path:
    """`count` random 640 x 480 JPEGs with COCO-like label sets, listed in `root/<split>.csv`; kept if already there."""
    manifest = root / f"{split}.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,labels"]
    for i in range(count):
        # Every class appears, even in a small set (the manifest's classes are the union of its train labels).
        labels = set(range(i % len(COCO_CLASSNAMES), len(COCO_CLASSNAMES), count))
        labels |= set(rng.choice(len(COCO_CLASSNAMES), rng.poisson(LABELS_PER_IMAGE - 1)).tolist())
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)
        lines.append(f"{split}/{i:06d}.jpg,{';'.join(COCO_CLASSNAMES[j] for j in sorted(labels))}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def trial_config(args, setup: str, cuda_graph: bool, workdir: Path) -> TrialConfig:
    return TrialConfig(
        setup=setup,
        dataset=DatasetConfig(name="coco-shaped", kind="manifest", root=workdir, train_manifest=Path("train.csv"), test_manifest=Path("test.csv")),
        backbone=BackboneConfig(model=args.model, image_size=args.image_size),
        features=FeatureConfig(),
        training={"epochs": 2, "batch_size": args.batch, "eval_batch_size": args.eval_batch, "warmup_epochs": 1, "cuda_graph": cuda_graph},
        label_ratio=0.5, seed=1, cache_dir=workdir / "cache", data_dir=workdir / "data",
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trial(config: TrialConfig, repeats: int = 20) -> dict:
    """Seconds of one built trial's data path, its training step alone (one batch, `repeats` times),
    a training epoch and an evaluation."""
    trial = MLRTrial(config)
    device = trial.device
    steps = math.ceil(len(trial.stream.train_features[0][1]) / config.training.batch_size)
    started = time.perf_counter()
    for _ in trial.train_batches(0):
        pass
    _sync(device)
    data_seconds = time.perf_counter() - started
    trial.set_learning_rates(0)
    trial.train_epoch(0)  # warm-up: allocators, kernels, the graph's capture
    trial.evaluate()
    trial.set_learning_rates(1)
    feats, targets = next(trial.train_batches(1))
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        trial.step(feats, targets)
    _sync(device)
    step_seconds = (time.perf_counter() - started) / repeats
    trial.step.end_epoch(1)
    started = time.perf_counter()
    trial.train_epoch(1)
    _sync(device)
    epoch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trial.evaluate()
    eval_seconds = time.perf_counter() - started
    return {
        "steps": steps, "data_ms": 1000 * data_seconds / steps, "step_ms": 1000 * step_seconds, "epoch_s": epoch_seconds,
        "eval_s": eval_seconds, "test_images": len(trial.test_rows), "device": trial.resolved["device"],
        "precision": trial.precision, "resident": trial.resolved["features.resident"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN101")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--train", type=int, default=4096)
    parser.add_argument("--test", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=100)
    parser.add_argument("--setups", default=",".join(setups.names()))
    parser.add_argument("--processes", default="1,2,4,8", help="trial processes sharing the device (empty: skip)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of training of each packing")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16), help="loader processes of the fill")
    parser.add_argument("--workdir", type=Path, default=Path("runs/gpu_trial"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = args.workdir.absolute()

    started = time.perf_counter()
    write_manifest(workdir, args.train, "train", seed=0)
    write_manifest(workdir, args.test, "test", seed=1)
    print(f"manifest: {args.train} + {args.test} JPEGs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    base = trial_config(args, "baseline", False, workdir)
    started = time.perf_counter()
    fill(base.dataset, base.backbone, base.features, cache_dir=base.cache_dir, data_dir=base.data_dir,
                  batch_size=args.eval_batch, num_workers=args.workers, progress=False)  # fmt: skip
    fill_rate = (args.train + args.test) / (time.perf_counter() - started)

    device = trial_device("auto")
    modes = [False, True] if device.type == "cuda" else [False]
    rows = []
    for name in args.setups.split(","):
        for graphed in modes:
            row = {"setup": name, "cuda_graph": graphed, **time_trial(trial_config(args, name, graphed, workdir))}
            row["eval_per_image_s"] = row["eval_s"] / row["test_images"]
            coco_steps = math.ceil(COCO_TRAIN / args.batch)
            row["coco_trial_min"] = COCO_EPOCHS * (coco_steps * row["step_ms"] / 1000 + COCO_TEST * row["eval_per_image_s"]) / 60
            rows.append(row)
            print(f"  {name:13s} graph={graphed!s:5s} step {row['step_ms']:8.2f} ms, eval {row['eval_s']:.3f} s", file=sys.stderr, flush=True)

    heaviest = "dual_coop" if "dual_coop" in args.setups.split(",") else args.setups.split(",")[-1]
    packed = {}
    for count in [int(k) for k in args.processes.split(",") if k]:
        measured = packing.measure(family.named("mlr"), trial_config(args, heaviest, modes[-1], workdir), count, args.seconds)
        packed[count] = {"images_per_s": measured.images_per_second, "peak_gib": measured.peak_bytes / 2**30}
        print(f"  {count} x {heaviest}: {measured.images_per_second:.0f} train images/s", file=sys.stderr, flush=True)

    print(f"{args.model} at {args.image_size} px, batch {args.batch}, {len(COCO_CLASSNAMES)} classes, {rows[0]['device']}, "
          f"{rows[0]['precision']}, {args.train} train / {args.test} test images, features resident: {rows[0]['resident']}")  # fmt: skip
    print(f"feature fill: {fill_rate:.0f} images/s ({args.workers} loader workers)")
    print(f"{'setup':13s} {'graph':>5s} {'data ms':>8s} {'step ms':>8s} {'eval s':>7s} {'eval/epoch':>10s} "
          f"{'epoch/(steps x step)':>20s} {'COCO trial min':>14s}")  # fmt: skip
    for row in rows:
        print(f"{row['setup']:13s} {'yes' if row['cuda_graph'] else 'no':>5s} {row['data_ms']:8.2f} {row['step_ms']:8.2f} "
              f"{row['eval_s']:7.3f} {row['eval_s'] / row['epoch_s']:10.2f} {row['epoch_s'] / (row['steps'] * row['step_ms'] / 1000):20.2f} "
              f"{row['coco_trial_min']:14.1f}")  # fmt: skip
    if packed:
        one = packed.get(1, {}).get("images_per_s")
        print(f"{heaviest} trials sharing the device: " + ", ".join(
            f"{k}: {v['images_per_s']:.0f} img/s" + (f" ({v['images_per_s'] / one:.2f}x)" if one else "") + f", {v['peak_gib']:.2f} GiB peak each"
            for k, v in packed.items()))  # fmt: skip
    result = {"arguments": {k: str(v) for k, v in vars(args).items()}, "fill_images_per_s": fill_rate, "trials": rows, "packing": packed}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
