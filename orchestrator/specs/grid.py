"""Expand a spec into cells (dataset x setup x label ratio x seed) and the trials of each cell,
once: `Plan.of(spec)` is what `run`, `validate`, `describe` and the searcher read.

A cell is one point of the paper's grid; its trials differ only in the loss setting (a loss grid,
or Optuna's samples). Each task family (`orchestrator.family`) says what its cells and their trials
are. Every trial gets a readable name and a deterministic key, so a restarted driver finds the MLflow
run it already made instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from trainables.config import BackboneConfig

from orchestrator.compat import run_holds, with_family
from orchestrator.family import in_spec, named
from orchestrator.specs.models import ExperimentSpec
from orchestrator.specs.paths import without_paths

MACHINE_FIELDS = ("cache_dir", "data_dir", "device")
"""Trial config fields that say where, not what: left out of the trial key."""


def synthetic_variant(negation_rate: float, pretraining_seed: int) -> str:
    """How a synthetic backbone off the plain recipe is told apart in cell keys and the `backbone`
    tag: `-neg0.05` for its negation rate, `-p1` for its pre-training seed ("" for the plain one)."""
    return f"{f'-neg{negation_rate:g}' if negation_rate else ''}{f'-p{pretraining_seed}' if pretraining_seed else ''}"


@dataclass(frozen=True)
class Cell:
    dataset: Any
    """What the cell's trials learn from, as its family configures it (a config with a `name`)."""
    setup: str
    """A setup of the cell's family (`Family.setups`, or a variant the family names its cells by)."""
    label_ratio: float
    seed: int
    backbone: BackboneConfig
    """The spec's backbone, at this cell's point of its synthetic axes (negation rate, pre-training seed)."""
    family: str
    """The task family (`trainables.tasks.TASKS`) that runs the cell's trials."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(with_family(state))

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
    """The cell's setup: the `setup` tag of its runs."""
    family: str
    study: str | None = None
    """The Optuna study that sampled it (a searched cell's trial)."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(with_family(state))

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.trial_config)

    def as_config(self) -> dict:
        """The Ray Tune config of this trial, as `trainables.trainable.run_trial` receives it."""
        from trainables.tasks import TASKS

        source = TASKS[self.family].source
        return {
            "family": self.family,
            "setup": self.setup,
            "trial_config": self.trial_config,
            "trial_key": self.trial_key,
            "config_hash": self.config_hash,
            "cell_key": self.cell_key,
            "trial_name": self.trial_name,
            **({"study": self.study} if self.study is not None else {}),
            **({"family_source": source} if source is not None else {}),
        }


def cells(spec: ExperimentSpec) -> list[Cell]:
    """Every cell, family by family, in the order of `orchestrator.family.registered`."""
    return [cell for family in in_spec(spec) for cell in family.cells(spec)]


def grid_trials(spec: ExperimentSpec, cell: Cell) -> list[Trial] | None:
    """Every trial of `cell` when they are known in advance (a grid search, a cell of one trial); None when Optuna samples them."""
    return named(cell.family).fixed_trials(spec, cell)


def config_hash(trial_config: dict) -> str:
    """sha256 of what a trial computes: its resolved config without machine-specific paths and
    settings. A trial is this: two launches with a trial of the same hash run it once."""
    what = without_paths({k: v for k, v in trial_config.items() if k not in MACHINE_FIELDS})
    return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def trial_key(trial_name: str, trial_config: dict) -> str:
    """The trial name plus a short hash of what it computes."""
    return f"{trial_name}-{config_hash(trial_config)[:8]}"


@dataclass(frozen=True)
class Plan:
    """A spec resolved once: its cells (each with its task family), how many trials each gets, and
    the trials fixed in advance (a grid search's, a cell of one trial); an Optuna cell's are sampled as it runs."""

    spec: ExperimentSpec
    cells: tuple[Cell, ...]
    trials_per_cell: dict[str, int]
    """By cell key."""
    fixed_trials: dict[str, tuple[Trial, ...]]
    """By cell key, for the cells whose trials do not depend on a search."""

    @classmethod
    def of(cls, spec: ExperimentSpec) -> "Plan":
        every = tuple(cells(spec))
        fixed = {c.key: tuple(trials) for c in every if (trials := grid_trials(spec, c)) is not None}
        per_cell = {c.key: named(c.family).trials_per_cell(spec) for c in every}
        return cls(spec, every, per_cell, fixed)

    @property
    def total_trials(self) -> int:
        return sum(self.trials_per_cell.values())

    def finished(self, runs: list[tuple[str | None, str | None, str | None]]) -> frozenset[str]:
        """The config hashes of the fixed trials that finished runs (cell key, config hash, trial key)
        already hold; a run made before the hash was a tag is matched by its trial key within its cell."""
        by_cell: dict[str | None, list[tuple[str | None, str | None]]] = {}
        for cell, digest, key in runs:
            by_cell.setdefault(cell, []).append((digest, key))
        return frozenset(
            trial.config_hash
            for cell, trials in self.fixed_trials.items()
            for trial in trials
            if any(run_holds(trial.config_hash, digest, key) for digest, key in by_cell.get(cell, []))
        )


@dataclass(frozen=True)
class Membership:
    """Which trials a launched spec has, recorded with its launch run (`plan.json`), so that `table`,
    `status` and the closing of runs see the spec as it now stands, not every trial the experiment
    ever ran: a fixed cell's trials by config hash, a searched cell's by the Optuna study sampling it.

    Runs made before trials carried their config hash are matched by the hash's first 8 digits in
    their trial key, within their cell; their study, before studies were keyed, was the cell's key.
    """

    fixed: dict[str, list[str]]
    """Cell key -> the config hashes of its trials."""
    searched: dict[str, str]
    """Cell key -> the name of its Optuna study."""

    @classmethod
    def of(cls, plan: Plan, studies: dict[str, str]) -> "Membership":
        fixed = {key: [t.config_hash for t in trials] for key, trials in plan.fixed_trials.items()}
        return cls(fixed, {c.key: studies[c.key] for c in plan.cells if c.key not in plan.fixed_trials})

    def contains(self, cell_key: str | None, config_hash: str | None, trial_key: str | None, study: str | None) -> bool:
        if cell_key in self.fixed:
            return any(run_holds(digest, config_hash, trial_key) for digest in self.fixed[cell_key])
        if cell_key in self.searched:
            return (study or cell_key) == self.searched[cell_key]
        return False

    def to_json(self) -> str:
        return json.dumps({"fixed": self.fixed, "searched": self.searched}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Membership":
        loaded = json.loads(text)
        return cls(loaded["fixed"], loaded["searched"])
