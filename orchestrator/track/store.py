"""The MLflow store of one spec's experiment (`TrackingStore`), and what its runs are tagged with.

The driver is the one writer; every run is keyed by tags and looked up before it is made. A SQLite
store is made under a file lock (MLflow migrates it on open); an http(s) server must answer before
any work starts (`check_reachable`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from trainables.errors import UserInputError

from orchestrator.family import ranking_metrics
from orchestrator.specs.grid import Membership, synthetic_variant
from orchestrator.track.schema import (
    CELL_KEY_TAG,
    CONFIG_HASH_TAG,
    GIT_COMMIT_TAG,
    LAUNCH_ROLE,
    LAUNCHED_AT_TAG,
    PLAN_ARTIFACT,
    ROLE_TAG,
    SPEC_HASH_TAG,
    SPEC_PATH_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    experiment_tags,
    role_filter,
)


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking server must answer `/health` before any work starts."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri}/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise UserInputError(f"MLflow tracking server {tracking_uri} answered /health with {response.status}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise UserInputError(f"MLflow tracking server {tracking_uri} is unreachable: {reason}") from None
    # `/health` answers anyone; a server with MLflow's basic-auth app wants credentials for the rest.
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as error:
        if error.get_http_status_code() in (401, 403):
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise UserInputError(
                f"MLflow tracking server {tracking_uri} refused "
                + (f"user '{user}' (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)" if user else
                   "a request without credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
            ) from None
        raise


def git_commit() -> str:
    """The commit of the code that runs: `git rev-parse HEAD` where this package lives, with
    `-dirty` for uncommitted changes, or "unknown" for an installed copy outside a repository."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> `{"loss.gamma_neg": "2.0", ...}`, values cut to MLflow's parameter length limit."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:MAX_PARAM_VAL_LENGTH]
    return flat


