"""MLflow: the driver is the one writer; every run is keyed by tags and looked up before it is made.

Run tree in one experiment per spec (docs/ARCHITECTURE.md): a launch run keyed by the spec hash,
a run per cell under it, and a run per trial under its cell. The Tune callback here writes the
cell and trial runs as trials start, report and end; the driver writes the launch run and closes
whatever is still RUNNING when it exits, so a crash never leaves a run RUNNING for long: the next
launch marks leftovers FAILED before resuming, and a resumed trial sets its run back to RUNNING.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from trainables.errors import UserInputError

from orchestrator.family import Family, of_trial
from orchestrator.track.members import Member, Members
from orchestrator.track.outage import PROBE_INTERVAL_S, unless_unreachable
from orchestrator.track.schema import (
    CELL_KEY_TAG,
    CELL_ROLE,
    CONFIG_HASH_TAG,
    ERROR_FILE_TAG,
    ERROR_TAG,
    FAMILY_TAG,
    GIT_COMMIT_TAG,
    LAST_FAILURE_TAG,
    LAUNCH_ROLE,
    PARENT_RUN_TAG,
    RAY_NODE_TAG,
    RESOLVED_PARAM_PREFIX,
    RETRIES_TAG,
    ROLE_TAG,
    SPEC_HASH_TAG,
    STUDY_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    WARNING_TAG_PREFIX,
)
from orchestrator.track.store import (
    TrackingStore,
    backbone_tag,
    check_reachable,
    flatten,
    git_commit,
)
from orchestrator.track.trial_errors import error_path, error_summary, traceback_text


def _family(trial) -> Family:
    """The task family of a Ray trial, which says what its runs are tagged with and log."""
    return of_trial(trial.config)


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
        self._warned: set[tuple[str, str]] = set()  # (Ray trial id, setting) whose warning tag is set
        self._down_until = 0.0  # while the server does not answer: when to ask it again
        self._members = Members()  # what fused groups' results said of each member
        self._closed: set[str] = set()  # trial ids whose run this callback ended (a group's members end one by one)

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

    def _tags(self, family: Family, config, cell_key: str, setup: str) -> dict[str, str]:
        """The tags of a cell's runs: its key, the key tags (`schema.KEY_TAGS`), the family, the spec hash and the commit."""
        return {
            CELL_KEY_TAG: cell_key,
            FAMILY_TAG: family.name,
            "setup": setup,
            "backbone": backbone_tag(config),
            **family.run_tags(config),
            SPEC_HASH_TAG: self.spec_hash,
            GIT_COMMIT_TAG: self._commit,
        }

    def _cell_run(self, family: Family, config, cell_key: str, setup: str) -> str:
        if cell_key not in self._cell_runs:
            tags = {**self._tags(family, config, cell_key, setup), ROLE_TAG: CELL_ROLE, PARENT_RUN_TAG: self._launch()}
            run_id, created = self.store.find_or_create(cell_key, tags, (ROLE_TAG, CELL_KEY_TAG, SPEC_HASH_TAG))
            if created:
                family.log_cell(self.store, run_id, config)
            self._cell_runs[cell_key] = run_id
        return self._cell_runs[cell_key]

    @unless_unreachable
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        for one in self._members.of(trial):
            self._start(one)

    @unless_unreachable
    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        reported, failed = self._members.record(trial, result)
        for one in reported:
            self._result(one, one.last_result if one is not trial else result)
        for one in failed:
            self._fail(one, one.error, one.traceback)

    @unless_unreachable
    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        for one in self._members.of(trial):
            if one.trial_id not in self._closed:
                self._complete(one)

    @unless_unreachable
    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A failed trial: its run FAILED, the reason as a tag, the traceback as `error.txt`. A fused
        group's members that trained their last epoch end FINISHED (Tune has recorded the group's end:
        a rerun does not train them again), the others that are still open FAILED."""
        path = error_path(trial)
        for one in self._members.of(trial):
            if one.trial_id in self._closed:
                continue
            if isinstance(one, Member) and one.done:
                self._complete(one)
            else:
                self._fail(one, error_summary(trial), traceback_text(trial), path)

    @unless_unreachable
    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """Ray restarts a failed trial from its last checkpoint (`FailureConfig.max_failures`): say why on its runs."""
        for one in self._members.of(trial):
            run_id = self._trial_runs.get(one.trial_id)
            if run_id is None or one.trial_id in self._closed:
                continue
            retries = int(self.store.tag_of(run_id, RETRIES_TAG) or "0") + 1
            self.store.tag(run_id, {RETRIES_TAG: str(retries), LAST_FAILURE_TAG: error_summary(trial)})

    # -- one trial's run (a Ray trial's, or a fused group member's) ------------------------------

    def _start(self, trial) -> None:
        family = _family(trial)
        config = family.task.config.model_validate(trial.config["trial_config"])
        cell_key, trial_key = trial.config["cell_key"], trial.config["trial_key"]
        setup = trial.config.get("setup", config.setup)  # configs made before the second family name no setup
        existing = self.store.find(**{TRIAL_KEY_TAG: trial_key})
        if isinstance(trial, Member) and existing is not None and f"best_{family.task.metric}" in existing.data.metrics:
            # A member that finished before its group was stopped: its group trains it no more.
            if existing.info.status != "FINISHED":
                self.store.end(existing.info.run_id, "FINISHED")
            self._trial_runs[trial.trial_id] = existing.info.run_id
            self._closed.add(trial.trial_id)
            return
        if existing is not None and trial.checkpoint is None and existing.data.metrics:
            # Tune starts this trial from scratch (its earlier attempt left no checkpoint Tune
            # knows of): a clean run, so that its history holds each epoch once.
            self.store.delete(existing.info.run_id)
            existing = None
        if existing is None:
            tags = {**self._tags(family, config, cell_key, setup), ROLE_TAG: TRIAL_ROLE, TRIAL_KEY_TAG: trial_key,
                    PARENT_RUN_TAG: self._cell_run(family, config, cell_key, setup)}  # fmt: skip
            if "config_hash" in trial.config:  # configs made before trials carried it have none
                tags[CONFIG_HASH_TAG] = trial.config["config_hash"]
            if "study" in trial.config:
                tags[STUDY_TAG] = trial.config["study"]
            run_id = self.store.create(trial.config["trial_name"], tags)
            self.store.log(run_id, params=flatten(trial.config["trial_config"]))
            self._logged_up_to[trial.trial_id] = 0
        else:
            run_id = existing.info.run_id
            self.store.restart(run_id)
            self._cell_run(family, config, cell_key, setup)  # a cell run left FAILED by a crash is RUNNING again
            self._logged_up_to[trial.trial_id] = self.store.max_step(run_id, family.task.metric)
            if f"best_{family.task.metric}" in existing.data.metrics:
                # It finished just before a crash that kept Tune from recording it: Tune resumes
                # it from its last checkpoint, and it ends at once without a new epoch.
                self._final_logged.add(trial.trial_id)
        self._trial_runs[trial.trial_id] = run_id
        self._closed.discard(trial.trial_id)

    def _result(self, trial, result: dict) -> None:
        epoch = int(result["epoch"])
        if epoch <= self._logged_up_to.get(trial.trial_id, 0) or trial.trial_id in self._closed:
            return  # already logged before a restart from an older checkpoint (or its run has ended)
        metrics = _family(trial).epoch_metrics(result)
        # What the trial's `auto` settings became on its device (the same at every epoch).
        resolved = flatten(result.get("resolved", {}), RESOLVED_PARAM_PREFIX)
        run_id = self._trial_runs[trial.trial_id]
        self.store.log(run_id, metrics, step=epoch, params=resolved)
        self._logged_up_to[trial.trial_id] = epoch
        for setting, warning in result.get("warnings", {}).items():  # the same text each epoch: set once
            if (trial.trial_id, setting) not in self._warned:
                self.store.tag(run_id, {WARNING_TAG_PREFIX + setting: warning})
                self._warned.add((trial.trial_id, setting))
        node = f"{result['node_id']} ({result['hostname']})"
        if self._nodes.get(trial.trial_id) != node:  # a trial restarted elsewhere moves on
            self.store.tag(run_id, {RAY_NODE_TAG: node})
            self._nodes[trial.trial_id] = node

    def _complete(self, trial) -> None:
        run_id = self._trial_runs[trial.trial_id]
        result = trial.last_result
        if trial.trial_id in self._final_logged:
            self.store.end(run_id, "FINISHED")
        elif "epoch" in result:
            _family(trial).log_final(self.store, run_id, result)
            self.store.end(run_id, "FINISHED")
        else:
            self.store.end(run_id, "FAILED")  # stopped before its first epoch
        self._closed.add(trial.trial_id)

    def _fail(self, trial, summary: str, traceback: str, path: Path | None = None) -> None:
        run_id = self._trial_runs.get(trial.trial_id)
        if run_id is None:
            return
        tags = {ERROR_TAG: summary}
        if path is not None:
            tags[ERROR_FILE_TAG] = str(path)
        self.store.tag(run_id, tags)
        if traceback:
            self.store.log_file(run_id, "error.txt", lambda file: Path(file).write_text(traceback))
        self.store.end(run_id, "FAILED")
        self._closed.add(trial.trial_id)
