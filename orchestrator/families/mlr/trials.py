"""The MLR family's cells (dataset x backbone x setup x label ratio x seed) and the trials of each:
the loss grid's points, or Optuna's samples of the loss settings and learning rates."""

from __future__ import annotations

import hashlib
import itertools
import json

from trainables import mlr
from trainables.mlr.config import TrialConfig

from orchestrator.families.mlr.sections import LR_PARAM_PREFIX
from orchestrator.specs import ExperimentSpec
from orchestrator.specs.grid import Cell, Trial, config_hash, trial_key
from orchestrator.specs.sections import SearchRange

FAMILY = mlr.TASK.name
"""The family of the cells and trials made here."""


def cells(spec: ExperimentSpec, setups: list[str]) -> list[Cell]:
    """Datasets outermost, then backbones (the points of the synthetic axes), setups, ratios, seeds innermost."""
    return [
        Cell(dataset, setup, ratio, seed, backbone, family=FAMILY)
        for dataset, backbone, setup, ratio, seed in itertools.product(
            spec.datasets, spec.backbone.configs(), setups, spec.label_ratios, spec.seeds
        )
    ]


def loss_grid(spec: ExperimentSpec) -> list[dict]:
    """The complete loss settings of a grid search: the product of the list axes over the fixed values."""
    fixed, axes = spec.loss.fixed(), spec.loss.axes()
    return [{**fixed, **dict(zip(axes, values))} for values in itertools.product(*axes.values())]


def trials_per_cell(spec: ExperimentSpec) -> int:
    if spec.search.kind == "optuna":
        return spec.search.num_samples
    return len(loss_grid(spec))


def search_space(spec: ExperimentSpec, setup: str) -> dict[str, SearchRange]:
    """What Optuna searches in `setup`'s cells, by parameter name: the loss ranges (`gamma_neg`)
    and the ranges of the setup's own learning-rate groups (`lr.prompt`) that `lr_per_setup`
    does not fix for it."""
    from trainables.mlr import setups

    fixed_here = spec.lr_per_setup.get(setup, {})
    lr = {
        f"{LR_PARAM_PREFIX}{group}": interval
        for group, interval in spec.training.lr_ranges().items()
        if group in setups.lr_groups(setup) and group not in fixed_here
    }
    return {**spec.loss.ranges(), **lr}


def learning_rates(spec: ExperimentSpec, setup: str, sampled: dict[str, float] | None = None) -> dict[str, float]:
    """The learning rate of each of `setup`'s groups: `lr_per_setup`, else the value Optuna
    sampled (`{"lr.prompt": 0.01}`), else `training.lr`."""
    from trainables.mlr import setups

    sampled, own = sampled or {}, spec.lr_per_setup.get(setup, {})
    rates = {}
    for group in setups.lr_groups(setup):
        value = own.get(group, spec.training.lr.get(group))
        if isinstance(value, SearchRange):
            value = sampled[f"{LR_PARAM_PREFIX}{group}"]
        if value is not None:  # a missing group is reported by validation
            rates[group] = value
    return rates


def resolve(spec: ExperimentSpec, cell: Cell, loss: dict, sampled: dict[str, float] | None = None) -> TrialConfig:
    """The validated config of one trial of `cell`: the loss setting `loss` (a grid point, or the
    fixed values) completed by Optuna's sample (`{"gamma_neg": 2.1, "lr.prompt": 0.01}`; none in a grid
    search), whose learning-rate entries go to the setup's groups."""
    sampled = sampled or {}
    loss = {**loss, **{name: value for name, value in sampled.items() if name in spec.loss.ranges()}}
    return TrialConfig(
        setup=cell.setup,
        setup_options=spec.setup_options.get(cell.setup, {}),
        dataset=cell.dataset,
        backbone=cell.backbone,
        features=spec.features,
        training=spec.training.config(learning_rates(spec, cell.setup, sampled)),
        loss=loss,
        label_ratio=cell.label_ratio,
        seed=cell.seed,
        cache_dir=spec.cache_dir,
        data_dir=spec.data_dir,
        gpu_share=spec.resources.gpu_share,
        cpus=spec.resources.cpus_per_trial,
        device=spec.resources.device,
    )


def make_trial(
    spec: ExperimentSpec, cell: Cell, loss: dict, number: int, sampled: dict[str, float] | None = None, study: str | None = None
) -> Trial:
    """Trial `number` (1-based) of `cell` (arguments as `resolve`'s; `study`: the Optuna study that
    sampled it); the name gets `-t<number>` when the cell has several trials."""
    config = resolve(spec, cell, loss, sampled).model_dump(mode="json")
    name = cell.key if trials_per_cell(spec) == 1 else f"{cell.key}-t{number}"
    return Trial(cell.key, name, trial_key(name, config), config, cell.setup, family=FAMILY, study=study)


def grid_trials(spec: ExperimentSpec, cell: Cell) -> list[Trial]:
    """Every trial of `cell` in a grid search, in loss-grid order."""
    return [make_trial(spec, cell, loss, number) for number, loss in enumerate(loss_grid(spec), start=1)]


def search_key(spec: ExperimentSpec, cell: Cell) -> str:
    """What an Optuna study of `cell` samples over and for: its search space, the metric and
    direction, and the trial config its samples complete (each range at its lower end). A launch
    with the same key continues the cell's study; another key starts a new one."""
    space = search_space(spec, cell.setup)
    template = resolve(spec, cell, spec.loss.fixed(), {name: interval.low for name, interval in space.items()})
    what = {
        "space": {name: interval.model_dump() for name, interval in sorted(space.items())},
        "metric": [spec.search.metric, spec.search.mode],
        "trial": config_hash(template.model_dump(mode="json")),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
