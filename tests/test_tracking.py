"""MLflow from the driver, against a real temporary SQLite store: keyed runs, no duplicates, resume."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import ViewType

from trainables import data
from trainables.errors import UserInputError
from trainables.tasks import MEMBER_ERRORS, MEMBERS

from orchestrator.run.launch import finalize
from orchestrator.specs import grid
from orchestrator.track.callback import MlflowCallback
from orchestrator.track.schema import (
    CELL_KEY_TAG,
    PARENT_RUN_TAG,
    RAY_NODE_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
    WARNING_TAG_PREFIX,
    role_filter,
)  # fmt: skip
from orchestrator.track.store import TrackingStore, check_reachable, flatten, git_commit


@pytest.fixture
def spec(tracked_spec):
    return tracked_spec(
        datasets=[
            {"name": "shapes", "kind": "synthetic", "synthetic_num_train": 12, "synthetic_num_test": 8,
             "synthetic_image_size": 32, "synthetic_num_classes": 4}
        ],  # fmt: skip
        label_ratios=[0.5],
        seeds=[3],
        training={"epochs": 3},
    )


@pytest.fixture
def store(spec):
    return TrackingStore(spec.tracking_uri, spec.name)


def ray_trial(spec, setup: str = "baseline", trial_id: str = "abc", checkpoint=None) -> SimpleNamespace:
    """What the callback reads from a Ray Tune trial."""
    cell = next(c for c in grid.cells(spec) if c.setup == setup)
    config = grid.grid_trials(spec, cell)[0].as_config()
    return SimpleNamespace(
        trial_id=trial_id, config=config, checkpoint=checkpoint, last_result={},
        path=f"/results/{config['trial_name']}", run_metadata=SimpleNamespace(error_filename=None),
    )  # fmt: skip


def epoch_result(epoch: int, mAP: float, node: str = "node-a") -> dict:
    """What Tune hands the callback: the trainable's metrics, its Ray node id, and Tune's own keys."""
    return {
        "node_id": node, "hostname": "host-1", "node_ip": "10.0.0.1", "epoch": epoch, "train_loss": 10.0 / epoch, "mAP": mAP, "best_mAP": mAP, "best_epoch": epoch,
        "lr_projector": 0.01 / epoch, "trainable_params": 24, "train_seconds": 1.5 * epoch, "gpu_seconds": 0.0,
        "kept_fraction": 0.5, "classnames": ["circle", "square", "star"], "best_per_class_ap": [0.5, float("nan"), 1.0],
        "absence_cosine.not_a_photo": 0.97, "absence_cosine.photo_without": 0.93,
    }  # fmt: skip


def callback(spec) -> MlflowCallback:
    made = MlflowCallback(spec.tracking_uri, spec.name, "h4sh")
    made.setup()
    return made


def trial_runs(store, **tags) -> list:
    clauses = " and ".join([role_filter("trial"), *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    return store.runs(clauses)


@pytest.fixture
def started(spec, store, tmp_path) -> tuple[MlflowCallback, SimpleNamespace]:
    """A launch run, a callback, and the baseline trial started under them: (callback, trial)."""
    store.launch_run("h4sh", "", tmp_path / "s.yaml", "c")
    logger = callback(spec)
    trial = ray_trial(spec)
    logger.on_trial_start(0, [], trial)
    return logger, trial


def test_trial_run_under_cell_under_launch_with_tags_params_and_mask(spec, store, tmp_path):
    launch = store.launch_run("h4sh", "name: tracked\n", tmp_path / "tracked.yaml", "abc123")
    logger = callback(spec)
    trial = ray_trial(spec)
    logger.on_trial_start(0, [], trial)

    (run,) = trial_runs(store)
    tags = run.data.tags
    assert tags[TRIAL_KEY_TAG] == trial.config["trial_key"]
    assert {k: tags[k] for k in ("setup", "dataset", "backbone", "label_ratio", "seed", "spec_hash")} == {
        "setup": "baseline", "dataset": "shapes", "backbone": "RN-tiny/random@64", "label_ratio": "0.5",
        "seed": "3", "spec_hash": "h4sh",
    }  # fmt: skip
    assert run.info.run_name == "baseline-shapes-r0.5-s3"
    assert run.data.params["loss.gamma_neg"] == "2.0"
    assert run.data.params["training.lr.projector"] == "0.01"
    assert run.data.params["dataset.name"] == "shapes"

    cell = store.client.get_run(tags[PARENT_RUN_TAG])
    assert cell.data.tags[ROLE_TAG] == "cell" and cell.data.tags[PARENT_RUN_TAG] == launch
    assert store.client.get_run(launch).data.tags["spec_path"] == str(tmp_path / "tracked.yaml")

    # The cell's mask is the one every trial of the cell draws: recomputed here from the dataset.
    train = data.build_dataset(spec.datasets[0], "train", spec.data_dir)
    local = store.client.download_artifacts(cell.info.run_id, "partial_labels.npz", str(tmp_path))
    saved = data.load_partial_labels(local)
    expected = data.partial_labels(train.labels, 0.5, 3, key=f"{train.fingerprint}/train")
    np.testing.assert_array_equal(saved["partial"], expected)
    known = train.labels != -1
    assert cell.data.metrics["kept_fraction"] == pytest.approx((expected[known] != -1).mean())


def test_epochs_final_metrics_and_per_class_artifact(started, store, tmp_path):
    logger, trial = started
    for epoch, mAP, node in ((1, 30.0, "node-a"), (2, 50.0, "node-a"), (3, 40.0, "node-b")):
        logger.on_trial_result(0, [], trial, epoch_result(epoch, mAP, node))
    trial.last_result = {**epoch_result(3, 40.0), "best_mAP": 50.0, "best_epoch": 2}
    logger.on_trial_complete(0, [], trial)

    (run,) = trial_runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RAY_NODE_TAG] == "node-b (host-1)"  # the node of its latest epoch
    assert "node_id" not in run.data.metrics and "node_id" not in run.data.params
    history = store.client.get_metric_history(run.info.run_id, "mAP")
    assert [(m.step, m.value) for m in history] == [(1, 30.0), (2, 50.0), (3, 40.0)]
    assert [m.step for m in store.client.get_metric_history(run.info.run_id, "lr_projector")] == [1, 2, 3]
    metrics = run.data.metrics
    assert (metrics["best_mAP"], metrics["last_mAP"], metrics["best_epoch"]) == (50.0, 40.0, 2)
    assert (metrics["trainable_params"], metrics["train_seconds"], metrics["kept_fraction"]) == (24, 4.5, 0.5)
    assert (metrics["absence_cosine.not_a_photo"], metrics["absence_cosine.photo_without"]) == (0.97, 0.93)
    assert len(store.client.get_metric_history(run.info.run_id, "best_mAP")) == 1  # final only
    table = pd.read_csv(store.client.download_artifacts(run.info.run_id, "per_class_ap.csv", str(tmp_path)))
    assert table["class"].tolist() == ["circle", "square", "star"]
    assert table["ap"].tolist()[0] == 0.5 and np.isnan(table["ap"].tolist()[1])


def test_resumed_trial_continues_its_run_without_duplicates(started, spec, store):
    first, trial = started
    for epoch in (1, 2):
        first.on_trial_result(0, [], trial, epoch_result(epoch, 10.0 * epoch))
    assert store.close_running("FAILED") == 3  # the crash: the next driver closes launch, cell and trial

    # A new driver (Tune unpickles the callback), the trial resumed from its epoch-1 checkpoint.
    second = pickle.loads(pickle.dumps(first))
    second.setup()
    resumed = ray_trial(spec, checkpoint=object())
    second.on_trial_start(0, [], resumed)
    for epoch in (2, 3):
        second.on_trial_result(0, [], resumed, epoch_result(epoch, 11.0 * epoch))

    (run,) = trial_runs(store)
    assert run.info.status == "RUNNING"
    history = store.client.get_metric_history(run.info.run_id, "mAP")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 20.0), (3, 33.0)]
    cell = store.client.get_run(run.data.tags[PARENT_RUN_TAG])
    assert cell.info.status == "RUNNING"


def test_trial_finished_just_before_a_crash_is_not_logged_twice(started, spec, store):
    first, trial = started
    first.on_trial_result(0, [], trial, epoch_result(1, 10.0))
    trial.last_result = epoch_result(1, 10.0)
    first.on_trial_complete(0, [], trial)
    # Tune had not recorded the completion: it resumes the trial, which ends without a new epoch.
    second = callback(spec)
    resumed = ray_trial(spec, checkpoint=object())
    resumed.last_result = epoch_result(1, 10.0)
    second.on_trial_start(0, [], resumed)
    second.on_trial_complete(0, [], resumed)
    (run,) = trial_runs(store)
    assert run.info.status == "FINISHED"
    assert len(store.client.get_metric_history(run.info.run_id, "best_mAP")) == 1
    assert len(store.client.get_metric_history(run.info.run_id, "mAP")) == 1


def test_trial_restarted_from_scratch_gets_a_clean_run(started, spec, store):
    logger, trial = started
    logger.on_trial_result(0, [], trial, epoch_result(1, 10.0))
    again = callback(spec)
    again.on_trial_start(0, [], ray_trial(spec, trial_id="new"))  # no checkpoint: Tune starts at epoch 1
    (run,) = trial_runs(store, **{TRIAL_KEY_TAG: trial.config["trial_key"]})
    assert store.client.get_metric_history(run.info.run_id, "mAP") == []
    everything = store.client.search_runs([store.experiment_id], run_view_type=ViewType.ALL)
    assert sum(r.data.tags.get(ROLE_TAG) == "trial" for r in everything) == 2  # one deleted, one active


def _fail(trial, folder: Path, error: BaseException) -> str:
    """Leave on the driver what Tune leaves for a failed trial: the pickled exception and its traceback."""
    from ray import cloudpickle

    try:
        raise error
    except BaseException:
        text = traceback.format_exc()
    folder.mkdir(exist_ok=True)
    (folder / "error.pkl").write_bytes(cloudpickle.dumps(error))
    (folder / "error.txt").write_text(text)
    trial.local_path = str(folder)
    trial.run_metadata = SimpleNamespace(error_filename="error.txt", pickled_error_filename="error.pkl")
    return text


def test_failed_trial_is_marked_failed_with_its_reason_and_traceback(started, store, tmp_path):
    logger, trial = started
    text = _fail(trial, tmp_path / "trial", FloatingPointError("training loss is nan at epoch 2, step 1: the learning\nrate diverges"))
    logger.on_trial_error(0, [], trial)
    (run,) = trial_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["orchestrator.error"] == "FloatingPointError: training loss is nan at epoch 2, step 1: the learning rate diverges"
    assert run.data.tags["orchestrator.error_file"] == "/results/baseline-shapes-r0.5-s3/error.txt"
    local = store.client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert Path(local).read_text() == text and "Traceback (most recent call last)" in text


def test_recovered_trial_counts_its_retries_and_says_why(started, store, tmp_path):
    logger, trial = started
    for attempt in (1, 2):
        _fail(trial, tmp_path / f"attempt{attempt}", RuntimeError(f"node {attempt} lost"))
        logger.on_trial_recover(0, [], trial)
    (run,) = trial_runs(store)
    assert run.data.tags["orchestrator.retries"] == "2"
    assert run.data.tags["orchestrator.last_failure"] == "RuntimeError: node 2 lost"
    assert run.info.status == "RUNNING"  # Ray restarts it from its last checkpoint


def group_trial(spec, trial_id: str = "g1", checkpoint=None) -> SimpleNamespace:
    """What the callback reads from the Ray trial of a fused group of the spec's two trials (baseline, dual_coop)."""
    from orchestrator.run.fusion import Group

    members = tuple(trial for cell in grid.cells(spec) for trial in grid.grid_trials(spec, cell))
    config = Group(members).as_config()
    return SimpleNamespace(trial_id=trial_id, config=config, checkpoint=checkpoint, last_result={}, status="RUNNING",
                           path=f"/results/{config['trial_name']}", run_metadata=SimpleNamespace(error_filename=None))  # fmt: skip


