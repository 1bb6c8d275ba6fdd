"""`describe SPEC`: what a run would do, without running it."""

from __future__ import annotations

from tabulate import tabulate

from orchestrator.specs import LoadedSpec, grid, is_uri, spec_hash


def per_setup_and_dataset(loaded: LoadedSpec) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], str]:
    """({setup: {dataset: trainable parameters}}, {setup: {dataset: peak bytes of a trial}}, where
    the bytes were measured) on the spec's backbone and each dataset's classes.

    The backbone is built with random weights on this machine's device: neither count depends on
    the weights, and no weights need to be present to describe a spec.
    """
    from trainables import backbones, clip, data, memory, precision, setups

    spec = loaded.spec
    device = clip.resolve_device("auto")
    backbone = backbones.load(spec.backbone.model, None, spec.backbone.image_size, device=str(device))
    chosen, _ = precision.resolve(spec.training.precision, device)
    classnames = {d.name: data.classnames(d, spec.data_dir) for d in spec.datasets}
    params: dict[str, dict[str, int]] = {}
    peaks: dict[str, dict[str, int]] = {}
    for name in spec.mlr_setups:
        params[name], peaks[name] = {}, {}
        for dataset, names in classnames.items():
            setup = setups.build(name, names, backbone, **spec.setup_options.get(name, {}))
            params[name][dataset] = setups.count_trainable(setup)
            peaks[name][dataset] = memory.mlr_trial_bytes(
                setup, backbone, spec.training.batch_size, spec.training.eval_batch_size, chosen
            )
    return params, peaks, f"{device.type}, {chosen}"


def _packing(gpus_per_trial: float, largest_bytes: int) -> list[str]:
    """What a fractional `gpus_per_trial` asks of one GPU, at the largest trial's peak."""
    if not 0 < gpus_per_trial < 1:
        return []
    sharing = int(1 / gpus_per_trial)
    return [
        f"At gpus_per_trial {gpus_per_trial:g}, up to {sharing} trials share a GPU: at most "
        f"{sharing} x {largest_bytes / 2**30:.2f} = {sharing * largest_bytes / 2**30:.1f} GiB of tensors plus {sharing} CUDA contexts"
    ]


def describe(loaded: LoadedSpec) -> str:
    spec = loaded.spec
    plan = grid.Plan.of(spec)
    per_cell = grid.trials_per_cell(spec)
    if spec.search.kind == "optuna":
        search = (
            f"Optuna ({spec.search.sampler}, seed {spec.search.seed}) over "
            f"{', '.join(dict.fromkeys(name for setup in spec.mlr_setups for name in spec.search_space(setup)))}, "
            f"{per_cell} trials per cell, {spec.search.mode} {spec.search.metric}"
        )
    else:
        axes = spec.loss.axes()
        search = f"grid over {', '.join(axes)} ({per_cell} trials per cell)" if axes else "grid (1 trial per cell)"
    scheduler = "none" if spec.scheduler.kind == "none" else (
        f"ASHA per cell (grace period {spec.scheduler.grace_period}, reduction factor {spec.scheduler.reduction_factor:g}, "
        f"max {spec.training.epochs} epochs)"
    )  # fmt: skip
    resources = spec.resources
    mlr_cells = [cell for cell in plan.cells if cell.family == "mlr"]
    table = ""
    if mlr_cells:
        counts, peaks, measured_on = per_setup_and_dataset(loaded)
        table = tabulate(
            [
                [setup, *(f"{n:,}" for n in counts[setup].values()), *(f"{b / 2**30:.2f}" for b in peaks[setup].values())]
                for setup in counts
            ],
            headers=["setup", *(f"{d.name} params" for d in spec.datasets), *(f"{d.name} GiB/trial" for d in spec.datasets)],
            colalign=("left", *("right" for _ in range(2 * len(spec.datasets)))),
        )
    backbone = spec.backbone
    ood_cells = [cell for cell in plan.cells if cell.family == "ood"]
    ood = []
    if ood_cells:
        ood = [
            f"OOD cells: {len(ood_cells)}: LAPT variants {', '.join(spec.ood.variants)} on '{spec.ood.id_dataset.name}' "
            f"against {', '.join(f'{s.name} ({s.group})' for s in spec.ood.ood_sets)}; "
            f"{spec.ood.negatives.count} negative labels, {spec.ood.training.epochs} epochs, 1 trial each",
        ]
    mlr = []
    if mlr_cells:
        axes = {"negation rates": spec.backbone.negation_rates, "pre-training seeds": spec.backbone.pretraining_seeds}
        varying = [f"{name} {', '.join(f'{v:g}' for v in values)}" for name, values in axes.items() if len(values) > 1]
        backbones = f"{len(spec.backbone.configs())} backbones ({'; '.join(varying)}) x " if varying else ""
        mlr = [
            f"Cells: {len(mlr_cells)} = {len(spec.datasets)} datasets x {backbones}{len(spec.mlr_setups)} setups x "
            f"{len(spec.label_ratios)} label ratios x {len(spec.seeds)} seeds",
        ]
    parameters = []
    if mlr_cells:
        parameters = [
            f"Trainable parameters and peak tensor memory of one trial on {backbone.model} at {backbone.image_size} px "
            f"(measured here: {measured_on}; batch {spec.training.batch_size}, eval batch {spec.training.eval_batch_size}; "
            "a GPU process adds its CUDA context):",
            table,
            *_packing(resources.gpus_per_trial, max(b for by_dataset in peaks.values() for b in by_dataset.values())),
            "",
        ]
    return "\n".join(
        [
            f"Spec {spec.name} ({loaded.path}), hash {spec_hash(spec)}",
            *mlr,
            *ood,
            f"Trials: {plan.total_trials}; search: {search}; scheduler: {scheduler}",
            *([f"Training: {spec.training.epochs} epochs, batch {spec.training.batch_size}, features {spec.features.mode}"] if mlr_cells else []),
            f"Resources per trial: {resources.cpus_per_trial:g} CPU, {resources.gpus_per_trial:g} GPU; "
            f"at most {resources.max_concurrent_trials or 'as many as fit'} at once",
            "",
            *parameters,
            f"Ray results:    {spec.results}" + (f" (driver state in {spec.state_dir})" if is_uri(spec.storage) else ""),
            f"MLflow:         {spec.tracking_uri} (experiment '{spec.name}')",
            f"Feature cache:  {spec.cache_dir}",
            f"Generated data: {spec.data_dir}",
        ]
    )
