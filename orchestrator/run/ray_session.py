"""The Ray a launch runs on: local by default, or the cluster at an address, with the settings and
logger levels set before it starts (progress and errors are the orchestrator's to report)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainables.errors import UserInputError

from orchestrator import interrupt
from orchestrator.run import cluster
from orchestrator.specs import ExperimentSpec
from orchestrator.track.trial_errors import (
    HideUserErrorTracebacks,
    ShortenVanishedFileSyncWarnings,
)


def prepare_environment() -> None:
    """Tune's settings and the loggers' levels, set before Ray starts: progress and errors are
    reported by the orchestrator, so Ray's and MLflow's routine messages are turned down."""
    # Save Tune's experiment state after every step, so a SIGKILLed driver neither reruns finished
    # trials nor restarts running ones from scratch (STACK-NOTES.md: the 10 s default loses both).
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # progress is ours (orchestrator.run.progress)
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
    # A trial that failed on bad input is reported in one line (orchestrator.run.progress), not a traceback.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(HideUserErrorTracebacks())
    # Tune writes its searcher's state to a temporary file and renames it, while its syncer may be
    # copying the same folder to the results storage: a copy that lists the temporary file and then
    # finds it gone fails, harmlessly (the next sync copies the renamed file). One line, not 25.
    logging.getLogger("ray.train._internal.syncer").addFilter(ShortenVanishedFileSyncWarnings())
    # A notice on every start of a local Ray, not a problem of this run.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Tune's automatic loggers include TensorBoard's, which warns about every non-numeric result
    # (class names); the JSON and CSV ones are added explicitly in _build_tuner.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


def start_ray(address: str | None) -> bool:
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
    interrupt.take_sigterm()  # Ray's core took SIGTERM to abort the process with a stack dump
    return True


@contextmanager
def joined_ray(address: str) -> Iterator[None]:
    """Ray joined at `address` for the block (a cluster's `cache` fill), left afterwards."""
    prepare_environment()
    started = start_ray(address)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def _ray_token_present() -> bool:
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH", str(Path.home() / ".ray" / "auth_token"))
    return "RAY_AUTH_TOKEN" in os.environ or Path(token_path).is_file()


def keep_resources_busy(spec: ExperimentSpec) -> None:
    """Let Tune queue as many trials as the cluster can run at once.

    With a custom searcher Tune queues one pending trial at a time unless a concurrency limit is
    set, so the first trials would start one after another instead of filling every CPU and GPU.
    """
    fits = cluster.trials_that_fit(spec.resources)  # refuses resources no node has, before any scheduling
    if spec.resources.max_concurrent_trials is None:  # else Tune's ConcurrencyLimiter sets the queue length
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(fits)
