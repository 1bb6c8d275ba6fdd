"""`python -m orchestrator run` end to end: real CLI, real Ray, the real trainable, a real MLflow store.

Scaled down with --set (64 generated images, 1 label ratio, 2-5 epochs) so the three runs take a
few minutes on two CPUs. Each run gets its own process group, killed afterwards, so no Ray helper
outlives a test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from trainables.mlr.config import TrialConfig
from trainables.mlr.train import run_epochs
from trainables.tasks import MEMBERS

from orchestrator.specs import load_spec
from orchestrator.specs.grid import Plan
from orchestrator.track.schema import ROLE_TAG, TRIAL_KEY_TAG

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--set", "datasets.0.synthetic_num_train=64", "--set", "datasets.0.synthetic_num_test=32",
         "--set", "label_ratios=[0.5]", "--set", "backbone.pretrained=null",
         "--set", "setups=[baseline, positive_coop, negative_coop, dual_coop]"]  # fmt: skip
"""The MLR setups only: the README's test runs LAPT's cells through the whole demo."""
FINAL = ("best_mAP", "last_mAP", "best_epoch", "trainable_params", "train_seconds", "gpu_seconds", "kept_fraction")
SETUPS = ("baseline", "positive_coop", "negative_coop", "dual_coop")


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start the CLI with its output in `cwd/output.txt` (a file: nothing blocks on a full pipe)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=open(cwd / "output.txt", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: Ray's helpers included
    )


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run(args: list[str], cwd: Path, timeout: float = 420) -> tuple[int, str]:
    process = start(args, cwd)
    try:
        process.wait(timeout=timeout)
    finally:
        kill_group(process)
    return process.returncode, (cwd / "output.txt").read_text()


def client(cwd: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def runs_by_role(cwd: Path, experiment: str) -> dict[str, list]:
    mlflow = client(cwd)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    found: dict[str, list] = {}
    for run in mlflow.search_runs([experiment_id]):
        found.setdefault(run.data.tags[ROLE_TAG], []).append(run)
    return found


def test_smoke_spec_end_to_end(tmp_path, monkeypatch):
    code, output = run(["run", "smoke.yaml", *SMALL, "--set", "training.epochs=2"], tmp_path)
    assert code == 0, output
    assert "All 4 trials finished" in output
    assert "Traceback" not in output
    assert "Fused groups: 4 trials in 2 groups (2, 2 members) for 2 trial slots" in output  # Ray's 2 CPUs, 1 per trial

    mlflow = client(tmp_path)
    runs = runs_by_role(tmp_path, "smoke")
    trials = runs["trial"]
    assert sorted(r.data.tags["setup"] for r in trials) == sorted(SETUPS)
    assert {r.info.status for r in trials + runs["cell"] + runs["launch"]} == {"FINISHED"}
    for run_ in trials:
        metrics = run_.data.metrics
        for name in FINAL:
            assert np.isfinite(metrics[name]), name
        assert 0 <= metrics["best_mAP"] <= 100 and metrics["best_mAP"] >= metrics["last_mAP"]
        for name in ("mAP", "train_loss"):
            assert [m.step for m in mlflow.get_metric_history(run_.info.run_id, name)] == [1, 2]
        lrs = [k for k in metrics if k.startswith("lr_")]
        assert lrs and all(len(mlflow.get_metric_history(run_.info.run_id, k)) == 2 for k in lrs)
        per_class = pd.read_csv(mlflow.download_artifacts(run_.info.run_id, "per_class_ap.csv", str(tmp_path)))
        assert list(per_class.columns) == ["class", "ap"] and len(per_class) == 8
        assert run_.data.params["training.epochs"] == "2"
        assert run_.data.tags["git_commit"]
    # A member of a fused group logs what its trial computes alone.
    monkeypatch.chdir(tmp_path)
    plan = Plan.of(load_spec("smoke.yaml", [*SMALL[1::2], "training.epochs=2"]).spec)
    trial = plan.fixed_trials[next(cell.key for cell in plan.cells if cell.setup == "dual_coop")][0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial's Ray worker (1 CPU): the same sums in the same order
    try:
        alone = [metrics["mAP"] for metrics, _ in run_epochs(TrialConfig.model_validate(trial.trial_config))]
    finally:
        torch.set_num_threads(threads)
    (member,) = [r for r in trials if r.data.tags[TRIAL_KEY_TAG] == trial.trial_key]
    assert [m.value for m in mlflow.get_metric_history(member.info.run_id, "mAP")] == pytest.approx(alone, abs=1e-6)
    for cell in runs["cell"]:
        assert [a.path for a in mlflow.list_artifacts(cell.info.run_id)] == ["partial_labels.npz"]
    (launch,) = runs["launch"]
    assert [a.path for a in mlflow.list_artifacts(launch.info.run_id)] == ["plan.json", "spec.yaml"]
    # Everything the run wrote is under the working directory.
    assert (tmp_path / "runs" / "smoke").is_dir() and (tmp_path / "runs" / "cache").is_dir()
    assert (tmp_path / "runs" / "data").is_dir() and (tmp_path / "mlartifacts").is_dir()


def test_optuna_search_over_gamma_and_delta_with_asha(tmp_path):
    args = [
        "run", "smoke.yaml", *SMALL,
        "--set", "name=optuna_smoke", "--set", "setups=[baseline]", "--set", "training.epochs=3",
        "--set", "search={kind: optuna, sampler: tpe, num_samples: 3, seed: 1}",
        "--set", "loss.gamma_neg={low: 0, high: 4}", "--set", "loss.clip={low: 0, high: 0.1}",
        "--set", "scheduler={kind: asha, grace_period: 1, reduction_factor: 2}",
    ]  # fmt: skip
    code, output = run(args, tmp_path)
    assert code == 0, output

    trials = runs_by_role(tmp_path, "optuna_smoke")["trial"]
    assert len(trials) == 3 and {r.info.status for r in trials} == {"FINISHED"}
    sampled = {(r.data.params["loss.gamma_neg"], r.data.params["loss.clip"]) for r in trials}
    assert len(sampled) == 3
    assert all(0 <= float(g) <= 4 and 0 <= float(c) <= 0.1 for g, c in sampled)
    # The cell's study was told each trial's best mAP, the value MLflow holds for it.
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna_smoke' / 'optuna.db'}"
    study = optuna.load_study(study_name="baseline-shapes-r0.5-s1", storage=storage)
    told = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert told == pytest.approx(sorted(r.data.metrics["best_mAP"] for r in trials))
    # ASHA may stop a trial at its first rungs, never after max_t = epochs.
    for trial in trials:
        assert 1 <= len(client(tmp_path).get_metric_history(trial.info.run_id, "mAP")) <= 3


def _wait_for_finished_trial(cwd: Path, experiment: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before a trial finished"
        # The driver prints this once its store is created: opening it earlier would race the
        # driver's database migrations.
        if f"Starting '{experiment}'" in (cwd / "output.txt").read_text():
            mlflow = client(cwd)
            found = mlflow.get_experiment_by_name(experiment)
            if found is not None:
                finished = mlflow.search_runs(
                    [found.experiment_id], f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'FINISHED'"
                )
                if finished:
                    return
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


def test_killed_run_resumes_without_rerunning_or_duplicating(tmp_path):
    epochs = 5
    args = ["run", "smoke.yaml", *SMALL, "--set", f"training.epochs={epochs}"]
    process = start(args, tmp_path)
    try:
        _wait_for_finished_trial(tmp_path, "smoke", process)
    finally:
        kill_group(process)  # SIGKILL: the driver and Ray, with no chance to clean up

    lease = tmp_path / "runs" / "smoke.driver-lease.json"
    assert json.loads(lease.read_text())["pid"] == process.pid  # the killed driver's, left behind
    before = {r.data.tags[TRIAL_KEY_TAG]: r for r in runs_by_role(tmp_path, "smoke")["trial"]}
    finished_before = {key: r for key, r in before.items() if r.info.status == "FINISHED"}
    assert finished_before
    mlflow = client(tmp_path)
    epochs_before = {key: len(mlflow.get_metric_history(r.info.run_id, "mAP")) for key, r in before.items()}

    # `status` reads the killed run from MLflow: every trial is counted, none twice.
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", "smoke"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert status.returncode == 0, status.stderr
    counts = re.match(r"Experiment 'smoke' \(.*\): 4 trials: (\d+) finished, (\d+) running, (\d+) failed, (\d+) pending$",
                      status.stdout.splitlines()[0])  # fmt: skip
    assert counts and sum(map(int, counts.groups())) == 4 and int(counts[1]) == len(finished_before), status.stdout

    code, output = run(args, tmp_path)
    assert code == 0, output
    assert output.startswith("Resuming 'smoke'")  # its pid gone, the dead driver's lease was taken over
    assert not lease.exists()  # and given back at the end

    runs = runs_by_role(tmp_path, "smoke")
    after = {}
    for run_ in runs["trial"]:
        key = run_.data.tags[TRIAL_KEY_TAG]
        assert key not in after, f"two runs for {key}"
        after[key] = run_
    assert len(after) == 4
    assert {r.info.status for r in runs["trial"] + runs["cell"] + runs["launch"]} == {"FINISHED"}
    for key, run_ in after.items():
        steps = [m.step for m in mlflow.get_metric_history(run_.info.run_id, "mAP")]
        assert steps == list(range(1, epochs + 1)), key
    for key, run_ in finished_before.items():
        # Not rerun: the same run, untouched, and Ray holds its epochs once.
        assert after[key].info.run_id == run_.info.run_id and after[key].info.end_time == run_.info.end_time
        assert ray_epochs(tmp_path / "runs" / "smoke", key) == list(range(1, epochs + 1))
    for key, count in epochs_before.items():
        if count >= 2 and key not in finished_before:
            # In flight with a checkpoint: continued in the same run rather than started over.
            assert after[key].info.run_id == before[key].info.run_id


def ray_epochs(experiment: Path, trial_key: str) -> list[int]:
    """The epochs Ray's results (`result.json` of each Ray trial of the spec's Tune experiments) hold of
    one trial: its own Ray trial's, or those its fused group reported of it."""
    epochs = []
    for result_file in sorted(experiment.glob("*/*/result.json")):
        for result in map(json.loads, result_file.read_text().splitlines()):
            if trial_key in result.get(MEMBERS, {}):
                epochs.append(result[MEMBERS][trial_key]["epoch"])
            elif result["config"].get("trial_key") == trial_key:
                epochs.append(result["epoch"])
    return epochs


