"""Run a spec on Ray Tune: one Tuner for the whole grid, built fresh or restored after a crash.

Running the same command again resumes: finished trials are kept, unfinished (and failed) ones
continue from their last checkpoint, the Optuna studies continue, and MLflow runs are found by key.
Running an edited spec under the same name grows the experiment: only the trials no finished run
holds are run (`Pending`). One driver runs an experiment at a time (`orchestrator.lease`).
`fresh=True` deletes the results folder, the Optuna database and the experiment's MLflow runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from trainables import precision
from trainables.clip import resolve_device
from trainables.errors import UserInputError

from orchestrator import cluster, fill, grid, results_store, tracking
from orchestrator.lease import Lease
from orchestrator.schema import (
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
from orchestrator.spec import ExperimentSpec, LoadedSpec, spec_hash
from orchestrator.trial_errors import HideUserErrorTracebacks, user_error_cause

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


def _trial_name(trial) -> str:
    return trial.config["trial_name"]


def _prepare_environment() -> None:
    """Tune's settings and the loggers' levels, set before Ray starts: progress and errors are
    reported by the orchestrator, so Ray's and MLflow's routine messages are turned down."""
    # Save Tune's experiment state after every step, so a SIGKILLed driver neither reruns finished
    # trials nor restarts running ones from scratch (STACK-NOTES.md: the 10 s default loses both).
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # progress is ours (orchestrator.progress)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Over HTTP, MLflow prints two links for every run it ends; the progress table is the report.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A tracking server that stops answering must not stall Tune for minutes per call (MLflow's
    # default: 7 retries with exponential backoff): the callback notices and keeps the results.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # tune.run's closing messages point at Tuner.restore; the orchestrator says what to run instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    # After Ctrl-C it warns that trials which never started have no results yet.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Database migrations on every new store; Optuna's line per study and per trial.
    for chatty in ("mlflow", "alembic", "optuna"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # A trial that failed on bad input is reported in one line (orchestrator.progress), not a traceback.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(HideUserErrorTracebacks())
    # A notice on every start of a local Ray, not a problem of this run.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Tune's automatic loggers include TensorBoard's, which warns about every non-numeric result
    # (class names); the JSON and CSV ones are added explicitly in _build_tuner.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def prepare_results(spec: ExperimentSpec, digest: str, store: tracking.TrackingStore, fresh: bool) -> tuple[str, bool]:
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
    """The study of each searched cell (`search.study_names`)."""
    budgets: dict[str, int]
    """Samples each searched cell still needs."""
    reused: int
    changed_spaces: list[str]
    """Searched cells whose space changed since their study began: they start a new study."""

    @classmethod
    def of(cls, plan: grid.Plan, store: tracking.TrackingStore) -> "Pending":
        from orchestrator import search

        storage = optuna_storage(plan.spec)
        studies = search.study_names(plan, storage) if len(plan.fixed_trials) < len(plan.cells) else {}
        finished = plan.finished(store.finished_trials())
        budgets = {cell: max(plan.trials_per_cell[cell] - search.completed(storage, study), 0) for cell, study in studies.items()}
        reused = len(finished) + sum(plan.trials_per_cell[cell] - budget for cell, budget in budgets.items())
        existing = set(optuna.get_all_study_names(storage)) if studies else set()
        changed = [cell for cell, study in studies.items() if study != cell and study not in existing]
        return cls(finished, studies, budgets, reused, changed)


def _start_ray(address: str | None) -> bool:
    """Start local Ray, or join the cluster at `address`; return whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(
            # "local" starts a Ray of this run's own: without it Ray joins whatever cluster
            # `ray start` last left on this machine (and fails if that one has died).
            address=address or "local",
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,  # trial output goes to each trial's folder (RunConfig.log_to_file)
        )
    except ConnectionError as error:
        hint = ""
        if "RAY_AUTH_MODE" not in os.environ and _ray_token_present():
            # Ray sends its token to `auto` only, never to an explicit address, unless told to.
            hint = " (if the cluster uses token authentication, set RAY_AUTH_MODE=token)"
        raise UserInputError(f"cannot join the Ray cluster at {address}: {error}{hint}") from None
    return True