def group_result(epochs: dict[str, dict], errors: dict[str, str] | None = None) -> dict:
    """A fused group's result: each member's epoch by trial key, the members that failed at it, Tune's keys."""
    failed = {key: {"error": error, "traceback": f"Traceback (most recent call last):\n{error}\n"} for key, error in (errors or {}).items()}
    return {"epoch": max((e["epoch"] for e in epochs.values()), default=0), MEMBERS: epochs, MEMBER_ERRORS: failed,
            "hostname": "host-1"}  # fmt: skip


def test_a_fused_groups_members_each_have_their_own_run_which_ends_with_the_member(spec, store, tmp_path):
    store.launch_run("h4sh", "", tmp_path / "s.yaml", "c")
    logger = callback(spec)
    group = group_trial(spec)
    baseline, dual = (member["trial_key"] for member in group.config[MEMBERS])
    logger.on_trial_start(0, [], group)
    runs = {run.data.tags[TRIAL_KEY_TAG]: run for run in trial_runs(store)}
    assert set(runs) == {baseline, dual}  # a run per member, tagged and named as unfused
    alone = ray_trial(spec, "dual_coop")
    assert runs[dual].info.run_name == alone.config["trial_name"] and runs[dual].data.tags["setup"] == "dual_coop"
    assert runs[dual].data.params == {k: v for k, v in flatten(alone.config["trial_config"]).items()}

    def epoch(n: int, mAP: float) -> dict:
        return {k: v for k, v in epoch_result(n, mAP).items() if k != "hostname"}  # Tune names the host of the group

    logger.on_trial_result(0, [], group, group_result({baseline: epoch(1, 10.0), dual: epoch(1, 20.0)}))
    error = "FloatingPointError: training loss is nan at epoch 2, step 1: the learning rate or loss settings diverge"
    logger.on_trial_result(0, [], group, group_result({baseline: epoch(2, 30.0)}, {dual: error}))
    failed = store.client.get_run(runs[dual].info.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["orchestrator.error"] == error
    assert "Traceback" in Path(store.client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()
    logger.on_trial_result(0, [], group, group_result({baseline: {**epoch(3, 20.0), "best_mAP": 30.0, "best_epoch": 2}}))
    # Its last epoch: it ends with the group, once Tune has recorded that (a kill before would rerun it).
    assert store.client.get_run(runs[baseline].info.run_id).info.status == "RUNNING"
    logger.on_trial_error(0, [], group)  # the group fails for its failed member; the finished one ends FINISHED
    finished = store.client.get_run(runs[baseline].info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags[RAY_NODE_TAG] == "node-a (host-1)"
    assert (finished.data.metrics["best_mAP"], finished.data.metrics["last_mAP"]) == (30.0, 20.0)
    assert [m.step for m in store.client.get_metric_history(finished.info.run_id, "mAP")] == [1, 2, 3]
    assert [store.client.get_run(runs[k].info.run_id).info.status for k in (baseline, dual)] == ["FINISHED", "FAILED"]

    # The same command again: Tune resumes the group from its checkpoint, and only the failed member trains on.
    again = pickle.loads(pickle.dumps(logger))
    again.setup()
    resumed = group_trial(spec, checkpoint=object())
    again.on_trial_start(0, [], resumed)
    assert [store.client.get_run(runs[k].info.run_id).info.status for k in (baseline, dual)] == ["FINISHED", "RUNNING"]
    for n in (2, 3):
        again.on_trial_result(0, [], resumed, group_result({dual: {**epoch(n, 25.0), "best_mAP": 25.0, "best_epoch": n}}))
    again.on_trial_complete(0, [], resumed)
    assert {store.client.get_run(runs[k].info.run_id).info.status for k in (baseline, dual)} == {"FINISHED"}
    assert [m.step for m in store.client.get_metric_history(runs[dual].info.run_id, "mAP")] == [1, 2, 3]
    assert len(store.client.get_metric_history(runs[baseline].info.run_id, "best_mAP")) == 1  # not logged again


def test_finalize_closes_cells_and_launch_by_their_trials(spec, store, tmp_path):
    store.launch_run("h4sh", "", tmp_path / "s.yaml", "c")
    logger = callback(spec)
    done, unfinished = ray_trial(spec, "baseline", "t1"), ray_trial(spec, "dual_coop", "t2")
    for trial in (done, unfinished):
        logger.on_trial_start(0, [], trial)
    done.last_result = epoch_result(3, 40.0)
    logger.on_trial_complete(0, [], done)

    outcome = finalize(store, grid.Plan.of(spec), stopped=False)  # a trial still RUNNING: interrupted
    assert (outcome.expected, outcome.finished, outcome.failed, outcome.exit_code) == (2, 1, 0, 130)
    status = {r.data.tags[CELL_KEY_TAG]: r.info.status for r in store.runs(role_filter("cell"))}
    assert status == {"baseline-shapes-r0.5-s3": "FINISHED", "dual_coop-shapes-r0.5-s3": "KILLED"}
    assert [r.info.status for r in trial_runs(store, **{CELL_KEY_TAG: "dual_coop-shapes-r0.5-s3"})] == ["KILLED"]
    (launch,) = store.runs(role_filter("launch"))
    assert launch.info.status == "KILLED"
    assert store.runs("attributes.status = 'RUNNING'") == []


def test_lookup_never_duplicates_and_fresh_deletes_everything(spec, store, tmp_path):
    first = store.launch_run("h4sh", "", tmp_path / "s.yaml", "c")
    store.end(first, "FAILED")
    assert store.launch_run("h4sh", "", tmp_path / "s.yaml", "c") == first
    assert store.client.get_run(first).info.status == "RUNNING"
    assert store.delete_all() == 1
    assert store.runs() == []


def test_flatten_dots_nested_keys_and_limits_values():
    flat = flatten({"loss": {"gamma_neg": 2.0}, "setup_options": {}, "root": None, "long": "x" * 7000})
    assert flat == {"loss.gamma_neg": "2.0", "setup_options": "{}", "root": "null", "long": "x" * 6000}


def test_unreachable_tracking_server_is_a_user_error():
    with socket.socket() as probe:  # a free port: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserInputError, match=f"http://127.0.0.1:{port} is unreachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout_s=2)
    check_reachable("sqlite:////nonexistent/mlflow.db")  # a file store needs no server


def test_git_commit_is_the_codes_not_the_working_directorys(tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)  # runs start from any folder; the tag names the code that ran
    assert git_commit().removesuffix("-dirty") == head


def test_experiment_is_tagged_so_the_ui_opens_on_training_runs(spec, store):
    # MLflow 3 opens an untagged experiment on its GenAI traces page; this kind opens the runs.
    tags = store.client.get_experiment(store.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    # An experiment made before the tag existed (or by hand) gets it when a run opens it again.
    store.client.delete_experiment_tag(store.experiment_id, "mlflow.experimentKind")
    assert TrackingStore(spec.tracking_uri, spec.name).experiment_id == store.experiment_id
    assert store.client.get_experiment(store.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiment_holds_the_saved_trials_view_the_ui_address_opens(spec, store):
    # The view as MLflow's "Share" button saves it: search facets plus the UI's column keys.
    saved = store.client.get_experiment(store.experiment_id).tags["mlflow.sharedViewState.orchestrator-trials"]
    assert json.loads(saved) == {
        "searchFilter": "tags.`orchestrator.role` = 'trial'",
        "orderByKey": "metrics.`best_mAP`",
        "orderByAsc": False,
        "selectedColumns": [
            "tags.`setup`", "tags.`dataset`", "tags.`label_ratio`", "tags.`seed`",
            "metrics.`best_mAP`", "metrics.`last_mAP`", "metrics.`best_auroc`", "metrics.`best_epoch`",
        ],
    }  # fmt: skip


def test_an_ood_trial_logs_its_family_metrics_and_negative_labels(tracked_spec, tmp_path):
    ood = {
        "id_dataset": {"name": "shapes-id", "kind": "synthetic", "synthetic_classes": 2},
        "ood_sets": [{"name": "empty", "group": "far", "kind": "synthetic"}],
        "variants": ["lapt"],
    }
    spec = tracked_spec(setups=["lapt"], datasets=[], label_ratios=[], seeds=[3], ood=ood)
    store = TrackingStore(spec.tracking_uri, spec.name)
    store.launch_run("h4sh", "", tmp_path / "s.yaml", "c")
    logger = callback(spec)
    plan = grid.Plan.of(spec)
    (cell,) = plan.cells
    config = plan.fixed_trials[cell.key][0].as_config()
    trial = SimpleNamespace(trial_id="o1", config=config, checkpoint=None, last_result={}, path="/r",
                            run_metadata=SimpleNamespace(error_filename=None))  # fmt: skip
    logger.on_trial_start(0, [], trial)
    for epoch, auroc in ((1, 80.0), (2, 85.0)):
        result = {"epoch": epoch, "train_loss": 1.0 / epoch, "auroc": auroc, "auroc.far": auroc, "auroc.empty": auroc,
                  "fpr95_ood_pos": 100 - auroc, "id_accuracy": 90.0, "best_auroc": auroc, "best_epoch": epoch,
                  "trainable_params": 256, "train_seconds": 2.0 * epoch, "num_negative_labels": 2,
                  "negative_labels": ["kite", "river"], "node_id": "node-a", "hostname": "host-1"}  # fmt: skip
        logger.on_trial_result(0, [], trial, result)
    trial.last_result = result
    logger.on_trial_complete(0, [], trial)

    (run,) = trial_runs(store, family="ood")
    assert run.info.status == "FINISHED" and run.info.run_name == "lapt-shapes-id-r1-s3"
    assert {run.data.tags[k] for k in ("setup", "dataset", "label_ratio")} == {"lapt", "shapes-id", "1"}
    assert [m.value for m in store.client.get_metric_history(run.info.run_id, "auroc")] == [80.0, 85.0]
    assert run.data.metrics["best_auroc"] == 85.0 and run.data.metrics["num_negative_labels"] == 2
    assert "negative_labels" not in run.data.metrics and "best_mAP" not in run.data.metrics
    local = store.client.download_artifacts(run.info.run_id, "negative_labels.txt", str(tmp_path))
    assert Path(local).read_text() == "kite\nriver\n"


OPEN_STORE = """
import sys, time
from orchestrator.track.store import TrackingStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both processes open the new store at this instant
TrackingStore(sys.argv[1], "shared")
print("opened")
"""


def test_two_processes_making_a_new_sqlite_store_at_once_both_open_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    at = f"{time.time() + 8:.3f}"  # after both have imported MLflow
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0 and stdout.strip() == "opened", stderr
        assert "Traceback" not in stderr
    store = TrackingStore(uri, "shared")
    assert [e.name for e in store.client.search_experiments() if e.name == "shared"] == ["shared"]


def test_a_trials_warning_becomes_a_tag_of_its_run(started, store, monkeypatch):
    """A graph asked for that could not be captured (the trial stepped eagerly) is said on the run, once."""
    logger, trial = started
    warning = "the step could not be captured as a CUDA graph, so it ran eagerly: operation not permitted"
    set_tags = []
    real_set_tag = store.client.set_tag
    monkeypatch.setattr(logger.store.client, "set_tag", lambda *args: set_tags.append(args[1:]) or real_set_tag(*args))
    for epoch in (1, 2):
        logger.on_trial_result(0, [], trial, {**epoch_result(epoch, 10.0 * epoch), "warnings": {"training.cuda_graph": warning}})
    (run,) = trial_runs(store)
    assert run.data.tags[WARNING_TAG_PREFIX + "training.cuda_graph"] == warning
    assert [tag for tag in set_tags if tag[0].startswith(WARNING_TAG_PREFIX)] == [(WARNING_TAG_PREFIX + "training.cuda_graph", warning)]
