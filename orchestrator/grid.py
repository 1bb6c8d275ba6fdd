"""Expand a spec into cells (dataset x setup x label ratio x seed) and the trials of each cell,
once: `Plan.of(spec)` is what `run`, `validate`, `describe` and the searcher read.

A cell is one point of the paper's grid; its trials differ only in the loss setting (a loss grid,
or Optuna's samples). The OOD family's cells (`orchestrator.ood_spec`) are (LAPT variant x ID set x
label ratio x seed), one trial each. Every trial gets a readable name and a deterministic key, so a restarted
driver finds the MLflow run it already made instead of making a second one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from trainables.config import BackboneConfig, DatasetConfig, TrialConfig
from trainables.ood.config import IDDatasetConfig

from orchestrator.ood_spec import UNTUNED, variant_config
from orchestrator.schema import synthetic_variant
from orchestrator.spec import ExperimentSpec, without_paths

MACHINE_FIELDS = ("cache_dir", "data_dir", "device")
"""Trial config fields that say where, not what: left out of the trial key."""


@dataclass(frozen=True)
class Cell:
    dataset: DatasetConfig | IDDatasetConfig
    setup: str
    """An MLR setup, or a LAPT variant (`lapt`, `neglabel`, ...) in the OOD family."""
    label_ratio: float
    seed: int
    backbone: BackboneConfig
    """The spec's backbone, at this cell's point of its synthetic axes (negation rate, pre-training seed)."""
    family: str = "mlr"
    """The task family (`trainables.tasks.FAMILIES`) that runs the cell's trials."""

    @property
    def key(self) -> str:
        """`dual_coop-coco-r0.3-s1`: the readable name of the cell, unique within a spec; a synthetic
        backbone off the plain recipe adds its negation rate and pre-training seed (`-neg0.05-p1`)."""
        variant = synthetic_variant(self.backbone.synthetic_negation_rate, self.backbone.synthetic_seed)
        return f"{self.setup}-{self.dataset.name}{variant}-r{self.label_ratio:g}-s{self.seed}"


@dataclass(frozen=True)
class Trial:
    cell_key: str
    trial_name: str
    trial_key: str
    trial_config: dict
    """The resolved config of the family (`TrialConfig`, `OODTrialConfig`), JSON-able (what the trainable validates and runs)."""
    setup: str
    """The cell's setup (an MLR setup or a LAPT variant): the `setup` tag of its runs."""
    family: str = "mlr"

    def as_config(self) -> dict:
        """The Ray Tune config of this trial, as `trainables.trainable.run_trial` receives it."""
        return {
            "family": self.family,
            "setup": self.setup,
            "trial_config": self.trial_config,
            "trial_key": self.trial_key,
            "cell_key": self.cell_key,
            "trial_name": self.trial_name,
        }


def cells(spec: ExperimentSpec) -> list[Cell]:
    """Every cell: the MLR ones (datasets outermost, then backbones, seeds innermost), then the OOD
    family's (an untuned variant once, at ratio 1 and the first seed: it learns nothing that either
    changes; validation allows it one backbone)."""
    backbones = spec.backbone.configs()
    mlr = [
        Cell(dataset, setup, ratio, seed, backbone)
        for dataset, backbone, setup, ratio, seed in itertools.product(
            spec.datasets, backbones, spec.mlr_setups, spec.label_ratios, spec.seeds
        )
    ]
    if not spec.runs_ood or spec.ood is None:
        return mlr
    ood = []
    for variant in spec.ood.variants:
        grid = [(1.0, spec.seeds[0])] if variant in UNTUNED else itertools.product(spec.ood.label_ratios, spec.seeds)
        ood += [Cell(spec.ood.id_dataset, variant, ratio, seed, backbones[0], family="ood") for ratio, seed in grid]
    return mlr + ood


def loss_grid(spec: ExperimentSpec) -> list[dict]:
    """The complete loss settings of a grid search: the product of the list axes over the fixed values."""
    fixed, axes = spec.loss.fixed(), spec.loss.axes()
    return [{**fixed, **dict(zip(axes, values))} for values in itertools.product(*axes.values())]


def trials_per_cell(spec: ExperimentSpec, cell: Cell | None = None) -> int:
    """Trials of an MLR cell (of `cell`, when given: an OOD cell has one)."""
    if cell is not None and cell.family == "ood":
        return 1
    if spec.search.kind == "optuna":
        return spec.search.num_samples
    return len(loss_grid(spec))


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
        training=spec.training.config(spec.learning_rates(cell.setup, sampled)),
        loss=loss,
        label_ratio=cell.label_ratio,
        seed=cell.seed,
        cache_dir=spec.cache_dir,
        data_dir=spec.data_dir,
    )


def trial_key(trial_name: str, trial_config: dict) -> str:
    """The trial name plus a short hash of what it computes (machine-specific paths left out)."""
    what = without_paths({k: v for k, v in trial_config.items() if k not in MACHINE_FIELDS})
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{trial_name}-{digest[:8]}"


def make_trial(spec: ExperimentSpec, cell: Cell, loss: dict, number: int, sampled: dict[str, float] | None = None) -> Trial:
    """Trial `number` (1-based) of `cell` (arguments as `resolve`'s); the name gets `-t<number>`
    when the cell has several trials."""
    config = resolve(spec, cell, loss, sampled).model_dump(mode="json")
    name = cell.key if trials_per_cell(spec) == 1 else f"{cell.key}-t{number}"
    return Trial(cell_key=cell.key, trial_name=name, trial_key=trial_key(name, config), trial_config=config, setup=cell.setup)


def grid_trials(spec: ExperimentSpec, cell: Cell) -> list[Trial]:
    """Every trial of `cell` in a grid search, in loss-grid order; an OOD cell's one trial."""
    if cell.family == "ood":
        config = variant_config(
            spec.ood, cell.setup, cell.backbone, cell.label_ratio, cell.seed, spec.cache_dir, spec.data_dir
        ).model_dump(mode="json")
        return [Trial(cell.key, cell.key, trial_key(cell.key, config), config, cell.setup, family="ood")]
    return [make_trial(spec, cell, loss, number) for number, loss in enumerate(loss_grid(spec), start=1)]


@dataclass(frozen=True)
class Plan:
    """A spec resolved once: its cells (each with its task family), how many trials each gets, and
    the trials fixed in advance (a grid search's, an OOD cell's); an Optuna cell's are sampled as it runs."""

    spec: ExperimentSpec
    cells: tuple[Cell, ...]
    trials_per_cell: dict[str, int]
    """By cell key."""
    fixed_trials: dict[str, tuple[Trial, ...]]
    """By cell key, for the cells whose trials do not depend on a search."""

    @classmethod
    def of(cls, spec: ExperimentSpec) -> "Plan":
        every = tuple(cells(spec))
        fixed = {c.key: tuple(grid_trials(spec, c)) for c in every if c.family == "ood" or spec.search.kind == "grid"}
        return cls(spec, every, {c.key: trials_per_cell(spec, c) for c in every}, fixed)

    @property
    def total_trials(self) -> int:
        return sum(self.trials_per_cell.values())
