"""Task families as plug-ins: what the orchestrator asks of a family (`Family`), and the registry.

A family (multi-label recognition, OOD detection, ...) is a `trainables.lifecycle.TaskFamily` (its
trial config and loop, run by every Ray worker) plus a `Family`: the setup names that put its cells
into a spec, its spec section, its checks, cells and trial configs, what `describe` says of it, the
cache entries its trials read, what its runs are tagged with and log, and its tables. `specs`,
`run`, `track` and `report` ask this registry and never name a family; the families, which use
those floors, live in `orchestrator/families/`.

Adding a family is its `trainables/<family>/` package, one module in `orchestrator/families/` and
one line in `FAMILY_MODULES`; `register` adds one from outside (a test, a notebook). This module imports
nothing of the orchestrator, so that every floor may ask it.
"""

from __future__ import annotations

import importlib
from typing import Any

FAMILY_MODULES = (
    "orchestrator.families.mlr",
    "orchestrator.families.ood",
)
"""The modules of the families that come with the orchestrator, in the order their cells are listed;
each registers its family when imported."""


class Family:
    """What the orchestrator asks of a task family; a family overrides what differs from these defaults.

    The arguments are the orchestrator's own objects: `spec` an `specs.ExperimentSpec`, `loaded` a
    `specs.LoadedSpec`, `cell` and `plan` a `specs.grid.Cell` and `Plan`, `store` a
    `track.store.TrackingStore`, `report` a `report.aggregate.Report`; `config` is a trial config
    of the family's task (`task.config`).
    """

    task: Any
    """Its `trainables.lifecycle.TaskFamily`: name (the runs' `family` tag), trial config, loop and ranking metric."""
    section: str | None = None
    """The spec key of the family's own section (`ood:`), validated by `section_model` (a pydantic
    model); None: the family reads only the spec's common fields."""
    section_model: Any = None

    @property
    def name(self) -> str:
        return self.task.name

    def setups(self) -> list[str]:
        """The setup names that put this family's cells into a spec."""
        raise NotImplementedError

    def setups_in(self, spec) -> list[str]:
        return [name for name in spec.setups if name in self.setups()]

    # -- the spec ------------------------------------------------------------------------------

    def problems(self, spec) -> list[tuple[str, str]]:
        """Cross-field problems of `spec` for this family, `(dotted.field, message)` each."""
        return []

    def data_problems(self, spec) -> list[tuple[str, str]]:
        """Problems with the data the family's cells would read, checked before any work starts."""
        return []

    def cells(self, spec) -> list:
        """The family's cells in `spec` (`specs.grid.Cell`, with this family's name)."""
        raise NotImplementedError

    def trials_per_cell(self, spec) -> int:
        return 1

    def fixed_trials(self, spec, cell) -> list | None:
        """Every trial of `cell` (`specs.grid.Trial`) when they are known in advance; None when a search samples them."""
        raise NotImplementedError

    def search_space(self, spec, setup: str) -> dict:
        """What Optuna searches in a cell of `setup` (`specs.sections.SearchRange` by parameter name)."""
        return {}

    def sampled_trial(self, spec, cell, sampled: dict[str, float], number: int, study: str):
        """Trial `number` of a searched cell, at Optuna's sample."""
        raise NotImplementedError(f"the {self.name} family has no searched cells")

    def search_key(self, spec, cell) -> str:
        """What a searched cell's Optuna study samples over and for: a study with another key is a new one."""
        raise NotImplementedError(f"the {self.name} family has no searched cells")

    def describe(self, loaded, cells: list) -> dict[str, list[str]]:
        """`describe`'s lines about the family's cells: `cells` (what the grid is), `training`, `details`."""
        return {}

    # -- running -------------------------------------------------------------------------------

    def cache_entries(self, plan) -> list:
        """The feature-cache entries (`run.entries.Entry`) the family's trials read, filled before they start."""
        return []

    def decoded_sets(self, plan) -> list:
        """(dataset config, split, image size) of each image set the family's trials read decoded
        (`trainables.features.decoded`), built before they start."""
        return []

    def open_cached_set(self, dataset, split: str, data_dir):
        """The dataset of one of the family's cache entries."""
        raise NotImplementedError

    def heaviest_trial(self, plan):
        """The trial config `tune-packing` measures (None: the family's trials are not measured)."""
        return None

    # -- tracking ------------------------------------------------------------------------------

    def run_tags(self, config) -> dict[str, str]:
        """The key tags (`track.schema.KEY_TAGS`) of a trial's and its cell's runs, but `setup` and
        `backbone`, which are the cell's setup and the config's `backbone` for every family."""
        return {"dataset": config.dataset.name, "label_ratio": f"{config.label_ratio:g}", "seed": str(config.seed)}

    def log_cell(self, store, run_id: str, config) -> None:
        """What a cell's run holds beside its tags, logged when it is made."""

    def epoch_metrics(self, result: dict) -> dict[str, float]:
        """What of one epoch's result a trial run logs at that step."""
        return {k: v for k, v in result.items() if k in ("train_loss", self.task.metric)}

    def log_final(self, store, run_id: str, result: dict) -> None:
        """What a trial run logs when the trial ends (its last result)."""
        best = f"best_{self.task.metric}"
        store.log(run_id, {best: result[best]}, step=int(result["epoch"]))

    # -- tables --------------------------------------------------------------------------------

    def tables(self, report) -> list:
        """The `table` command's tables (`report.aggregate.TablePart`) of the family's trials (`report.trials_of(self.name)`)."""
        return []


_registered: dict[str, Family] = {}
_builtins_loaded = False


def register(family: Family) -> Family:
    """Add a family (its task to `trainables.tasks.TASKS` too), after the built-in ones; returns it."""
    from trainables import tasks

    registered()
    _registered[family.name] = family
    tasks.TASKS[family.name] = family.task
    return family


def unregister(name: str) -> None:
    from trainables import tasks

    _registered.pop(name, None)
    if name not in tasks.SHIPPED:
        tasks.TASKS.pop(name, None)


def registered() -> list[Family]:
    """Every family, the built-in ones first."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)
    return list(_registered.values())


def named(name: str) -> Family:
    """The family of a `family` tag or a cell's or trial's `family`."""
    registered()
    return _registered[name]


def of_setup(setup: str) -> Family | None:
    return next((family for family in registered() if setup in family.setups()), None)


def setup_names() -> list[str]:
    return [name for family in registered() for name in family.setups()]


def sections() -> dict[str, Any]:
    """The spec sections of the families (their pydantic models), by key."""
    return {family.section: family.section_model for family in registered() if family.section is not None}


def in_spec(spec) -> list[Family]:
    """The families whose setups `spec` runs."""
    return [family for family in registered() if family.setups_in(spec)]
