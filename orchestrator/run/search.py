"""One Ray Tune searcher for every cell of a spec, and ASHA that compares trials of one cell only.

Ray's OptunaSearch refuses grid axes and serves one study, so the grid is expanded here: the
searcher hands out trials round-robin across cells (so every cell runs at once and no cell waits
for another), either each cell's fixed trials (grid) or samples of that cell's own Optuna study.
The studies live in an SQLite database in the driver's state folder, so a resumed driver continues
them, and so does a launch of an edited spec whose cell searches the same space (`study_names`):
only the samples its study still lacks are drawn, and the fixed trials that already finished are
not handed out again.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler
from ray.tune.search import Searcher

from trainables.tasks import task_of

from orchestrator import compat
from orchestrator.family import named
from orchestrator.specs.grid import Cell, Plan

if TYPE_CHECKING:
    from ray.tune.experiment import Trial as RayTrial

_SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
"""The study's trials a cell's `num_samples` counts: those that finished (a failed one is sampled again)."""


def study_names(plan: Plan, optuna_storage: str) -> dict[str, str]:
    """The study of each searched cell: named by the cell for the first search space it had (a
    study made before spaces were recorded is adopted as that one), `<cell key>~<search key>` for
    any other, so that a changed space starts a new study and an unchanged one continues."""
    existing = set(optuna.get_all_study_names(optuna_storage))
    names = {}
    for cell in plan.cells:
        if cell.key in plan.fixed_trials:
            continue
        key = named(cell.family).search_key(plan.spec, cell)
        first = cell.key in existing and optuna.load_study(study_name=cell.key, storage=optuna_storage).user_attrs.get(SEARCH_KEY_ATTR)
        names[cell.key] = cell.key if first in (False, None, key) else f"{cell.key}~{key}"
    return names


def completed(optuna_storage: str, study: str) -> int:
    """How many of a study's trials count towards its cell's `num_samples` (0 for a new study)."""
    if study not in optuna.get_all_study_names(optuna_storage):
        return 0
    return len(optuna.load_study(study_name=study, storage=optuna_storage).get_trials(deepcopy=False, states=COUNTED))


SEARCH_KEY_ATTR = "orchestrator.search_key"
"""A study's user attribute: the search key (`Family.search_key`) of the space it samples."""


