"""One training step per setup: the reference-style path against this project's, side by side.

    python -m benchmarks.trial_step [--model RN101] [--image-size 224] [--batch 8] [--classes 80]
                                    [--steps 3] [--setups baseline,dual_coop] [--precision auto]
                                    [--json results.json]

Reference-style (as the DualCoOp code trains): the frozen image encoder runs on every batch, the
prompts go through the text encoder at CLIP's full 77-token context, everything in fp32, the loss
read back every step. This project's path: the batch's dense features come from the fp16 feature
cache (encoded once, outside the timing), the prompts are truncated after the longest EOT, the
setup computes in the precision `training.precision: auto` picks on this machine (bf16 only where
the CPU or GPU has it natively; `--precision fp32` measures what a CPU without it runs), and the
step is the trials' own (`trainables.step.TrainingStep`: nothing read back). On CUDA, `graphed` is
the same step captured once as a CUDA graph and replayed. All start from the same weights on the
same batch; their first losses must agree within `LOSS_TOLERANCE`. After the first step (and, graphed, the warm-up and the capture), `--steps`
steps are timed back to back, the device synchronised at the ends only, `--blocks` times; the
median block's seconds per step are reported. Each (setup, path) runs in a fresh
process, so that its peak memory (`ru_maxrss`, or the GPU's peak allocation) is its own. Random
weights: the cost does not depend on them. Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from trainables.backbone import load_clip, precision
from trainables.backbone.runtime import FrozenCLIP
from trainables.data.coco import CLASSNAMES as COCO_CLASSNAMES
from trainables.devices import trial_device
from trainables.mlr import setups
from trainables.mlr.losses import AsymmetricLoss
from trainables.prompts import PromptLearner
from trainables.step import WARMUP_STEPS, TrainingStep


def paths(device: torch.device) -> tuple[str, ...]:
    """The paths measurable on `device`."""
    return PATHS if device.type == "cuda" else PATHS[:2]

PATHS = ("reference", "project", "graphed")
"""`graphed` needs CUDA; `paths()` leaves it out elsewhere."""


LOSS_TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}
"""Relative difference allowed between the two paths' first loss: the fp16 cache alone (fp32), or with
bf16 arithmetic in the setup (bf16)."""


def untruncate(setup: torch.nn.Module, frozen: FrozenCLIP) -> None:
    """Give every prompt learner of `setup` CLIP's full context length, as the reference code encodes its prompts."""
    for learner in setup.modules():
        if isinstance(learner, PromptLearner):
            token_ids = frozen.tokenize(learner.prompts).to(frozen.device)
            with torch.no_grad():
                embeddings = frozen.token_embedding(token_ids)
            learner.token_ids = token_ids
            learner.token_prefix = embeddings[:, :1].clone()
            learner.token_suffix = embeddings[:, 1 + learner.n_ctx :].clone()


