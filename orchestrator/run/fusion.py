"""Fused trials (`resources.fuse: auto`): the fixed trials of a spec that read the same data stream
train in groups, a Ray trial per group on one device, each batch read, augmented and encoded (or
gathered) once for every member (`trainables.trainable`, the family's `task.run_group`). Every
member stays a trial of its own: its MLflow run, progress row, checkpoint and failure
(`orchestrator.track.members`).

Which trials may share a group, their family says (`Family.stream_key`: one key, one stream).
How many: at most what a device's memory holds beside the shared backbone (`Family.member_bytes`,
measured as `describe` measures a trial) and `resources.max_members`, and no more than spreads the
trials over every trial slot, so that no slot idles while a group could be split. The trials that
finished runs hold are not grouped again: a grown grid fuses the trials it still runs. Optuna's
samples (a searcher asks for one trial at a time) and ASHA (which stops trials one by one) run unfused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from trainables.tasks import MEMBERS

from orchestrator.family import in_spec, named
from orchestrator.specs import ExperimentSpec, grid

PROBE_TIMEOUT_S = 120
"""How long a launch on a cluster waits for a node to measure the memory a trial's device has."""

MEMORY_SLACK = 0.9
"""The share of a device's memory for its steps that a group's measured tensors may fill: the rest
is for what no tensor count sees (a CUDA context, the caching allocator's rounding)."""


@dataclass(frozen=True)
class Group:
    """Trials of one stream that train together; a group of one is a trial like any other."""

    members: tuple[grid.Trial, ...]

    @property
    def key(self) -> str:
        keys = "\n".join(sorted(member.trial_key for member in self.members))
        return f"fused-{hashlib.sha256(keys.encode()).hexdigest()[:12]}"

    @property
    def name(self) -> str:
        """`fused4-baseline-shapes-r0.1-s1-...`: how many members, and the first's name."""
        return f"fused{len(self.members)}-{self.members[0].trial_name}"

    def as_config(self) -> dict:
        """The Ray Tune config `trainables.trainable.run_trial` receives: the trial's, or the group's
        with each member's under `MEMBERS`."""
        if len(self.members) == 1:
            return self.members[0].as_config()
        configs = [member.as_config() for member in self.members]
        shared = {key: configs[0][key] for key in ("family", "family_source") if key in configs[0]}
        return {**shared, MEMBERS: configs, "trial_name": self.name, "trial_key": self.key}


@dataclass(frozen=True)
class Sizing:
    """What bounds a group's size: the trial slots, and the members a device's memory holds."""

    slots: int
    """Trials (or groups) that run at once: the CPUs and GPUs over each trial's share, at most `max_concurrent_trials`."""
    members: int | None
    """The most members in a group (memory and `max_members`); None: unbounded."""
    shared_bytes: int = 0
    member_bytes: int = 0
    measured_on: str = ""


def fusing(spec: ExperimentSpec) -> bool:
    """Whether the spec's fixed trials are fused: `resources.fuse: auto` and no ASHA."""
    return spec.resources.fuse == "auto" and spec.scheduler.kind == "none"


