"""The MLflow schema: the tag names, role values and metric names that the writer (`track.callback`,
run by the Tune driver) and the readers (`report.reader`, `report.aggregate`) must agree on.

Plain names (and the search filter built from them), so that the readers can import them without
Ray. The run tree and what each run holds are described in docs/ARCHITECTURE.md ("Per-trial metrics").
"""

import json

# -- tags ------------------------------------------------------------------------------------------

ROLE_TAG = "orchestrator.role"
"""Which kind of run: one of the role values below."""
TRIAL_KEY_TAG = "orchestrator.trial_key"
"""A trial run's stable key: a resumed trial finds its run by it."""
CONFIG_HASH_TAG = "orchestrator.config_hash"
"""A trial run's `specs.grid.config_hash`: what it computes. A launch reuses a FINISHED run of the same
hash instead of running the trial again (runs made before it existed: the trial key's last 8 digits)."""
STUDY_TAG = "orchestrator.study"
"""A searched trial's run: the Optuna study that sampled it (absent: the study named by its cell)."""
LAUNCHED_AT_TAG = "orchestrator.launched_at"
"""On a launch run: when its spec was last launched (seconds since the epoch); the most recent is the
spec as the experiment now stands, whose `plan.json` says which trials it has (`specs.grid.Membership`)."""
PLAN_ARTIFACT = "plan.json"
CELL_KEY_TAG = "orchestrator.cell_key"
"""The cell (dataset, setup, label ratio, seed) of a cell or trial run."""
PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's own nesting tag: a cell run's parent is the launch run, a trial run's its cell run."""
ERROR_FILE_TAG = "orchestrator.error_file"
ERROR_TAG = "orchestrator.error"
"""On a failed trial's run: its exception in one line (`FloatingPointError: training loss is nan ...`);
the traceback is the run's artifact `error.txt`."""
RETRIES_TAG = "orchestrator.retries"
"""On a trial's run: how often Ray restarted it from its last checkpoint after a failure (a lost
node, a crashed worker), and `orchestrator.last_failure` the latest reason."""
LAST_FAILURE_TAG = "orchestrator.last_failure"
RAY_NODE_TAG = "orchestrator.ray_node"
"""The Ray node (id) and host that ran the trial's latest epoch."""
WARNING_TAG_PREFIX = "orchestrator.warning."
"""On a trial's run: what went otherwise than its spec asked, by setting
(`orchestrator.warning.training.cuda_graph`: the step could not be captured, so it ran eagerly)."""
"""On a failed trial's run: the trial's error file."""
SPEC_HASH_TAG = "spec_hash"
SPEC_PATH_TAG = "spec_path"
"""On the launch run: the spec file it was started from."""
GIT_COMMIT_TAG = "git_commit"

KEY_TAGS = ("setup", "dataset", "backbone", "label_ratio", "seed")
"""What a cell and trial run is tagged with to say which cell it belongs to; the tables pivot on them."""

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""MLflow's experiment tag that picks the UI's first page; without it MLflow 3 opens on GenAI traces."""
TRAINING_EXPERIMENT_KIND = "custom_model_development"
"""The kind whose experiment page opens on the training runs."""
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""MLflow's experiment tags that hold a saved runs view (filter, order, columns); the UI opens one
given `viewStateShareKey=<key>` in the address, as after its own "Share" button."""
TRIALS_VIEW_KEY = "orchestrator-trials"
"""The saved view of an experiment's trial runs, best first, with their cell and ranking metrics' columns."""

# -- role values (of ROLE_TAG) ---------------------------------------------------------------------

LAUNCH_ROLE = "launch"
"""The experiment's parent run, one per spec hash."""
CELL_ROLE = "cell"
TRIAL_ROLE = "trial"

# -- params ----------------------------------------------------------------------------------------

RESOLVED_PARAM_PREFIX = "resolved."
"""Params of a trial run that say what its `auto` settings became (`resolved.training.precision`);
the others are its config, flattened with dots (`loss.gamma_neg`)."""

# -- metrics ---------------------------------------------------------------------------------------

TRAIN_LOSS = "train_loss"
"""Logged by every trial run at every epoch (step = epoch), whatever its family; the family's own
metrics are its `Family.epoch_metrics`, `final_metrics` and `ranking_metrics`."""

FAMILY_TAG = "family"
"""A trial run's task family (`orchestrator.families`; absent on runs made before the second family: `compat.UNTAGGED_FAMILY`)."""

def runs_page(ui_address: str, experiment_id: str) -> str:
    """The MLflow UI's runs view of an experiment, opened on the saved trials view (`experiment_tags`)."""
    return f"{ui_address.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={TRIALS_VIEW_KEY}"


def experiment_tags(ranking_metrics: list[str]) -> dict[str, str]:
    """The tags of a training experiment: its kind, and the saved trials view that `runs_page` opens,
    ordered by the first of the families' `ranking_metrics`, showing each."""
    columns = [f"tags.`{tag}`" for tag in ("setup", "dataset", "label_ratio", "seed")]
    columns += [f"metrics.`{metric}`" for metric in (*ranking_metrics, "best_epoch")]
    trials_view = {
        "searchFilter": role_filter(TRIAL_ROLE),
        "orderByKey": f"metrics.`{ranking_metrics[0]}`",
        "orderByAsc": False,
        "selectedColumns": columns,
    }
    return {EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND, SHARED_VIEW_TAG_PREFIX + TRIALS_VIEW_KEY: json.dumps(trials_view)}


def role_filter(role: str) -> str:
    """An MLflow `search_runs` filter for the runs of one role."""
    return f"tags.`{ROLE_TAG}` = '{role}'"
