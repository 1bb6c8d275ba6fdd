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
from collections.abc import Iterator
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
    `track.store.TrackingStore`, `report` a `report.aggregate.TableInput`; `config` is a trial config
    of the family's task (`task.config`).
    """

    task: Any
    """Its `trainables.lifecycle.TaskFamily`: name (the runs' `family` tag), trial config, loop and ranking metric."""
    section: str | None = None
    """The spec key of the family's own section (`ood:`), validated by `section_model` (a pydantic
    model), None when a spec has none; None: the family has no such section."""
    section_model: Any = None
    default_sections: dict[str, Any] = {}
    """Spec keys the family owns at the spec's top level, by their pydantic models, that every spec
    holds (at the model's defaults when absent), read as `spec.<key>`: MLR's `loss` and `training`."""

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
        """`describe`'s lines about the family's cells: `cells` (what the grid is), `training`,
        `details`; and `grid`, the names of the settings a grid search runs each value of."""
        return {}

    def epochs(self, spec) -> int | None:
        """The most epochs the family's trials train (ASHA's horizon, as `describe` says); None: not known in advance."""
        return None

    # -- running -------------------------------------------------------------------------------

    def cache_entries(self, plan) -> list:
        """The feature-cache entries (`run.entries.Entry`) the family's trials read, filled before they start."""
        return []

    def decoded_sets(self, plan) -> list:
        """(dataset config, split, image size) of each image set the family's trials read decoded
        (`trainables.features.decoded`), built before they start."""
        return []

    def encode_batch_size(self, spec) -> int:
        """Images a fill encodes at once for the family's entries (its evaluation batch)."""
        return 100

    def settings_lines(self, spec, device) -> list[str]:
        """What `run` prints once the cache is filled: what the family's `auto` settings become on this machine's `device`."""
        return []

    def stream_key(self, config) -> str | None:
        """What defines the data stream a trial of `config` reads: trials with one key see the same
        batches and may train fused in a group (`resources.fuse`, `task.run_group`); None: not fused."""
        return None

    def member_bytes(self, spec) -> tuple[int, int, str] | None:
        """(bytes a fused group of the family's trials holds once, bytes each member adds, where they
        were measured) at the spec's heaviest trial; None: not measured (groups bounded by `max_members` only)."""
        return None

    def group_seconds(self, spec, profile: dict, trials: list) -> tuple[float, list[float]] | None:
        """From a measured `profile` (a JSON object: `benchmarks.gpu_check`'s, `benchmarks.fused`'s):
        the seconds of the shared part of a group of `trials` (`specs.grid.Trial`, one stream; one
        trial: alone) over its training, and each member's; None: the profile does not say."""
        return None

    def profile_notes(self, spec, profile: dict) -> list[str]:
        """Where `profile` was measured and how it differs from the spec's trials, for `describe --profile`."""
        return []

    def open_cached_set(self, dataset, split: str, data_dir):
        """The dataset of one of the family's cache entries."""
        raise NotImplementedError

    def heaviest_trial(self, plan):
        """The trial config `tune-packing` measures (None: the family's trials are not measured)."""
        return None

    def training_steps(self, config) -> tuple[Any, Iterator[int]]:
        """`tune-packing`'s measurement of a `heaviest_trial`: the trial of `config` built, its device
        (a `torch.device`), and its training steps one after another, each yielding the images it trained."""
        raise NotImplementedError(f"the {self.name} family's trials are not measured")

    def trial_label(self, config) -> str:
        """What `tune-packing` calls trials of `config` (`dual_coop trials on coco (RN101 at 448 px, batch 32)`)."""
        return f"{self.name} trials"

    # -- metrics -------------------------------------------------------------------------------

    def ranking_metrics(self) -> tuple[str, ...]:
        """The final metrics a trial can be judged by (which trial is a cell's best, a table cell's
        value, what an Optuna study is told), the default first: `best_<metric>`."""
        return (f"best_{self.task.metric}",)

    def final_metrics(self) -> tuple[str, ...]:
        """The final metrics every trial run of the family has a column for in `table`'s frame (NaN where not logged)."""
        return self.ranking_metrics()

    # -- tracking ------------------------------------------------------------------------------

    def run_tags(self, config) -> dict[str, str]:
        """The key tags (`track.schema.KEY_TAGS`) of a trial's and its cell's runs, but `setup` and
        `backbone`, which are the cell's setup and the config's `backbone` for every family."""
        return {"dataset": config.dataset.name, "label_ratio": f"{config.label_ratio:g}", "seed": str(config.seed)}

    def log_cell(self, store, run_id: str, config) -> None:
        """What a cell's run holds beside its tags, logged when it is made."""

    def epoch_metrics(self, result: dict) -> dict[str, float]:
        """What of one epoch's result a trial run logs at that step (`train_loss` among them)."""
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
    """Every family: the built-in ones in the order of `FAMILY_MODULES` (whichever was imported first),
    then the others in the order they were registered."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)
    return sorted(_registered.values(), key=_builtin_position)


def _builtin_position(family: Family) -> int:
    module = type(family).__module__
    return next((i for i, name in enumerate(FAMILY_MODULES) if module == name or module.startswith(f"{name}.")), len(FAMILY_MODULES))


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
    found = {family.section: family.section_model for family in registered() if family.section is not None}
    return found | {key: model for family in registered() for key, model in family.default_sections.items()}


def defaulted_sections() -> set[str]:
    """The keys of `sections` that every spec holds (`Family.default_sections`)."""
    return {key for family in registered() for key in family.default_sections}


def in_spec(spec) -> list[Family]:
    """The families whose setups `spec` runs."""
    return [family for family in registered() if family.setups_in(spec)]


def ranking_metrics() -> list[str]:
    """Every family's ranking metrics, each family's default first, the families in registry order."""
    return list(dict.fromkeys(metric for family in registered() for metric in family.ranking_metrics()))


def final_metrics() -> list[str]:
    """Every family's final metrics (the columns every trial row of `table`'s frame has), in registry order."""
    return list(dict.fromkeys(metric for family in registered() for metric in family.final_metrics()))


def of_trial(ray_config: dict) -> Family:
    """The family of a trial's Ray config (one made before the second family names none)."""
    from trainables.tasks import task_of

    return named(task_of(ray_config).name)