def backbone_tag(config) -> str:
    """`RN101/openai@448`, of a trial config's `backbone`: model, weights (`random` without, a checkpoint by file name; synthetic
    ones off the plain recipe with their negation rate and pre-training seed, `synthetic-neg0.05-p1`),
    input size."""
    weights = config.backbone.pretrained
    if weights is None:
        weights = "random"
    elif Path(weights).suffix:
        weights = Path(weights).name
    weights += synthetic_variant(config.backbone.synthetic_negation_rate, config.backbone.synthetic_seed)
    return f"{config.backbone.model}/{weights}@{config.backbone.image_size}"


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _creating(tracking_uri: str):
    """Held while a SQLite store is opened (and made, on first use): MLflow creates its tables and
    migrates them on open, which two processes doing at once break (alembic's "Online migration
    expected to match one row"); the second waits, then finds the store made. A server is its own
    single writer."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock")


class TrackingStore:
    """The MLflow experiment of one spec, through `MlflowClient` with an explicit tracking URI."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        with _creating(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        """The experiment's id, created if missing, tagged as a training experiment with the saved
        trials view for the UI (`schema.experiment_tags`)."""
        tags = experiment_tags(ranking_metrics())
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return self.client.create_experiment(
                self.experiment_name, artifact_location=self._artifact_location(), tags=tags
            )
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        for name, value in tags.items():
            if experiment.tags.get(name) != value:
                self.client.set_experiment_tag(experiment.experiment_id, name, value)
        return experiment.experiment_id

    def _artifact_location(self) -> str | None:
        """Beside an SQLite store (`mlartifacts/<name>`), so that a run writes under one folder; a
        server chooses its own."""
        if urlparse(self.tracking_uri).scheme != "sqlite":
            return None
        database = Path(self.tracking_uri.removeprefix("sqlite:///"))
        return (database.parent / "mlartifacts" / self.experiment_name).as_uri()

    # -- lookup --------------------------------------------------------------------------------

    def runs(self, filter_string: str = "") -> list:
        """Every active run of the experiment matching `filter_string`, all pages."""
        found, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, run_view_type=ViewType.ACTIVE_ONLY, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def find(self, **tags: str):
        """The one active run with these tags, or None."""
        clauses = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        matches = self.runs(clauses)
        return matches[0] if matches else None

    def find_or_create(self, run_name: str, tags: dict[str, str], key_tags: tuple[str, ...]) -> tuple[str, bool]:
        """(run id, created) of the run keyed by `key_tags` of `tags`, created RUNNING if missing."""
        existing = self.find(**{key: tags[key] for key in key_tags})
        if existing is not None:
            if existing.info.status != "RUNNING":
                self.restart(existing.info.run_id)
            return existing.info.run_id, False
        return self.create(run_name, tags), True

    def tag_of(self, run_id: str, tag: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(tag)

    # -- writing -------------------------------------------------------------------------------

    def create(self, run_name: str, tags: dict[str, str]) -> str:
        """A new RUNNING run of the experiment; its id."""
        return self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id

    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def restart(self, run_id: str) -> None:
        """A run ended (by a crash, a stop) RUNNING again: its trial or cell goes on."""
        self.client.update_run(run_id, status="RUNNING")

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        for name, value in tags.items():
            self.client.set_tag(run_id, name, value)

    def log(
        self,
        run_id: str,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        params: dict[str, str] | None = None,
    ) -> None:
        stamp = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), stamp, step) for k, v in (metrics or {}).items()]
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        for chunk in _chunks(metric_list, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(param_list, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)

    def log_file(self, run_id: str, name: str, write) -> None:
        """Log an artifact `name`, written by `write(path)` into a temporary folder."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / name
            write(path)
            self.client.log_artifact(run_id, str(path))

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def close_running(self, status: str) -> int:
        """Set every run still RUNNING in the experiment to `status`; return how many."""
        running = self.runs("attributes.status = 'RUNNING'")
        for run in running:
            self.end(run.info.run_id, status)
        return len(running)

    def delete_all(self) -> int:
        """Delete every run of the experiment (`--fresh`); return how many."""
        everything = self.runs()
        for run in everything:
            self.delete(run.info.run_id)
        return len(everything)

    def max_step(self, run_id: str, metric: str) -> int:
        """The last step `metric` was logged at in a run (0: never)."""
        history = self.client.get_metric_history(run_id, metric)
        return max((m.step for m in history), default=0)

    # -- the launch run ------------------------------------------------------------------------

    def launch_run(
        self, spec_hash: str, spec_yaml: str, spec_path: Path, commit: str, membership: Membership | None = None
    ) -> str:
        """The experiment's parent run for this spec hash, RUNNING, with the resolved spec and which
        trials it has (`plan.json`, when given) attached, marked as the spec the experiment now stands at."""
        tags = {
            ROLE_TAG: LAUNCH_ROLE, SPEC_HASH_TAG: spec_hash, SPEC_PATH_TAG: str(spec_path), GIT_COMMIT_TAG: commit,
        }  # fmt: skip
        run_id, _ = self.find_or_create(f"{self.experiment_name}-{spec_hash}", tags, (ROLE_TAG, SPEC_HASH_TAG))
        self.log_file(run_id, "spec.yaml", lambda path: path.write_text(spec_yaml))
        if membership is not None:
            self.log_file(run_id, PLAN_ARTIFACT, lambda path: path.write_text(membership.to_json()))
        self.client.set_tag(run_id, LAUNCHED_AT_TAG, f"{time.time():.3f}")
        return run_id

    def finished_trials(self) -> list[tuple[str | None, str | None, str | None]]:
        """(cell key, config hash, trial key) of the experiment's FINISHED trial runs: what a launch
        does not run again (`specs.grid.Plan.finished`)."""
        return [
            (run.data.tags.get(CELL_KEY_TAG), run.data.tags.get(CONFIG_HASH_TAG), run.data.tags.get(TRIAL_KEY_TAG))
            for run in self.runs(f"{role_filter(TRIAL_ROLE)} and attributes.status = 'FINISHED'")
        ]