def slots(spec: ExperimentSpec, cpus: float, gpus: float) -> int:
    """The trials that run at once on `cpus` and `gpus`."""
    resources = spec.resources
    fit = int(cpus // resources.cpus_per_trial)
    if resources.gpus_per_trial > 0:
        fit = min(fit, int(gpus // resources.gpus_per_trial))
    if resources.max_concurrent_trials is not None:
        fit = min(fit, resources.max_concurrent_trials)
    return max(fit, 1)


def sizing(spec: ExperimentSpec, slot_count: int, capacity_of: Callable[[], int | None]) -> Sizing:
    """The bound on a group's members: `max_members`, and what the bytes `capacity_of()` says (of the
    device a group computes on, for its weights and steps; None: not known) hold at the measured
    sizes. It is asked only where a family fuses and the members are not fixed at one (on a
    cluster it asks a node)."""
    limit = spec.resources.max_members
    if not fusing(spec) or limit == 1:
        return Sizing(slot_count, 1)
    measured = [m for family in _fusing_families(spec) if (m := family.member_bytes(spec)) is not None]
    capacity = capacity_of() if measured else None
    if capacity is None:
        return Sizing(slot_count, limit)
    shared, member = max(m[0] for m in measured), max(max(m[1] for m in measured), 1)
    held = max(int((MEMORY_SLACK * capacity - shared) // member), 1)
    return Sizing(slot_count, min(held, limit or held), shared, member, measured[0][2])


def _fusing_families(spec: ExperimentSpec) -> list:
    return [family for family in in_spec(spec) if family.task.run_group is not None]


def groups(plan: grid.Plan, finished: frozenset[str], size: Sizing) -> list[Group]:
    """The fixed trials of `plan` no finished run holds (`finished`: their config hashes), in groups
    of one stream (each unfused where the spec does not fuse), spread over `size.slots`."""
    pending = [trial for trials in plan.fixed_trials.values() for trial in trials if trial.config_hash not in finished]
    if not fusing(plan.spec) or size.members == 1:
        return [Group((trial,)) for trial in pending]
    streams: dict[str, list[grid.Trial]] = {}
    for trial in pending:
        streams.setdefault(_stream(trial), []).append(trial)
    counts = {key: math.ceil(len(trials) / (size.members or len(trials))) for key, trials in streams.items()}
    # Split the stream with the largest groups until every slot has a group of the fused streams (the
    # trials alone, of a family that does not fuse, fill slots only for a while), or no group has two members.
    fused = [key for key, trials in streams.items() if len(trials) > 1]
    while fused and sum(counts[key] for key in fused) < size.slots:
        key = max(fused, key=lambda k: len(streams[k]) / counts[k])
        if len(streams[key]) <= counts[key]:
            break
        counts[key] += 1
    return [group for key, trials in streams.items() for group in _split(trials, counts[key])]


def _stream(trial: grid.Trial) -> str:
    """The stream a trial reads, by its family (a trial whose family does not fuse: a stream of its own)."""
    family = named(trial.family)
    key = None
    if family.task.run_group is not None:
        key = family.stream_key(family.task.config.model_validate(trial.trial_config))
    return f"{trial.family}\n{key}" if key is not None else f"{trial.family}\n{trial.trial_key}"


def _split(trials: list[grid.Trial], count: int) -> list[Group]:
    """`trials` in `count` groups of sizes that differ by one at most, in the plan's order."""
    size, extra = divmod(len(trials), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [Group(tuple(trials[a:b])) for a, b in zip(bounds, bounds[1:]) if b > a]


def capacity(spec: ExperimentSpec, on_cluster: bool, slot_count: int) -> int | None:
    """Bytes for a group's weights and steps on the device a trial gets (`rows.work_memory`): this
    machine's, or, on a cluster, what a task with a trial's resources finds on its node (None when
    no node could run one within `PROBE_TIMEOUT_S`: an autoscaling cluster without its GPU nodes yet)."""
    if not on_cluster:
        from trainables.features.rows import work_memory

        from orchestrator.run.fill import local_trial_device

        return work_memory(local_trial_device(spec), spec.resources.gpu_share, slot_count)
    import ray

    from orchestrator.track.trial_errors import user_error_cause

    resources = spec.resources
    probe = ray.remote(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial)(_work_memory_there)
    asked = probe.remote(resources.device, resources.gpu_share, resources.cpus_per_trial)
    try:
        return ray.get(asked, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.RayTaskError as error:  # a GPU its node's torch cannot use: the trials' one-line error
        cause = user_error_cause(error)
        if cause is None:
            raise
        raise cause from None
    except ray.exceptions.GetTimeoutError:
        ray.cancel(asked, force=True)
        print(f"No node ran a trial's share within {PROBE_TIMEOUT_S} s to measure its device's memory: groups are "
              "bounded by resources.max_members only", flush=True)  # fmt: skip
        return None


def _work_memory_there(requested: str, gpu_share: float, cpus_per_trial: float) -> int:
    import os

    import ray

    from trainables.devices import trial_device
    from trainables.features.rows import work_memory

    device = trial_device(requested, len(ray.get_gpu_ids()))
    return work_memory(device, gpu_share, int((os.cpu_count() or 1) // cpus_per_trial))


def summary(spec: ExperimentSpec, found: list[Group], size: Sizing) -> list[str]:
    """How the trials are grouped and what a group asks of its device, for `run` and `describe`."""
    if not fusing(spec):
        why = "resources.fuse is off" if spec.resources.fuse == "off" else "ASHA stops trials one by one"
        return [f"Fused groups: none ({why}): a Ray trial per trial"]
    fused = [group for group in found if len(group.members) > 1]
    alone = len(found) - len(fused)
    sizes = ", ".join(str(n) for n in sorted((len(g.members) for g in fused), reverse=True))
    lines = [
        f"Fused groups: {sum(len(g.members) for g in fused)} trials in {len(fused)} groups ({sizes} members) "
        f"for {size.slots} trial slot{'s' if size.slots != 1 else ''}, {alone} trial(s) alone; "
        "Optuna's samples run unfused" if fused else f"Fused groups: none ({alone} trials alone: no two read one stream, "
        f"or each has a trial slot of its own of the {size.slots})"
    ]
    if not fused:
        return lines
    resources = spec.resources
    runs_as = f"Each group runs as one trial ({resources.cpus_per_trial:g} CPU, {resources.gpus_per_trial:g} GPU)"
    if not size.member_bytes:
        return [*lines, f"{runs_as}; the device's memory bounds its members at launch"]
    largest = max(len(g.members) for g in fused)
    need = size.shared_bytes + largest * size.member_bytes
    return [
        *lines,
        f"{runs_as} and holds at most {need / 2**30:.2f} GiB of tensors: the backbone's {size.shared_bytes / 2**30:.2f} once "
        f"and {largest} x {size.member_bytes / 2**30:.2f} for its members (measured: {size.measured_on}; at most "
        f"{size.members} members fit the device's memory for steps)",
    ]