def make_batch(frozen: FrozenCLIP, batch: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch: images [B, 3, S, S] and multi-label targets [B, K] in {0, 1}."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, frozen.image_size, frozen.image_size, generator=generator)
    targets = (torch.rand(batch, classes, generator=generator) < 0.1).to(torch.int8)
    return images.to(frozen.device), targets.to(frozen.device)


def build(name: str, frozen: FrozenCLIP, classes: int, path: str) -> torch.nn.Module:
    """Setup `name` with the seed-0 weights; its prompts at full length on the reference path."""
    classnames = [COCO_CLASSNAMES[i % len(COCO_CLASSNAMES)] for i in range(classes)]
    torch.manual_seed(0)
    setup = setups.build(name, classnames, frozen).to(frozen.device)
    if path == "reference":
        untruncate(setup, frozen)
    return setup


def measure(
    name: str, path: str, model: str, image_size: int, batch: int, classes: int, steps: int, requested: str, blocks: int = 1
) -> dict:
    """Seconds per training step (median of `steps` after one warm-up), the first loss and peak memory."""
    device = trial_device("auto")
    frozen = load_clip(model, None, image_size=image_size, device=str(device))
    setup = build(name, frozen, classes, path)
    images, targets = make_batch(frozen, batch, classes)
    if path == "reference":
        chosen = "fp32"

        def features() -> torch.Tensor:
            return frozen.encode_dense(images).float()  # the image encoder on every step
    else:
        chosen, _ = precision.resolve(requested, device)
        cached = frozen.encode_dense(images).to(torch.float16)  # what the feature cache holds

        def features() -> torch.Tensor:
            return cached.float()

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if chosen == "bf16" else nullcontext()
    loss_fn = AsymmetricLoss()
    optimizer = torch.optim.SGD(setup.parameters(), lr=1e-6, momentum=0.9)

    def loss_of(feats: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        with precision.autocast(chosen, device) if path != "reference" else autocast:
            logits = setup(feats)
        return loss_fn(logits.float(), batch_targets)

    if path == "reference":
        def step() -> float:
            loss = loss_of(features(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()  # as the reference code logs it, every step
    else:
        runner = TrainingStep(loss_of, optimizer, device, graphed=path == "graphed")
        runner.set_learning_rates([1e-6])

        def step() -> None:
            runner(features(), targets)

    first_loss = step() if path == "reference" else (step(), runner.end_epoch(0))[1]  # also the warm-up
    for _ in range(WARMUP_STEPS + 1 if path == "graphed" else 0):  # the graph's warm-up and capture
        step()
    times = []
    for _ in range(blocks):
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        times.append((time.perf_counter() - started) / steps)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = statistics.median(times)
    return {
        "setup": name, "path": path, "precision": chosen, "seconds_per_step": seconds, "images_per_second": batch / seconds,
        "first_loss": first_loss, "peak_memory_mb": peak_mb, "device": str(device), "threads": torch.get_num_threads(),
    }  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_in_child(*args) -> dict:
    """`measure(*args)` in a fresh process (its peak memory is then its own)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def compare(rows: list[dict]) -> list[dict]:
    """Per setup: each path's time, the speed-ups over the reference and whether the first losses agree."""
    summary = []
    for name in dict.fromkeys(row["setup"] for row in rows):
        measured = {r["path"]: r for r in rows if r["setup"] == name}
        reference, project = measured["reference"], measured["project"]
        entry = {
            "setup": name, "reference_s": reference["seconds_per_step"], "project_s": project["seconds_per_step"],
            "speedup": reference["seconds_per_step"] / project["seconds_per_step"],
            "reference_images_per_s": reference["images_per_second"], "project_images_per_s": project["images_per_second"],
            "reference_peak_mb": reference["peak_memory_mb"], "project_peak_mb": project["peak_memory_mb"],
            "project_precision": project["precision"], "loss_agrees": True, "loss_relative_difference": 0.0,
        }  # fmt: skip
        if "graphed" in measured:
            entry |= {"graphed_s": measured["graphed"]["seconds_per_step"],
                      "graphed_speedup": reference["seconds_per_step"] / measured["graphed"]["seconds_per_step"]}  # fmt: skip
        for path in measured.keys() - {"reference"}:
            difference = abs(measured[path]["first_loss"] - reference["first_loss"]) / abs(reference["first_loss"])
            entry["loss_relative_difference"] = max(entry["loss_relative_difference"], difference)
            entry["loss_agrees"] &= difference <= LOSS_TOLERANCE[measured[path]["precision"]]
        summary.append(entry)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN101", help="open_clip model name (random weights): RN101, RN-tiny, ...")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--steps", type=int, default=3, help="steps timed back to back in a block")
    parser.add_argument("--blocks", type=int, default=1, help="blocks timed; the median is reported (3 on a GPU)")
    parser.add_argument("--setups", default=",".join(setups.names()))
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16"),
        help="the project path's training.precision (fp32: what auto picks on a CPU without native bf16)",
    )
    parser.add_argument("--json", type=Path, help="also write the measurements and the comparison here")
    args = parser.parse_args()

    rows = []
    for name in args.setups.split(","):
        for path in paths(trial_device("auto")):
            rows.append(measure_in_child(
                name, path, args.model, args.image_size, args.batch, args.classes, args.steps, args.precision, args.blocks
            ))  # fmt: skip
            print(f"  {name:13s} {path:9s} {rows[-1]['seconds_per_step']:8.3f} s/step", file=sys.stderr, flush=True)
    summary = compare(rows)
    device, threads = rows[0]["device"], rows[0]["threads"]
    print(f"{args.model} at {args.image_size} px, batch {args.batch}, {args.classes} classes, {device}, {threads} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"{'setup':13s} {'reference s':>11s} {'project s':>10s} {'speed-up':>9s} {'ref img/s':>9s} {'img/s':>9s} "
          f"{'ref MB':>8s} {'MB':>8s} {'precision':>9s} {'Δloss':>8s}")  # fmt: skip
    for row in summary:
        print(f"{row['setup']:13s} {row['reference_s']:11.3f} {row['project_s']:10.4f} {row['speedup']:8.1f}x "
              f"{row['reference_images_per_s']:9.1f} {row['project_images_per_s']:9.1f} {row['reference_peak_mb']:8.0f} "
              f"{row['project_peak_mb']:8.0f} {row['project_precision']:>9s} {row['loss_relative_difference']:8.1e}"
              f"{'' if row['loss_agrees'] else '  LOSS DIFFERS'}")  # fmt: skip
    for row in summary:
        if "graphed_s" in row:
            print(f"{row['setup']:13s} as one CUDA graph: {row['graphed_s']:.5f} s/step, {row['graphed_speedup']:.1f}x the reference, "
                  f"{row['project_s'] / row['graphed_s']:.1f}x the eager project step")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "runs": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
