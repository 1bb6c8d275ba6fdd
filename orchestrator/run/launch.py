"""A launch's bookkeeping around Tune: where its results go and whether it resumes them
(`prepare_results`), what it still runs of the plan (`Pending`), and what it closes and reports
when Tune returns (`finalize`, `Outcome`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import optuna

from trainables.errors import UserInputError

from orchestrator.specs import ExperimentSpec, grid
from orchestrator.track import results_store
from orchestrator.track.schema import (
    CELL_KEY_TAG,
    CELL_ROLE,
    CONFIG_HASH_TAG,
    LAUNCH_ROLE,
    SPEC_HASH_TAG,
    STUDY_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    role_filter,
)
from orchestrator.track.store import TrackingStore

EXIT_OK, EXIT_FAILED_TRIALS, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class Outcome:
    expected: int
    finished: int
    failed: int
    interrupted: bool

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED_TRIALS if self.failed else EXIT_OK


def optuna_storage(spec: ExperimentSpec) -> str:
    return f"sqlite:///{spec.state_dir / 'optuna.db'}"


def prepare_results(spec: ExperimentSpec, digest: str, store: TrackingStore, fresh: bool) -> tuple[str, bool]:
    """Where this spec's Tune experiment keeps its results, and whether to resume it there.

    Every spec an experiment is launched with (edited, its grid grown) has a Tune experiment of its
    own, `<storage>/<name>/<spec hash>`, resumed by the next launch of that spec; the trials other
    launches finished are not run again (`Pending`). An experiment begun before that kept Tune's
    state in `<storage>/<name>` itself, where a launch of its spec resumes it. `--fresh` deletes
    the experiment's results, driver state and MLflow runs first.
    """
    if fresh:
        _start_over(spec)
        store.delete_all()
    metadata = results_store.read_metadata(spec.results)
    if metadata.get("tracking_uri", spec.tracking_uri) != spec.tracking_uri:
        raise UserInputError(
            f"{spec.results} was logged to MLflow at {metadata.get('tracking_uri')}; resume with "
            f"--tracking-uri {metadata.get('tracking_uri')} or pass --fresh"
        )
    if metadata.get("spec_hash") == digest and results_store.has_tune_state(spec.results):
        return spec.results, True
    location = f"{spec.results}/{digest}"
    if results_store.has_tune_state(location):
        return location, True
    results_store.delete(location)  # a launch killed before Tune's first save leaves nothing to resume
    return location, False


def _start_over(spec: ExperimentSpec) -> None:
    results_store.delete(spec.results)
    shutil.rmtree(spec.state_dir, ignore_errors=True)


@dataclass(frozen=True)
class Pending:
    """What a launch runs of its plan: the fixed trials no finished run holds, and the samples each
    searched cell's study still lacks; the rest other launches finished (`reused`)."""

    finished: frozenset[str]
    """Config hashes of the fixed trials that finished runs hold."""
    studies: dict[str, str]
    """The study of each searched cell (`run.search.study_names`)."""
    budgets: dict[str, int]
    """Samples each searched cell still needs."""
    reused: int
    changed_spaces: list[str]
    """Searched cells whose space changed since their study began: they start a new study."""

    @classmethod
    def of(cls, plan: grid.Plan, store: TrackingStore) -> "Pending":
        from orchestrator.run import search

        storage = optuna_storage(plan.spec)
        studies = search.study_names(plan, storage) if len(plan.fixed_trials) < len(plan.cells) else {}
        finished = plan.finished(store.finished_trials())
        budgets = {cell: max(plan.trials_per_cell[cell] - search.completed(storage, study), 0) for cell, study in studies.items()}
        reused = len(finished) + sum(plan.trials_per_cell[cell] - budget for cell, budget in budgets.items())
        existing = set(optuna.get_all_study_names(storage)) if studies else set()
        changed = [cell for cell, study in studies.items() if study != cell and study not in existing]
        return cls(finished, studies, budgets, reused, changed)


def finalize(
    store: TrackingStore, plan: grid.Plan, stopped: bool, membership: grid.Membership | None = None,
    digest: str | None = None,
) -> Outcome:  # fmt: skip
    """Close the runs of this launch once Tune has returned (`stopped`: by a KeyboardInterrupt).

    The MLflow runs say what happened: Tune returns normally after Ctrl-C, with the trials it
    stopped still RUNNING here (only Tune's own completion marks a run FINISHED, its error FAILED)
    and the trials it never started missing. Those make the launch interrupted: RUNNING trials
    become KILLED (FAILED if nothing interrupted the launch). A cell is FINISHED once all its
    trials are (those other launches finished count), the launch run once every cell is. Only the
    trials of this spec count (`membership`; None: every trial run), and only the cell and launch
    runs of its hash (`digest`; None: all) are closed. Every cell run is looked at, not only
    RUNNING ones: a cell whose trials all finished before a crash was marked FAILED by the next
    launch, and no trial start revives it.
    """
    trials = [
        run for run in store.runs(role_filter(TRIAL_ROLE))
        if membership is None
        or membership.contains(*(run.data.tags.get(tag) for tag in (CELL_KEY_TAG, CONFIG_HASH_TAG, TRIAL_KEY_TAG, STUDY_TAG)))
    ]  # fmt: skip
    interrupted = stopped or len(trials) < plan.total_trials or any(r.info.status == "RUNNING" for r in trials)
    unfinished = "KILLED" if interrupted else "FAILED"
    finished_per_cell: dict[str, int] = {}
    failed = 0
    for run in trials:
        status = run.info.status
        if status == "RUNNING":
            store.end(run.info.run_id, unfinished)
            status = unfinished
        if status == "FINISHED":
            key = run.data.tags[CELL_KEY_TAG]
            finished_per_cell[key] = finished_per_cell.get(key, 0) + 1
        elif status == "FAILED":
            failed += 1
    per_cell = plan.trials_per_cell
    complete = {key for key, n in finished_per_cell.items() if n >= per_cell.get(key, 1)}
    this_spec = f" and tags.`{SPEC_HASH_TAG}` = '{digest}'" if digest is not None else ""
    for run in store.runs(role_filter(CELL_ROLE) + this_spec):
        _close(store, run, done=run.data.tags[CELL_KEY_TAG] in complete, unfinished=unfinished)
    for run in store.runs(role_filter(LAUNCH_ROLE) + this_spec):
        _close(store, run, done=len(complete) == len(per_cell), unfinished=unfinished)
    finished = sum(min(n, per_cell.get(key, 1)) for key, n in finished_per_cell.items())
    return Outcome(expected=plan.total_trials, finished=finished, failed=failed, interrupted=interrupted)


def _close(store: TrackingStore, run, done: bool, unfinished: str) -> None:
    if done and run.info.status != "FINISHED":
        store.end(run.info.run_id, "FINISHED")
    elif not done and run.info.status == "RUNNING":
        store.end(run.info.run_id, unfinished)
