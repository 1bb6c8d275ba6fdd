"""Member-images/s of K trials fused in a group against the same K trials run apart, cached and online.

    python -m benchmarks.fused [--model RN101] [--image-size 448] [--batch 32] [--members 1,2,4,8]
                               [--modes cached,online] [--steps 3] [--json]

The members cycle through the four setups at label ratios 0.1, 0.3, ... on one stream (random
weights of `--model`, generated images). A group's step is its shared part (the stream's batch:
gathered from the cache, or read, augmented and encoded once) and each member's optimiser step;
K trials apart pay both K times. Each figure is measured in a process of its own after one warm-up
step, over `--steps` steps: a group of K, and one trial of each setup alone (K trials apart cost the
sum of their members' steps, and each holds a backbone and the stream of its own). `ideal` is what
the measured parts allow: the shared part once and the members' steps K times. Peak memory is the
process's (a GPU's: its allocator's pool), and K trials apart hold the sum of their processes'.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainables.config import DatasetConfig
from trainables.devices import device_name, trial_device
from trainables.mlr.config import TrialConfig

SETUPS = ("dual_coop", "positive_coop", "negative_coop", "baseline")
LEARNING_RATES = {"prompt": 0.002, "embedding": 1.0, "projector": 0.0003}


def member_configs(args: argparse.Namespace, count: int, mode: str, workdir: Path) -> list[TrialConfig]:
    """`count` members of one stream: the setups in turn, each at its own label ratio."""
    return [
        TrialConfig(
            setup=SETUPS[i % len(SETUPS)],
            dataset=DatasetConfig(name="shapes", kind="synthetic", synthetic_num_train=args.batch * (args.steps + 1),
                                  synthetic_num_test=args.batch, synthetic_image_size=args.image_size),
            backbone={"model": args.model, "pretrained": None, "image_size": args.image_size},
            features={"mode": mode},
            training={"epochs": 1, "batch_size": args.batch, "warmup_epochs": 0, "lr": LEARNING_RATES, "num_workers": args.workers},
            label_ratio=round(0.1 + 0.2 * (i % 5), 1),
            seed=1,
            cache_dir=workdir / "cache",
            data_dir=workdir / "data",
            device=args.device,
        )  # fmt: skip
        for i in range(count)
    ]


def _timed_steps(stream, members, steps: int) -> dict:
    """Seconds of the shared part and of each member's steps over `steps` steps, after one warm-up step."""
    synchronize = torch.cuda.synchronize if stream.device.type == "cuda" else (lambda: None)
    shared, member = 0.0, [0.0] * len(members)
    for member_trial in members:
        member_trial.set_learning_rates(0)
        member_trial.setup.train()
    batches = stream.batches(0)
    for step in range(steps + 1):
        synchronize()
        started = time.perf_counter()
        feats, rows = next(batches)
        synchronize()
        if step:
            shared += time.perf_counter() - started
        for i, member_trial in enumerate(members):
            started = time.perf_counter()
            member_trial.step(feats, member_trial.train_targets.index_select(0, rows))
            synchronize()
            if step:
                member[i] += time.perf_counter() - started
    return {"shared_s": shared / steps, "member_s": [m / steps for m in member]}


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(configs_json: list[str], steps: int, results) -> None:
    """In a process of its own: a group of the members (one member: a trial alone), timed."""
    from trainables.mlr.fused import FusedMLRTrials

    try:
        group = FusedMLRTrials([TrialConfig.model_validate_json(c) for c in configs_json])
        timing = _timed_steps(group.stream, group.members, steps)
        results.put({**timing, "peak_bytes": _peak_bytes(group.stream.device)})
    except BaseException as error:
        results.put(error)
        raise


def measure(configs: list[TrialConfig], steps: int) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=_measure, args=([c.model_dump_json() for c in configs], steps, results))
    worker.start()
    result = results.get()
    worker.join()
    if isinstance(result, BaseException):
        raise result
    return result


def compare(args: argparse.Namespace, mode: str, workdir: Path) -> list[dict]:
    needed = {c.setup for c in member_configs(args, max(args.member_counts), mode, workdir)}  # each setup a group has, alone
    alone = {c.setup: measure([c], args.steps) for c in member_configs(args, len(SETUPS), mode, workdir) if c.setup in needed}
    rows = []
    for count in args.member_counts:
        configs = member_configs(args, count, mode, workdir)
        fused = measure(configs, args.steps)
        apart_s = sum(alone[c.setup]["shared_s"] + alone[c.setup]["member_s"][0] for c in configs)
        fused_s = fused["shared_s"] + sum(fused["member_s"])
        ideal_s = fused["shared_s"] + sum(alone[c.setup]["member_s"][0] for c in configs)
        images = count * args.batch
        rows.append({
            "mode": mode, "members": count, "setups": [c.setup for c in configs],
            "fused_member_images_per_s": images / fused_s, "apart_member_images_per_s": images / apart_s,
            "speedup": apart_s / fused_s, "of_ideal": ideal_s / fused_s,
            "shared_ms": 1000 * fused["shared_s"], "member_ms": [1000 * s for s in fused["member_s"]],
            "fused_peak_gib": fused["peak_bytes"] / 2**30,
            "apart_peak_gib": sum(alone[c.setup]["peak_bytes"] for c in configs) / 2**30,
        })  # fmt: skip
        print(f"  {mode} x{count}: fused {rows[-1]['fused_member_images_per_s']:.1f} member-images/s, apart "
              f"{rows[-1]['apart_member_images_per_s']:.1f} ({rows[-1]['speedup']:.2f}x)", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN101")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--members", default="1,2,4,8", help="group sizes K")
    parser.add_argument("--modes", default="cached,online")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers of the online mode (default: the CPUs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    args.member_counts = [int(k) for k in args.members.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="fused-") as folder:
        rows = [row for mode in args.modes.split(",") for row in compare(args, mode, Path(folder))]
    device = trial_device(args.device)
    setting = {"model": args.model, "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
               "device": device_name(device), "torch_threads": torch.get_num_threads()}  # fmt: skip
    if args.json:
        print(json.dumps({**setting, "rows": rows}, indent=1))
        return
    print(f"{args.model} (random weights) at {args.image_size} px, batch {args.batch}, {setting['device']}, {args.steps} steps each")
    print(f"{'mode':7s} {'K':>2s} {'fused img/s':>12s} {'apart img/s':>12s} {'speedup':>8s} {'of ideal':>9s} "
          f"{'shared ms':>10s} {'member ms':>10s} {'peak GiB fused':>15s} {'apart':>6s}")  # fmt: skip
    for r in rows:
        print(f"{r['mode']:7s} {r['members']:2d} {r['fused_member_images_per_s']:12.1f} {r['apart_member_images_per_s']:12.1f} "
              f"{r['speedup']:7.2f}x {r['of_ideal']:8.0%} {r['shared_ms']:10.0f} {sum(r['member_ms']) / r['members']:10.1f} "
              f"{r['fused_peak_gib']:15.2f} {r['apart_peak_gib']:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
