"""`describe SPEC --profile FILE`: a spec's device-hours and wall time on N devices, fused and
unfused, before it is launched, from a measured profile (`python -m benchmarks.gpu_check` on a GPU
machine, `python -m benchmarks.fused --json` on a CPU). Each family costs its own trials
(`Family.group_seconds`); this module adds them up and schedules them on the devices.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

from trainables.errors import UserInputError

from orchestrator.family import in_spec, named
from orchestrator.run import fusion
from orchestrator.specs import grid

MEASURE = (
    "Cost: not estimated without a profile. Measure one on the machine the trials will run on: "
    "`python -m benchmarks.gpu_check` (a GPU; its JSON), or `python -m benchmarks.fused --json > profile.json` "
    "(a CPU); then `describe SPEC --profile FILE --devices N`"
)


def read_profile(path: Path) -> dict:
    try:
        profile = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"--profile {path}: cannot read it as JSON ({error})") from None
    if not isinstance(profile, dict):
        raise UserInputError(f"--profile {path}: not a JSON object")
    return profile


def span(seconds: float) -> str:
    """`42 s`, `3.5 min`, `12.3 h`."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def makespan(jobs: list[float], devices: int) -> float:
    """The seconds `jobs` take on `devices`, the longest first, each to the device free first."""
    loads = [0.0] * max(devices, 1)
    for job in sorted(jobs, reverse=True):
        heapq.heapreplace(loads, loads[0] + job)
    return max(loads)


def estimate(plan: grid.Plan, profile: dict, path: Path, devices: int, size: fusion.Sizing) -> list[str]:
    """`describe`'s lines on the cost of `plan`'s fixed trials on `devices` devices, fused in groups of
    at most `size.members` over `size.slots` trial slots, and apart."""
    spec = plan.spec
    fused_spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"fuse": "auto"})})
    fused_plan = grid.Plan(fused_spec, plan.cells, plan.trials_per_cell, plan.fixed_trials)
    groups = fusion.groups(fused_plan, frozenset(), fusion.Sizing(size.slots, size.members))
    fused_jobs, apart_jobs, uncounted = [], [], 0
    for group in groups:
        try:
            seconds = named(group.members[0].family).group_seconds(spec, profile, list(group.members))
        except (KeyError, TypeError, ValueError) as error:
            raise UserInputError(f"--profile {path}: not a profile this spec's trials can be costed by ({error})") from None
        if seconds is None:
            uncounted += len(group.members)
            continue
        shared, members = seconds
        fused_jobs.append(shared + sum(members))
        apart_jobs += [shared + member for member in members]
    notes = [note for family in in_spec(spec) for note in family.profile_notes(spec, profile)]
    lines = [f"Cost from {path} ({'; '.join(notes)}), training only, on {devices} device(s):"]
    for name, jobs in ((f"fused ({len(fused_jobs)} groups)", fused_jobs), (f"unfused ({len(apart_jobs)} trials)", apart_jobs)):
        lines.append(f"  {name:22s} {span(sum(jobs)):>9s} of device time, {span(makespan(jobs, devices)):>9s} wall")
    if uncounted:
        lines.append(f"  {uncounted} trial(s) not counted: the profile or their data's size does not say what they cost")
    if len(plan.fixed_trials) < len(plan.cells):
        lines.append("  Optuna's samples are not counted: searched cells' trials are not known in advance")
    if spec.scheduler.kind == "asha":
        lines.append("  ASHA stops trials early: these are the most the trials can take")
    return lines
