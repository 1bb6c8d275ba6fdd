"""What a whole grid costs, in trial-hours, on the reference-style path and on this project's.

    python -m benchmarks.trial_step --batch 32 --json step.json     # measure first, at the spec's batch size
    python -m benchmarks.grid_cost grid_full.yaml step.json [--train-images coco=82081 --train-images voc=5011]

For every MLR cell of the spec: epochs x ceil(train images / batch) training steps at the measured
seconds per step of its setup. The project's path adds, once per dataset, filling the feature cache:
(train + test images) / batch image-encoder passes, each costed as the reference Baseline's step
(which is the image encoder plus a linear layer). Evaluation passes are left out of both. The
image counts default to COCO 2014's annotated train/val images and VOC 2007's trainval/test; pass
`--train-images NAME=N` and `--test-images NAME=N` for other data. Not a test.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from orchestrator.families.mlr.cost import KNOWN_IMAGES
from orchestrator.specs import load_spec
from orchestrator.specs.grid import Plan


def grid_cost(plan: Plan, step_seconds: dict[str, dict[str, float]], images: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Trial-hours of every MLR trial of `plan` per path, `step_seconds[path][setup]` per step."""
    spec = plan.spec
    batch = spec.training.batch_size
    hours = {}
    for path, seconds in step_seconds.items():
        total = 0.0
        for cell in plan.cells:
            if cell.family != "mlr":
                continue
            steps = spec.training.epochs * math.ceil(images[cell.dataset.name][0] / batch)
            total += plan.trials_per_cell[cell.key] * steps * seconds[cell.setup]
        if path == "project":  # the feature cache, filled once per dataset
            passes = sum(math.ceil(sum(images[d.name]) / batch) for d in spec.datasets)
            total += passes * step_seconds["reference"]["baseline"]
        hours[path] = total / 3600
    return hours


def _counts(pairs: list[str]) -> dict[str, int]:
    return {name: int(count) for name, count in (pair.split("=", 1) for pair in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="a spec file or a name in search_spaces/ (grid_full.yaml)")
    parser.add_argument("measurements", type=Path, help="the JSON written by benchmarks.trial_step --json")
    parser.add_argument("--train-images", action="append", default=[], metavar="NAME=N")
    parser.add_argument("--test-images", action="append", default=[], metavar="NAME=N")
    args = parser.parse_args()

    plan = Plan.of(load_spec(args.spec, check_data=False).spec)
    measured = json.loads(args.measurements.read_text())
    step_seconds = {path: {} for path in ("reference", "project")}
    for run in measured["runs"]:
        step_seconds[run["path"]][run["setup"]] = run["seconds_per_step"]
    batch = int(measured["arguments"]["batch"])
    if batch != plan.spec.training.batch_size:
        print(f"note: measured at batch {batch}, the spec trains at batch {plan.spec.training.batch_size}")
    trains, tests = _counts(args.train_images), _counts(args.test_images)
    images = {}
    for dataset in plan.spec.datasets:
        known = KNOWN_IMAGES.get(dataset.kind, (None, None))
        images[dataset.name] = (trains.get(dataset.name, known[0]), tests.get(dataset.name, known[1]))
        if None in images[dataset.name]:
            parser.error(f"give --train-images {dataset.name}=N and --test-images {dataset.name}=N")
    hours = grid_cost(plan, step_seconds, images)
    mlr_trials = sum(plan.trials_per_cell[c.key] for c in plan.cells if c.family == "mlr")
    print(f"{plan.spec.name}: {mlr_trials} MLR trials, {plan.spec.training.epochs} epochs at batch {plan.spec.training.batch_size}")
    print(f"reference-style path: {hours['reference']:10.1f} trial-hours")
    print(f"this project's path:  {hours['project']:10.1f} trial-hours (cache fill included)")
    print(f"ratio: {hours['reference'] / hours['project']:.1f}x")


if __name__ == "__main__":
    main()