@pytest.mark.parametrize("feature_mode", ["cached", "online"])
def test_corrupt_image_fails_with_one_line_and_exit_code_2(tmp_path, feature_mode):
    # cached: the driver meets the image while filling the cache, before any trial starts (as it does
    # building the online mode's decoded store, tests/test_decoded.py); online without that store: a
    # trial meets it while training, and its run is closed as FAILED.
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "labels": "cat;bird" if i % 3 == 0 else ("cat" if i % 2 else "dog")})
    (tmp_path / "images" / "5.png").write_bytes(b"not an image")
    pd.DataFrame(rows[:8]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[8:] + rows[:2]).to_csv(tmp_path / "test.csv", index=False)
    spec = {
        "name": "mine", "setups": ["baseline"], "label_ratios": [0.5], "seeds": [1], "training": {"epochs": 1},
        "datasets": [{"name": "mine", "kind": "manifest", "train_manifest": "train.csv", "test_manifest": "test.csv"}],
        "backbone": {"model": "RN-tiny", "image_size": 64},
        "features": {"mode": feature_mode, **({"decoded_store": False} if feature_mode == "online" else {})},
    }  # fmt: skip
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))

    code, output = run(["run", "mine.yaml"], tmp_path)
    assert code == 2, output
    assert "Traceback" not in output
    (error,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: dataset 'mine': cannot read image {tmp_path / 'images' / '5.png'}")
    trials = runs_by_role(tmp_path, "mine").get("trial", [])
    if feature_mode == "cached":
        assert trials == []
    else:
        (trial,) = trials
        assert trial.info.status == "FAILED"


def test_killed_optuna_search_resumes_with_its_history(tmp_path):
    args = [
        "run", "smoke.yaml", *SMALL,
        "--set", "name=optuna_killed", "--set", "setups=[baseline]", "--set", "training.epochs=6",
        "--set", "search={kind: optuna, sampler: tpe, num_samples: 4, seed: 1}",
        "--set", "loss.gamma_neg={low: 0, high: 4}", "--set", "resources.max_concurrent_trials=1",
    ]  # fmt: skip
    process = start(args, tmp_path)
    try:
        _wait_for_finished_trial(tmp_path, "optuna_killed", process)
    finally:
        kill_group(process)  # SIGKILL mid-search
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna_killed' / 'optuna.db'}"
    complete = optuna.trial.TrialState.COMPLETE
    before = [t for t in optuna.load_study(study_name="baseline-shapes-r0.5-s1", storage=storage).trials if t.state == complete]
    assert 1 <= len(before) < 4

    code, output = run(args, tmp_path)
    assert code == 0, output
    assert output.startswith("Resuming 'optuna_killed'")
    study = optuna.load_study(study_name="baseline-shapes-r0.5-s1", storage=storage)
    told = [t for t in study.trials if t.state == complete]
    assert len(told) == 4  # the search went on to its num_samples, not 4 more
    # The trials told before the kill are still the study's history, with their parameters.
    assert [(t.number, t.params, t.value) for t in before] == [(t.number, t.params, t.value) for t in told[: len(before)]]
    # No draw repeated after the restart. (A trial the kill caught between Optuna's ask and its draw
    # has no parameters: failed as an orphan on the restart, it drew nothing.)
    drawn = [t.params["gamma_neg"] for t in study.trials if t.params]
    assert len(set(drawn)) == len(drawn) >= 4
    trials = runs_by_role(tmp_path, "optuna_killed")["trial"]
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    assert len({r.data.tags[TRIAL_KEY_TAG] for r in trials}) == 4  # each trial one MLflow run
    assert sorted(t.value for t in told) == pytest.approx(sorted(r.data.metrics["best_mAP"] for r in trials))
