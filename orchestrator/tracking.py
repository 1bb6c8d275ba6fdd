"""MLflow: the driver is the one writer; every run is keyed by tags and looked up before it is made.

Run tree in one experiment per spec (docs/ARCHITECTURE.md): a launch run keyed by the spec hash,
a run per cell under it, and a run per trial under its cell. The Tune callback here writes the
cell and trial runs as trials start, report and end; the driver writes the launch run and closes
whatever is still RUNNING when it exits, so a crash never leaves a run RUNNING for long: the next
launch marks leftovers FAILED before resuming, and a resumed trial sets its run back to RUNNING.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from filelock import FileLock
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from ray.tune import Callback

from trainables.config import TrialConfig
from trainables.ood.config import OODTrialConfig
from trainables.tasks import family_of
from trainables.errors import UserInputError

from orchestrator.grid import Membership
from orchestrator.schema import (
    CELL_KEY_TAG,
    CELL_ROLE,
    CONFIG_HASH_TAG,
    EPOCH_METRICS,
    ERROR_FILE_TAG,
    ERROR_TAG,
    FAMILY_TAG,
    FINAL_METRICS,
    GIT_COMMIT_TAG,
    LAST_FAILURE_TAG,
    LAST_MAP,
    LAUNCHED_AT_TAG,
    RAY_NODE_TAG,
    RETRIES_TAG,
    OOD_FINAL_METRICS,
    OOD_UNLOGGED,
    LAUNCH_ROLE,
    PARENT_RUN_TAG,
    PLAN_ARTIFACT,
    RESOLVED_PARAM_PREFIX,
    ROLE_TAG,
    SPEC_HASH_TAG,
    SPEC_PATH_TAG,
    STUDY_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    experiment_tags,
    role_filter,
    synthetic_variant,
)
from orchestrator.trial_errors import error_path, error_summary, traceback_text


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


def backbone_tag(config: TrialConfig | OODTrialConfig) -> str:
    """`RN101/openai@448`: model, weights (`random` without, a checkpoint by file name; synthetic
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
        tags = experiment_tags()
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
                self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id, False
        return self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id, True

    # -- writing -------------------------------------------------------------------------------

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
            self.client.delete_run(run.info.run_id)
        return len(everything)

    def max_step(self, run_id: str, metric: str = "mAP") -> int:
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
        does not run again (`grid.Plan.finished`)."""
        return [
            (run.data.tags.get(CELL_KEY_TAG), run.data.tags.get(CONFIG_HASH_TAG), run.data.tags.get(TRIAL_KEY_TAG))
            for run in self.runs(f"{role_filter(TRIAL_ROLE)} and attributes.status = 'FINISHED'")
        ]


PROBE_INTERVAL_S = 30.0
"""While the tracking server is down, how often the driver asks it again."""


def is_unreachable(error: BaseException) -> bool:
    """Whether an MLflow call failed because the server did not answer (not because it refused)."""
    if isinstance(error, (ConnectionError, TimeoutError, urllib.error.URLError)):
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        return error.get_http_status_code() in (502, 503, 504) or "Max retries exceeded" in text or "Connection" in text
    return type(error).__module__.startswith(("requests", "urllib3")) and "Connection" in type(error).__name__


class Undelivered:
    """The trials whose MLflow logging an unreachable server interrupted, listed in the driver's
    folder (`mlflow-undelivered.json` in `ExperimentSpec.state_dir`) by the Tune experiment that
    holds their results, so that a later launch delivers them from there."""

    FILE = "mlflow-undelivered.json"

    def __init__(self, state_dir: Path):
        self.path = state_dir / self.FILE

    def by_location(self) -> dict[str, list[str]]:
        """Ray trial ids by their Tune experiment's location ("": the experiment's own folder, where
        Tune kept them before each spec had its own; a list written then reads so)."""
        if not self.path.is_file():
            return {}
        listed = json.loads(self.path.read_text())
        return {"": listed} if isinstance(listed, list) else listed

    def trials(self) -> list[str]:
        """Ray trial ids, sorted."""
        return sorted(trial for trials in self.by_location().values() for trial in trials)

    def add(self, trial_id: str, location: str | None) -> None:
        """List `trial_id` under its Tune experiment's location (None: the experiment's own folder)."""
        listed = self.by_location()
        listed[location or ""] = sorted({*listed.get(location or "", []), trial_id})
        self.path.write_text(json.dumps(listed))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _unless_unreachable(handler):
    """Run a trial event's handler unless the server is down or the trial already missed an
    event: then list the trial as undelivered (its run is rebuilt later from Ray's results)."""

    @functools.wraps(handler)
    def guarded(self, iteration: int, trials: list, trial, *args, **info) -> None:
        if self.results_dir is None:
            return handler(self, iteration, trials, trial, *args, **info)
        undelivered = Undelivered(self.results_dir)
        if trial.trial_id in undelivered.trials() or not self._server_answers():
            undelivered.add(trial.trial_id, self.tune_location)
            return None
        try:
            return handler(self, iteration, trials, trial, *args, **info)
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._down_until = time.monotonic() + PROBE_INTERVAL_S
            undelivered.add(trial.trial_id, self.tune_location)
            print(f"MLflow at {self.tracking_uri} does not answer; trial results are kept in {self.results_dir} "
                  "and delivered when it does", file=sys.stderr, flush=True)  # fmt: skip
            return None

    return guarded


class MlflowCallback(Callback):
    """Writes the cell and trial runs of one spec from the Tune driver (no trial talks to MLflow).

    Not Ray's MLflowLoggerCallback, which duplicates runs after `Tuner.restore`: here a trial's run
    is looked up by its `orchestrator.trial_key` tag before one is made, and a resumed trial
    continues logging after the last epoch its run already has.
    """

    def __init__(
        self, tracking_uri: str, experiment_name: str, spec_hash: str, results_dir: Path | None = None,
        tune_location: str | None = None,
    ):  # fmt: skip
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.spec_hash = spec_hash
        self.results_dir = results_dir
        """The driver's folder (`ExperimentSpec.state_dir`): where the trials that MLflow missed are listed (`Undelivered`)."""
        self.tune_location = tune_location
        """Where the Tune experiment of this launch keeps its trials' results (to deliver them from)."""
        self._reset()

    def _reset(self) -> None:
        self._store: TrackingStore | None = None
        self._commit = "unknown"
        self._launch_run: str | None = None
        self._cell_runs: dict[str, str] = {}
        self._trial_runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self._logged_up_to: dict[str, int] = {}  # Ray trial id -> last epoch its run holds
        self._final_logged: set[str] = set()  # Ray trial ids whose run already has its final metrics
        self._nodes: dict[str, str] = {}  # Ray trial id -> the node its run's tag names
        self._train_sets: dict[str, object] = {}
        self._down_until = 0.0  # while the server does not answer: when to ask it again

    def __getstate__(self) -> dict:
        # Pickled into Tune's experiment state: configuration only, never a client or a dataset.
        return {"tracking_uri": self.tracking_uri, "experiment_name": self.experiment_name, "spec_hash": self.spec_hash,
                "results_dir": self.results_dir, "tune_location": self.tune_location}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.results_dir = self.tune_location = None  # in states pickled before they existed
        self.__dict__.update(state)
        self._reset()

    @property
    def store(self) -> TrackingStore:
        if self._store is None:
            self._store = TrackingStore(self.tracking_uri, self.experiment_name)
        return self._store

    def setup(self, **info) -> None:
        self._commit = git_commit()

    def _server_answers(self) -> bool:
        """False while a server that stopped answering has not been asked again (every PROBE_INTERVAL_S)."""
        if time.monotonic() >= self._down_until:
            return True
        try:
            check_reachable(self.tracking_uri, timeout_s=2.0)
        except UserInputError:
            self._down_until = time.monotonic() + PROBE_INTERVAL_S
            return False
        self._down_until = 0.0
        return True

    # -- runs --------------------------------------------------------------------------------

    def _launch(self) -> str:
        if self._launch_run is None:
            run = self.store.find(**{ROLE_TAG: LAUNCH_ROLE, SPEC_HASH_TAG: self.spec_hash})
            if run is None:
                raise RuntimeError("the driver creates the launch run before Tune starts")
            self._launch_run = run.info.run_id
        return self._launch_run

    def _tags(self, config: TrialConfig | OODTrialConfig, cell_key: str, setup: str) -> dict[str, str]:
        """The tags of a cell's runs: its key, the key tags (`schema.KEY_TAGS`), the family, the spec hash and the commit."""
        ood = isinstance(config, OODTrialConfig)
        return {
            CELL_KEY_TAG: cell_key,
            FAMILY_TAG: "ood" if ood else "mlr",
            "setup": setup,
            "dataset": config.id_dataset.name if ood else config.dataset.name,
            "backbone": backbone_tag(config),
            "label_ratio": f"{config.label_ratio:g}",
            "seed": str(config.seed),
            SPEC_HASH_TAG: self.spec_hash,
            GIT_COMMIT_TAG: self._commit,
        }

    def _cell_run(self, config: TrialConfig | OODTrialConfig, cell_key: str, setup: str) -> str:
        if cell_key not in self._cell_runs:
            tags = {**self._tags(config, cell_key, setup), ROLE_TAG: CELL_ROLE, PARENT_RUN_TAG: self._launch()}
            run_id, created = self.store.find_or_create(cell_key, tags, (ROLE_TAG, CELL_KEY_TAG, SPEC_HASH_TAG))
            if created and isinstance(config, TrialConfig):
                self._log_partial_labels(run_id, config)
            self._cell_runs[cell_key] = run_id
        return self._cell_runs[cell_key]

    def _log_partial_labels(self, run_id: str, config: TrialConfig) -> None:
        """The cell's partial-label mask, as every trial of the cell draws it (cheap, deterministic)."""
        from trainables import data

        dataset_key = config.dataset.model_dump_json()
        if dataset_key not in self._train_sets:
            self._train_sets[dataset_key] = data.build_dataset(config.dataset, "train", config.data_dir)
        train = self._train_sets[dataset_key]
        mask = data.dataset_partial_labels(train, config.label_ratio, config.seed)
        self.store.log_file(
            run_id,
            "partial_labels.npz",
            lambda path: data.save_partial_labels(
                path, mask, train.labels, ratio=config.label_ratio, seed=config.seed, key=data.dataset_key(train)
            ),
        )
        self.store.log(run_id, {"kept_fraction": data.kept_fraction(mask, train.labels)})

    @_unless_unreachable
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        family = family_of(trial.config)
        config = family.config.model_validate(trial.config["trial_config"])
        cell_key, trial_key = trial.config["cell_key"], trial.config["trial_key"]
        setup = trial.config.get("setup", config.setup)  # configs made before the OOD family name no setup
        existing = self.store.find(**{TRIAL_KEY_TAG: trial_key})
        if existing is not None and trial.checkpoint is None and existing.data.metrics:
            # Tune starts this trial from scratch (its earlier attempt left no checkpoint Tune
            # knows of): a clean run, so that its history holds each epoch once.
            self.store.client.delete_run(existing.info.run_id)
            existing = None
        if existing is None:
            tags = {**self._tags(config, cell_key, setup), ROLE_TAG: TRIAL_ROLE, TRIAL_KEY_TAG: trial_key,
                    PARENT_RUN_TAG: self._cell_run(config, cell_key, setup)}  # fmt: skip
            if "config_hash" in trial.config:  # configs made before trials carried it have none
                tags[CONFIG_HASH_TAG] = trial.config["config_hash"]
            if "study" in trial.config:
                tags[STUDY_TAG] = trial.config["study"]
            run = self.store.client.create_run(self.store.experiment_id, tags=tags, run_name=trial.config["trial_name"])
            run_id = run.info.run_id
            self.store.log(run_id, params=flatten(trial.config["trial_config"]))
            self._logged_up_to[trial.trial_id] = 0
        else:
            run_id = existing.info.run_id
            self.store.client.update_run(run_id, status="RUNNING")
            self._cell_run(config, cell_key, setup)  # a cell run left FAILED by a crash is RUNNING again
            self._logged_up_to[trial.trial_id] = self.store.max_step(run_id, family.metric)
            if f"best_{family.metric}" in existing.data.metrics:
                # It finished just before a crash that kept Tune from recording it: Tune resumes
                # it from its last checkpoint, and it ends at once without a new epoch.
                self._final_logged.add(trial.trial_id)
        self._trial_runs[trial.trial_id] = run_id

    @_unless_unreachable
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        epoch = int(result["epoch"])
        if epoch <= self._logged_up_to.get(trial.trial_id, 0):
            return  # already logged before a restart from an older checkpoint
        if family_of(trial.config).name == "ood":
            metrics = {k: v for k, v in result.items() if k not in OOD_UNLOGGED and isinstance(v, (int, float))}
        else:
            metrics = {k: v for k, v in result.items() if k in EPOCH_METRICS or k.startswith("lr_")}
        # What the trial's `auto` settings became on its device (the same at every epoch).
        resolved = flatten(result.get("resolved", {}), RESOLVED_PARAM_PREFIX)
        run_id = self._trial_runs[trial.trial_id]
        self.store.log(run_id, metrics, step=epoch, params=resolved)
        self._logged_up_to[trial.trial_id] = epoch
        node = f"{result['node_id']} ({result['hostname']})"
        if self._nodes.get(trial.trial_id) != node:  # a trial restarted elsewhere moves on
            self.store.client.set_tag(run_id, RAY_NODE_TAG, node)
            self._nodes[trial.trial_id] = node

    @_unless_unreachable
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        run_id = self._trial_runs[trial.trial_id]
        result = trial.last_result
        if trial.trial_id in self._final_logged:
            self.store.end(run_id, "FINISHED")
        elif "epoch" in result and family_of(trial.config).name == "ood":
            self.store.log(run_id, {k: result[k] for k in OOD_FINAL_METRICS}, step=int(result["epoch"]))
            labels = "\n".join(result["negative_labels"]) + "\n"
            self.store.log_file(run_id, "negative_labels.txt", lambda path: Path(path).write_text(labels))
            self.store.end(run_id, "FINISHED")
        elif "epoch" in result:
            final = {k: result[k] for k in FINAL_METRICS if k != LAST_MAP}
            final[LAST_MAP] = result["mAP"]
            self.store.log(run_id, final, step=int(result["epoch"]))
            per_class = pd.DataFrame({"class": result["classnames"], "ap": result["best_per_class_ap"]})
            self.store.log_file(run_id, "per_class_ap.csv", lambda path: per_class.to_csv(path, index=False))
            self.store.end(run_id, "FINISHED")
        else:
            self.store.end(run_id, "FAILED")  # stopped before its first epoch

    @_unless_unreachable
    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A failed trial: its run FAILED, the reason as a tag, the traceback as `error.txt`."""
        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is None:
            return
        tags = {ERROR_TAG: error_summary(trial)}
        path = error_path(trial)
        if path is not None:
            tags[ERROR_FILE_TAG] = str(path)
        for name, value in tags.items():
            self.store.client.set_tag(run_id, name, value)
        traceback = traceback_text(trial)
        if traceback:
            self.store.log_file(run_id, "error.txt", lambda file: Path(file).write_text(traceback))
        self.store.end(run_id, "FAILED")

    @_unless_unreachable
    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """Ray restarts a failed trial from its last checkpoint (`FailureConfig.max_failures`): say why on its run."""
        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is None:
            return
        retries = int(self.store.client.get_run(run_id).data.tags.get(RETRIES_TAG, "0")) + 1
        self.store.client.set_tag(run_id, RETRIES_TAG, str(retries))
        self.store.client.set_tag(run_id, LAST_FAILURE_TAG, error_summary(trial))


def deliver_undelivered(tracking_uri: str, experiment_name: str, spec_hash: str, state_dir: Path, results: str) -> int:
    """Log what MLflow missed while its server was down (listed in `state_dir`), from Ray's results
    (by the Tune experiment that holds them; a list written before there were several: `results`,
    the experiment's folder or URI); return how many trials were delivered. Every listed trial's run
    is rebuilt to what Ray holds (epochs it already has are not logged again); a finished or failed
    trial's run is closed, an unfinished one stays RUNNING for Tune to continue. Needs Ray
    initialised (Tune reads its experiment state)."""
    from ray.tune import ExperimentAnalysis

    from orchestrator import results_store

    undelivered = Undelivered(state_dir)
    listed = undelivered.by_location()
    if not listed:
        return 0
    replay = MlflowCallback(tracking_uri, experiment_name, spec_hash)  # without results_dir: not guarded
    replay.setup()
    delivered = 0
    for location, trial_ids in listed.items():
        location = location or results
        fs, _ = results_store.open_location(location)
        for trial in ExperimentAnalysis(location).trials:
            if trial.trial_id not in trial_ids:
                continue
            replay.on_trial_start(0, [], trial)
            for line in (results_store.read_text(fs, f"{trial.path}/result.json") or "").splitlines():  # none before a first report
                replay.on_trial_result(0, [], trial, json.loads(line))
            if trial.status == "TERMINATED":
                replay.on_trial_complete(0, [], trial)
            elif trial.status == "ERROR":
                replay.on_trial_error(0, [], trial)
            delivered += 1
    undelivered.clear()
    return delivered
