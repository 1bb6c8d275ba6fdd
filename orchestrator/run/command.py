"""Run a spec on Ray Tune: one Tuner for the whole grid, built fresh or restored after a crash.

Running the same command again resumes: finished trials are kept, unfinished (and failed) ones
continue from their last checkpoint, the Optuna studies continue, and MLflow runs are found by key.
Running an edited spec under the same name grows the experiment: only the trials no finished run
holds are run (`Pending`). One driver runs an experiment at a time (`orchestrator.run.lease`).
`fresh=True` deletes the results folder, the Optuna database and the experiment's MLflow runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import yaml

from trainables.errors import UserInputError

from orchestrator import compat, interrupt
from orchestrator.family import in_spec
from orchestrator.run import cluster, fill, fill_cluster, fusion
from orchestrator.run.launch import (
    EXIT_FAILED_TRIALS,
    Outcome,
    Pending,
    finalize,
    optuna_storage,
    prepare_results,
)
from orchestrator.run.lease import Lease
from orchestrator.run.ray_session import (
    keep_resources_busy,
    prepare_environment,
    start_ray,
)
from orchestrator.specs import ExperimentSpec, LoadedSpec, grid, spec_hash
from orchestrator.track import results_store
from orchestrator.track.callback import MlflowCallback
from orchestrator.track.outage import Undelivered
from orchestrator.track.replay import deliver_undelivered
from orchestrator.track.store import TrackingStore, check_reachable, git_commit
from orchestrator.track.trial_errors import user_error_cause


def _trial_name(trial) -> str:
    return trial.config["trial_name"]


def _deliver(spec: ExperimentSpec, digest: str) -> None:
    delivered = deliver_undelivered(spec.tracking_uri, spec.name, digest, spec.state_dir, spec.results)
    if delivered:
        print(f"Delivered to MLflow the results of {delivered} trial(s) it had missed", flush=True)


def _fused_groups(plan: grid.Plan, pending: Pending, on_cluster: bool) -> list[fusion.Group]:
    """The groups of two trials or more that a new Tuner hands out (`run.fusion`), said in a line or two."""
    import ray

    spec = plan.spec
    if not fusion.fusing(spec) or not plan.fixed_trials:
        return []
    total = ray.cluster_resources()
    slot_count = fusion.slots(spec, total.get("CPU", 1.0), total.get("GPU", 0.0))
    size = fusion.sizing(spec, slot_count, lambda: fusion.capacity(spec, on_cluster, slot_count))
    found = fusion.groups(plan, pending.finished, size)
    for line in fusion.summary(spec, found, size):
        print(line, flush=True)
    return [group for group in found if len(group.members) > 1]


def _build_tuner(plan: grid.Plan, digest: str, location: str, resume: bool, pending: Pending, on_cluster: bool):
    """A new Tuner at `location`, or the one saved there (`resume`), whose callbacks were pickled with it."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from trainables.trainable import run_trial

    from orchestrator.run.progress import ProgressTable
    from orchestrator.run.search import CellASHA, CellSearcher

    spec = plan.spec
    trainable = tune.with_resources(
        run_trial, {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    )
    if resume:
        compat.resolve_moved_modules()  # Tune unpickles what it saved, perhaps under the flat layout's names
        return tune.Tuner.restore(location, trainable, resume_unfinished=True, resume_errored=True, param_space={})
    scheduler = None
    if spec.scheduler.kind == "asha":
        scheduler = CellASHA(grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)
    searcher = CellSearcher(
        plan, optuna_storage(spec) if spec.search.kind == "optuna" else None, pending.finished, pending.studies, pending.budgets,
        _fused_groups(plan, pending, on_cluster),
    )  # fmt: skip
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
                MlflowCallback(spec.tracking_uri, spec.name, digest, spec.state_dir, location),
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


def run_experiment(loaded: LoadedSpec, address: str | None = None, fresh: bool = False) -> int:
    """Run (or resume) every trial of the spec; return the exit code (0 done, 1 failed trials, 130 interrupted)."""
    spec = loaded.spec
    plan = grid.Plan.of(spec)
    check_reachable(spec.tracking_uri)
    prepare_environment()
    # One driver per experiment: a second launch is refused here, having written nothing.
    with Lease(spec.storage, spec.name, spec.name):
        return _run(loaded, plan, address, fresh)


@dataclass(frozen=True)
class _Launch:
    """A launch made ready: where its results go, whether it resumes, what it still runs, its runs."""

    store: TrackingStore
    digest: str
    location: str
    resume: bool
    pending: Pending
    membership: grid.Membership


def _prepare(loaded: LoadedSpec, plan: grid.Plan, fresh: bool) -> _Launch:
    """The results' place and metadata, runs a crash left RUNNING closed, what is still pending, the launch run."""
    spec = loaded.spec
    digest = spec_hash(spec)
    store = TrackingStore(spec.tracking_uri, spec.name)
    location, resume = prepare_results(spec, digest, store, fresh)
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    results_store.write_metadata(
        spec.results, {"spec_hash": digest, "tracking_uri": spec.tracking_uri, "spec_path": str(loaded.path)}
    )
    leftovers = store.close_running("FAILED")  # runs a crashed driver left RUNNING (no other driver runs)
    pending = Pending.of(plan, store)
    membership = grid.Membership.of(plan, pending.studies)
    spec_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    store.launch_run(digest, spec_yaml, loaded.path, git_commit(), membership)

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
    return _Launch(store, digest, location, resume, pending, membership)


def _run(loaded: LoadedSpec, plan: grid.Plan, address: str | None, fresh: bool) -> int:
    spec = loaded.spec
    launch = _prepare(loaded, plan, fresh)
    results, stopped, started_ray = None, False, False
    try:
        if address is None:
            # Locally the driver has the trials' devices, so it encodes once, with a progress bar, while
            # nothing else runs; on a cluster the GPU nodes do (below).
            interrupt.phase("preparing the backbone and the feature cache")
            fill.fill_locally(plan)
            for family in in_spec(spec):  # what the trials' `auto` settings become on this machine
                for line in family.settings_lines(spec, fill.local_trial_device(spec)):
                    print(line, flush=True)
        interrupt.phase("starting Ray")
        started_ray = start_ray(address)
        keep_resources_busy(spec)
        if address is not None:
            cluster.check_shared_storage(spec.results)
            interrupt.phase("filling the feature cache on the cluster's GPUs")
            fill_cluster.fill_on_cluster(plan)
        _deliver(spec, launch.digest)  # what an earlier launch could not log (the server is up: checked above)
        interrupt.phase("running trials")
        # Ctrl-C, or SIGTERM handed on as SIGUSR1: Tune stops its trials (each keeps its last
        # checkpoint) and returns; their runs are closed as KILLED below.
        results = _build_tuner(plan, launch.digest, launch.location, launch.resume, launch.pending, address is not None).fit()
        if Undelivered(spec.state_dir).trials():
            check_reachable(spec.tracking_uri)  # still down: the results wait (below)
            _deliver(spec, launch.digest)
    except KeyboardInterrupt:
        stopped = True  # before Tune ran, or while it was setting up or stopping
    except UserInputError as error:
        waiting = Undelivered(spec.state_dir).trials()
        if not waiting:
            launch.store.close_running("FAILED")
            raise
        # Tune has finished; only MLflow is missing results. Nothing is lost: Ray's results hold them.
        print(
            f"{error}\nThe results of {len(waiting)} trial(s) wait in {launch.location}; run the same command "
            "again once the server answers to deliver them (finished trials are not rerun).",
            file=sys.stderr,
        )
        return EXIT_FAILED_TRIALS
    except BaseException:
        launch.store.close_running("FAILED")
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    interrupt.stopping()  # closing the runs takes a moment: a Ctrl-C meanwhile ends the process at once
    outcome = finalize(launch.store, plan, stopped, launch.membership, launch.digest)
    user_errors = sorted({str(cause) for cause in map(user_error_cause, results.errors if results else []) if cause})
    if user_errors:
        raise UserInputError("\n".join(user_errors))  # the runs are closed; fix the input and rerun
    _report(spec, outcome)
    return interrupt.exit_code() if outcome.interrupted else outcome.exit_code


def _report(spec: ExperimentSpec, outcome: Outcome) -> None:
    if outcome.interrupted:
        print(interrupt.line(f"{outcome.finished} of {outcome.expected} trials finished"), flush=True)
    elif outcome.failed:
        print(
            f"{outcome.failed} of {outcome.expected} trials failed (errors in each trial's folder under "
            f"{spec.results}); run the same command again to retry them from their last checkpoint."
        )
    else:
        print(f"All {outcome.expected} trials finished. Browse them with: python -m orchestrator ui")
