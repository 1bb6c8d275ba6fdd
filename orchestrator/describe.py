"""`describe SPEC`: what a run would do, without running it. Each task family says what its cells
are, how they train and what one of its trials costs (`Family.describe`)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.cost import MEASURE, read_profile
from orchestrator.cost import estimate as cost_lines
from orchestrator.family import in_spec, of_setup
from orchestrator.run import fill, fusion
from orchestrator.specs import ExperimentSpec, LoadedSpec, grid, is_uri, spec_hash


def describe(loaded: LoadedSpec, devices: int | None = None, profile: Path | None = None) -> str:
    """What a run of `loaded` would do; `devices`: the trial slots its groups are spread over (None:
    this machine's); `profile`: a measured profile to estimate the cost from (`orchestrator.cost`)."""
    spec = loaded.spec
    plan = grid.Plan.of(spec)
    slot_count = _local_slots(spec) if devices is None else fusion.slots(spec, 10**9, devices) if spec.resources.gpus_per_trial else devices
    # This machine's memory bounds groups only where its device is the trials' (a GPU spec described without one: at launch).
    here = spec.resources.gpus_per_trial == 0 or fill.local_trial_device(spec).type == "cuda"
    size = fusion.sizing(spec, slot_count, lambda: fusion.capacity(spec, False, slot_count) if here else None)
    grouping = fusion.summary(spec, fusion.groups(plan, frozenset(), size), size) if plan.fixed_trials else []
    cost = cost_lines(plan, read_profile(profile), profile, devices or slot_count, size) if profile else [MEASURE]
    per_cell = max(plan.trials_per_cell.values(), default=1)
    search = ""
    if spec.search.kind == "optuna":
        searched = dict.fromkeys(
            name for setup in spec.setups if (family := of_setup(setup)) for name in family.search_space(spec, setup)
        )
        search = (
            f"Optuna ({spec.search.sampler}, seed {spec.search.seed}) over {', '.join(searched)}, "
            f"{per_cell} trials per cell, {spec.search.mode} {spec.search.metric}"
        )
    resources = spec.resources
    said: dict[str, list[str]] = {"cells": [], "grid": [], "training": [], "details": []}
    for family in in_spec(spec):
        cells = [cell for cell in plan.cells if cell.family == family.name]
        if cells:
            for part, lines in family.describe(loaded, cells).items():
                said[part] += lines
    if spec.search.kind != "optuna":
        search = f"grid over {', '.join(said['grid'])} ({per_cell} trials per cell)" if said["grid"] else "grid (1 trial per cell)"
    epochs = max((epochs for family in in_spec(spec) if (epochs := family.epochs(spec)) is not None), default=None)
    scheduler = "none" if spec.scheduler.kind == "none" else (
        f"ASHA per cell (grace period {spec.scheduler.grace_period}, reduction factor {spec.scheduler.reduction_factor:g}"
        + (f", max {epochs} epochs)" if epochs is not None else ")")
    )  # fmt: skip
    return "\n".join(
        [
            f"Spec {spec.name} ({loaded.path}), hash {spec_hash(spec)}",
            *said["cells"],
            f"Trials: {plan.total_trials}; search: {search}; scheduler: {scheduler}",
            *said["training"],
            f"Resources per trial: {resources.cpus_per_trial:g} CPU, {resources.gpus_per_trial:g} GPU; "
            f"at most {resources.max_concurrent_trials or 'as many as fit'} at once",
            *grouping,
            *cost,
            "",
            *said["details"],
            f"Ray results:    {spec.results}" + (f" (driver state in {spec.state_dir})" if is_uri(spec.storage) else ""),
            f"MLflow:         {spec.tracking_uri} (experiment '{spec.name}')",
            f"Feature cache:  {spec.cache_dir}",
            f"Generated data: {spec.data_dir}",
        ]
    )


def _local_slots(spec: ExperimentSpec) -> int:
    """The trials that run at once on this machine (its CPUs and GPUs)."""
    import torch

    from trainables.devices import default_workers

    return fusion.slots(spec, default_workers(), torch.cuda.device_count())
