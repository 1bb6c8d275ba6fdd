"""`describe SPEC`: what a run would do, without running it."""

from __future__ import annotations


from tabulate import tabulate

from orchestrator import grid
from orchestrator.spec import LoadedSpec, spec_hash


def trainable_parameters(loaded: LoadedSpec) -> dict[str, dict[str, int]]:
    """{setup: {dataset name: trainable parameter count}} on the spec's backbone and each dataset's classes.

    The backbone is built with random weights: the count does not depend on them, and no weights
    need to be present to describe a spec.
    """
    from trainables import clip, data, setups

    spec = loaded.spec
    backbone = clip.load(spec.backbone.model, None, spec.backbone.image_size)
    classnames = {d.name: data.classnames(d, spec.data_dir) for d in spec.datasets}
    return {
        setup: {
            name: setups.count_trainable(setups.build(setup, names, backbone, **spec.setup_options.get(setup, {})))
            for name, names in classnames.items()
        }
        for setup in spec.mlr_setups
    }


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
    counts = trainable_parameters(loaded)
    table = tabulate(
        [[setup, *(f"{n:,}" for n in by_dataset.values())] for setup, by_dataset in counts.items()],
        headers=["setup", *(f"{d.name} params" for d in spec.datasets)],
        colalign=("left", *("right" for _ in spec.datasets)),
    )
    backbone = spec.backbone
    mlr_cells = [cell for cell in plan.cells if cell.family == "mlr"]
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
        mlr = [
            f"Cells: {len(mlr_cells)} = {len(spec.datasets)} datasets x {len(spec.mlr_setups)} setups x "
            f"{len(spec.label_ratios)} label ratios x {len(spec.seeds)} seeds",
        ]
    parameters = [f"Trainable parameters on {backbone.model} at {backbone.image_size} px:", table, ""] if mlr_cells else []
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
            f"Ray results:    {spec.experiment_dir}",
            f"MLflow:         {spec.tracking_uri} (experiment '{spec.name}')",
            f"Feature cache:  {spec.cache_dir}",
            f"Generated data: {spec.data_dir}",
        ]
    )