@contextmanager
def joined_ray(address: str) -> Iterator[None]:
    """Ray joined at `address` for the block (a cluster's `cache` fill), left afterwards."""
    _prepare_environment()
    started = _start_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _deliver(spec: ExperimentSpec, digest: str) -> None:
    delivered = tracking.deliver_undelivered(spec.tracking_uri, spec.name, digest, spec.state_dir, spec.results)
    if delivered:
        print(f"Delivered to MLflow the results of {delivered} trial(s) it had missed", flush=True)


def _ray_token_present() -> bool:
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH", str(Path.home() / ".ray" / "auth_token"))
    return "RAY_AUTH_TOKEN" in os.environ or Path(token_path).is_file()


def _keep_resources_busy(spec: ExperimentSpec) -> None:
    """Let Tune queue as many trials as the cluster can run at once.

    With a custom searcher Tune queues one pending trial at a time unless a concurrency limit is
    set, so the first trials would start one after another instead of filling every CPU and GPU.
    """
    fits = cluster.trials_that_fit(spec.resources)  # refuses resources no node has, before any scheduling
    if spec.resources.max_concurrent_trials is None:  # else Tune's ConcurrencyLimiter sets the queue length
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(fits)


def _build_tuner(plan: grid.Plan, digest: str, location: str, resume: bool, pending: Pending):
    """A new Tuner at `location`, or the one saved there (`resume`), whose callbacks were pickled with it."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from trainables.trainable import run_trial

    from orchestrator.progress import ProgressTable
    from orchestrator.search import CellASHA, CellSearcher

    spec = plan.spec
    trainable = tune.with_resources(
        run_trial, {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    )
    if resume:
        return tune.Tuner.restore(location, trainable, resume_unfinished=True, resume_errored=True, param_space={})
    scheduler = None
    if spec.scheduler.kind == "asha":
        scheduler = CellASHA(
            max_t=spec.training.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    searcher = CellSearcher(
        plan, optuna_storage(spec) if spec.search.kind == "optuna" else None, pending.finished, pending.studies, pending.budgets
    )
    storage_path, name = location.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=-1,  # the searcher says when every cell is done
            max_concurrent_trials=spec.resources.max_concurrent_trials,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[
                tracking.MlflowCallback(spec.tracking_uri, spec.name, digest, spec.state_dir, location),
                ProgressTable(reused=pending.reused),
                JsonLoggerCallback(),
                CSVLoggerCallback(),
            ],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            log_to_file=True,
            verbose=0,
        ),
    )


def finalize(
    store: tracking.TrackingStore, plan: grid.Plan, stopped: bool, membership: grid.Membership | None = None,
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


def _close(store: tracking.TrackingStore, run, done: bool, unfinished: str) -> None:
    if done and run.info.status != "FINISHED":
        store.end(run.info.run_id, "FINISHED")
    elif not done and run.info.status == "RUNNING":
        store.end(run.info.run_id, unfinished)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_experiment(loaded: LoadedSpec, address: str | None = None, fresh: bool = False) -> int:
    """Run (or resume) every trial of the spec; return the exit code (0 done, 1 failed trials, 130 interrupted)."""
    spec = loaded.spec
    plan = grid.Plan.of(spec)
    tracking.check_reachable(spec.tracking_uri)
    _prepare_environment()
    # One driver per experiment: a second launch is refused here, having written nothing.
    with Lease(spec.storage, spec.name, spec.name):
        return _run(loaded, plan, address, fresh)


def _run(loaded: LoadedSpec, plan: grid.Plan, address: str | None, fresh: bool) -> int:
    spec = loaded.spec
    digest = spec_hash(spec)
    store = tracking.TrackingStore(spec.tracking_uri, spec.name)
    location, resume = prepare_results(spec, digest, store, fresh)
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    results_store.write_metadata(
        spec.results, {"spec_hash": digest, "tracking_uri": spec.tracking_uri, "spec_path": str(loaded.path)}
    )
    leftovers = store.close_running("FAILED")  # runs a crashed driver left RUNNING (no other driver runs)
    pending = Pending.of(plan, store)
    membership = grid.Membership.of(plan, pending.studies)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    store.launch_run(digest, spec_yaml, loaded.path, tracking.git_commit(), membership)

    reused = f" ({pending.reused} reused, {plan.total_trials - pending.reused} to run)" if pending.reused and not resume else ""
    print(
        f"{'Resuming' if resume else 'Starting'} '{spec.name}': {plan.total_trials} trials in "
        f"{len(plan.cells)} cells{reused}; results in {location}; MLflow at {spec.tracking_uri}"
        + (f" ({leftovers} runs a crash left RUNNING marked FAILED until resumed)" if leftovers else ""),
        flush=True,
    )
    for cell in pending.changed_spaces:
        print(f"Cell {cell} searches another space than its Optuna study did: a new study, "
              f"{pending.studies[cell]} (the earlier one stays in {optuna_storage(spec)})", flush=True)  # fmt: skip
    if address is None:
        # Locally the driver has the trials' devices, so it encodes once, with a progress bar, while
        # nothing else runs; on a cluster the GPU nodes do (below).
        fill.fill_locally(plan)
        print(precision.resolve(spec.training.precision, resolve_device("auto"))[1].capitalize(), flush=True)
    started_ray = _start_ray(address)
    results, stopped = None, False
    # A batch system's SIGTERM ends the launch like a second Ctrl-C: runs closed, state kept.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        _keep_resources_busy(spec)
        if address is not None:
            cluster.check_shared_storage(spec.results)
            fill.fill_on_cluster(plan)
        _deliver(spec, digest)  # what an earlier launch could not log (the server is up: checked above)
        results = _build_tuner(plan, digest, location, resume, pending).fit()
        if tracking.Undelivered(spec.state_dir).trials():
            tracking.check_reachable(spec.tracking_uri)  # still down: the results wait (below)
            _deliver(spec, digest)
    except KeyboardInterrupt:
        stopped = True  # a second Ctrl-C; the first makes Tune stop its trials and return
    except UserInputError as error:
        waiting = tracking.Undelivered(spec.state_dir).trials()
        if not waiting:
            store.close_running("FAILED")
            raise
        # Tune has finished; only MLflow is missing results. Nothing is lost: Ray's results hold them.
        print(
            f"{error}\nThe results of {len(waiting)} trial(s) wait in {location}; run the same command "
            "again once the server answers to deliver them (finished trials are not rerun).",
            file=sys.stderr,
        )
        return EXIT_FAILED_TRIALS
    except BaseException:
        store.close_running("FAILED")
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    outcome = finalize(store, plan, stopped, membership, digest)
    user_errors = sorted({str(cause) for cause in map(user_error_cause, results.errors if results else []) if cause})
    if user_errors:
        raise UserInputError("\n".join(user_errors))  # the runs are closed; fix the input and rerun
    _report(spec, outcome)
    return outcome.exit_code


def _report(spec: ExperimentSpec, outcome: Outcome) -> None:
    if outcome.interrupted:
        print(
            f"Stopped with {outcome.finished} of {outcome.expected} trials finished; "
            "run the same command again to resume."
        )
    elif outcome.failed:
        print(
            f"{outcome.failed} of {outcome.expected} trials failed (errors in each trial's folder under "
            f"{spec.results}); run the same command again to retry them from their last checkpoint."
        )
    else:
        print(f"All {outcome.expected} trials finished. Browse them with: python -m orchestrator ui")