def _cell_seed(seed: int, cell: Cell) -> int:
    """A sampler seed per cell: reproducible, and different cells do not sample in lockstep."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{cell.key}".encode()).digest()[:4], "little")


class CellSearcher(Searcher):
    """Serves every cell of `spec` from one Tuner; returns each trial's full Ray config.

    Grid search: each cell's trials as the spec lists them. Optuna: one study per cell (named by
    the cell key) in `optuna_storage` over its family's `search_space` (loss settings and learning
    rates), `num_samples` trials each, told the trial's final
    `search.metric`; the Ray trial id is stored in the Optuna trial's user attributes.
    """

    def __init__(
        self, plan: Plan, optuna_storage: str | None = None, finished: frozenset[str] = frozenset(),
        studies: dict[str, str] | None = None, budgets: dict[str, int] | None = None, fused: list | None = None,
    ):  # fmt: skip
        """`finished`: config hashes of fixed trials an earlier launch finished (not handed out);
        `studies`: the study of each searched cell (`study_names`); `budgets`: the trials each
        searched cell still needs (default: `num_samples`); `fused`: groups of fixed trials
        (`run.fusion.Group`, two members or more), handed out first, each as one Ray trial."""
        spec = plan.spec
        optuna_search = spec.search.kind == "optuna"
        super().__init__(
            metric=spec.search.metric if optuna_search else None,
            mode=spec.search.mode if optuna_search else None,
        )
        if optuna_search and optuna_storage is None:
            raise ValueError("an Optuna search needs a storage URL")
        self._spec = spec
        self._plan = plan
        self._cells = plan.cells
        self._optuna_storage = optuna_storage
        self._handed_out = {cell.key: 0 for cell in self._cells}
        self._groups = [group.as_config() for group in fused or []]
        grouped = {member.config_hash for group in fused or [] for member in group.members}
        self._fixed = {key: [t for t in trials if t.config_hash not in finished | grouped] for key, trials in plan.fixed_trials.items()}
        self._study_names = dict(studies or {})
        self._budgets = {
            cell.key: len(self._fixed[cell.key]) if cell.key in self._fixed else (budgets or {}).get(cell.key, plan.trials_per_cell[cell.key])
            for cell in self._cells
        }
        self._cursor = 0
        self._optuna_trials: dict[str, tuple[str, int]] = {}  # Ray trial id -> (cell key, Optuna number)
        # Fail Optuna trials that no live Ray trial will finish: a crashed driver's, before a restore
        # or a launch of an edited spec (one driver runs an experiment, so they are all orphans).
        self._reconcile = True
        self._studies: dict[str, optuna.Study] = {}

    # -- Searcher API ------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        # The metric and mode come from the spec; Tune's global ones (unset) do not apply.
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._groups:
            return self._groups.pop(0)
        for offset in range(len(self._cells)):
            cell = self._cells[(self._cursor + offset) % len(self._cells)]
            if self._handed_out[cell.key] < self._budgets[cell.key]:
                self._cursor = (self._cursor + offset + 1) % len(self._cells)
                self._handed_out[cell.key] += 1
                if cell.key not in self._fixed:
                    return self._sample(cell, trial_id)
                return self._fixed[cell.key][self._handed_out[cell.key] - 1].as_config()
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._optuna_trials:
            return
        cell_key, number = self._optuna_trials[trial_id]
        study = self._study(cell_key)  # first: after a restore, opening it fails orphans, and this trial is none
        del self._optuna_trials[trial_id]
        value = (result or {}).get(self.metric)
        if error or value is None or not math.isfinite(value):
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            study.tell(number, float(value), skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        compat.resolve_moved_modules()
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))
        self._reconcile = True

    def __getstate__(self) -> dict:
        # Optuna studies hold database connections; they are reopened on first use.
        return {k: v for k, v in self.__dict__.items() if k != "_studies"}

    def __setstate__(self, state: dict) -> None:
        plan = state["_plan"]  # a searcher saved before launches could reuse trials: every trial of the plan
        self.__dict__.update({"_fixed": dict(plan.fixed_trials), "_budgets": dict(plan.trials_per_cell), "_study_names": {}, "_groups": []})
        self.__dict__.update(state)
        self._studies = {}

    # -- Optuna ------------------------------------------------------------------------------

    def _sample(self, cell: Cell, trial_id: str) -> dict:
        family = named(cell.family)
        study = self._study(cell.key)
        optuna_trial = study.ask()
        sampled = {
            name: optuna_trial.suggest_float(name, interval.low, interval.high, log=interval.log)
            for name, interval in family.search_space(self._spec, cell.setup).items()
        }
        trial = family.sampled_trial(self._spec, cell, sampled, optuna_trial.number + 1, study.study_name)
        optuna_trial.set_user_attr("ray_trial_id", trial_id)
        optuna_trial.set_user_attr("trial_key", trial.trial_key)
        self._optuna_trials[trial_id] = (cell.key, optuna_trial.number)
        return trial.as_config()

    def _study(self, cell_key: str) -> optuna.Study:
        if cell_key not in self._studies:
            cell = next(c for c in self._cells if c.key == cell_key)
            name = self._study_names.get(cell_key, cell_key)
            search = self._spec.search
            # A resumed search draws on from where it stopped: seeded as a fresh one, its sampler would
            # repeat the draws of the trials the study already has.
            seed = (_cell_seed(search.seed, cell) + 1_000_003 * self._asked_before(name)) % 2**32
            if search.sampler == "cmaes":
                sampler = optuna.samplers.CmaEsSampler(seed=seed)
            else:
                sampler = _SAMPLERS[search.sampler](seed=seed)
            study = optuna.create_study(
                study_name=name,
                storage=self._optuna_storage,
                sampler=sampler,
                direction="maximize" if search.mode == "max" else "minimize",
                load_if_exists=True,
            )
            if self._optuna_storage is not None and SEARCH_KEY_ATTR not in study.user_attrs:
                study.set_user_attr(SEARCH_KEY_ATTR, named(cell.family).search_key(self._spec, cell))
            if self._reconcile:
                self._fail_orphans(study, cell_key)
            self._studies[cell_key] = study
        return self._studies[cell_key]

    def _asked_before(self, study: str) -> int:
        """How many trials the stored study holds (0 for a new or an in-memory one)."""
        if self._optuna_storage is None or study not in optuna.get_all_study_names(self._optuna_storage):
            return 0
        return len(optuna.load_study(study_name=study, storage=self._optuna_storage).trials)

    def _fail_orphans(self, study: optuna.Study, cell_key: str) -> None:
        """Fail trials asked before a crash whose Ray trial was never saved: nothing will finish them."""
        live = {number for key, number in self._optuna_trials.values() if key == cell_key}
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in live:
                study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)


class CellASHA(FIFOScheduler):
    """ASHA per cell: trials are compared only with trials of the same cell.

    Different setups, datasets and label ratios reach very different scores, so one ASHA over the
    whole grid would stop every trial of the harder cells. This keeps one
    `AsyncHyperBandScheduler` per `cell_key` (on the metric its family ranks by, time
    `training_iteration`, max_t = its trials' epochs) and delegates to it; trials run in FIFO order.
    """

    def __init__(self, grace_period: int, reduction_factor: float, mode: str = "max"):
        super().__init__()
        self._settings = {
            "time_attr": "training_iteration",
            "mode": mode,
            "grace_period": grace_period,
            "reduction_factor": reduction_factor,
        }
        self._by_cell: dict[str, AsyncHyperBandScheduler] = {}

    def _of(self, trial: RayTrial) -> AsyncHyperBandScheduler:
        key = trial.config["cell_key"]
        if key not in self._by_cell:
            # A scheduler pickled by an earlier version holds a metric and max_t of its own: these replace them.
            self._by_cell[key] = AsyncHyperBandScheduler(**{
                **self._settings,
                "metric": task_of(trial.config).metric,
                "max_t": trial.config["trial_config"]["training"]["epochs"],
            })  # fmt: skip
        return self._by_cell[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # the mode is the spec's, each cell's metric its family's

    def on_trial_add(self, tune_controller, trial: RayTrial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: RayTrial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: RayTrial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: RayTrial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: RayTrial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per cell over {len(self._by_cell)} cells: {self._settings}"

