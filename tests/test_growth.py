"""An experiment over time, for real (CLI, Ray, MLflow): a grid that grows without rerunning what
finished, and one driver at a time however it is launched."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.track.schema import ROLE_TAG, TRIAL_KEY_TAG

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SPEC = {
    "name": "grows",
    "datasets": [{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 16, "synthetic_num_test": 8}],
    "backbone": {"model": "RN-tiny", "image_size": 64},
    "setups": ["baseline"],
    "label_ratios": [0.1, 0.5],
    "seeds": [1],
    "training": {"epochs": 1},
}


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def launch(cwd: Path, **changes) -> str:
    (cwd / "spec.yaml").write_text(yaml.safe_dump({**SPEC, **changes}))
    done = cli(cwd, "run", "spec.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def trial_runs(cwd: Path, name: str = "grows") -> list:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")


def table(cwd: Path) -> str:
    done = cli(cwd, "table", "grows", "--format", "markdown", "--no-log")
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _start(cwd: Path, output: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "spec.yaml"], cwd=cwd, env=ENV,
                            stdout=open(cwd / output, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _assert_one_run_per_trial(cwd: Path, count: int) -> None:
    runs = trial_runs(cwd)
    keys = [run.data.tags[TRIAL_KEY_TAG] for run in runs]
    assert len(keys) == len(set(keys)) == count, keys
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_one_driver_runs_an_experiment_and_its_grid_grows_without_rerunning_what_finished(tmp_path):
    # Two launches at the same instant on a fresh folder: one runs the grid, the other is refused.
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    launches = [_start(tmp_path, "a.txt"), _start(tmp_path, "b.txt")]
    try:
        codes = [process.wait(timeout=600) for process in launches]
    finally:
        for process in launches:
            process.kill()
    outputs = [(tmp_path / name).read_text() for name in ("a.txt", "b.txt")]
    assert sorted(codes) == [0, 2], outputs
    refused = outputs[codes.index(2)]
    assert refused.startswith("error: experiment 'grows' is being run by another driver: ") and refused.count("\n") == 1, refused
    assert "Traceback" not in "".join(outputs)
    assert "Starting 'grows': 2 trials in 2 cells; " in outputs[codes.index(0)]
    _assert_one_run_per_trial(tmp_path, 2)
    first = {run.info.run_id: run.info.end_time for run in trial_runs(tmp_path)}

    # A seed more: only its trials run, and a second launch meanwhile is refused, writing nothing.
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**SPEC, "seeds": [1, 2]}))
    growing = _start(tmp_path, "grow.txt")
    try:
        deadline = time.monotonic() + 300
        while "Starting 'grows'" not in (tmp_path / "grow.txt").read_text():
            assert growing.poll() is None and time.monotonic() < deadline, (tmp_path / "grow.txt").read_text()
            time.sleep(0.2)
        second = cli(tmp_path, "run", "spec.yaml")
        assert growing.wait(timeout=600) == 0, (tmp_path / "grow.txt").read_text()
    finally:
        growing.kill()
    assert second.returncode == 2 and second.stdout == ""
    (line,) = second.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"error: experiment 'grows' is being run by another driver: pid {growing.pid} on \S+, since [\d-]+ [\d:]+ "
        rf"\(heartbeat \d+ s ago\); see `python -m orchestrator status grows` \(its lease: .*grows.driver-lease.json\)", line
    ), line
    output = (tmp_path / "grow.txt").read_text()
    assert "Starting 'grows': 4 trials in 4 cells (2 reused, 2 to run); " in output
    assert "2 reused, 2 to run: 2 terminated" in output  # the progress table says so too
    _assert_one_run_per_trial(tmp_path, 4)
    runs = trial_runs(tmp_path)
    assert {run.data.tags["seed"] for run in runs} == {"1", "2"}
    assert {run.info.run_id: run.info.end_time for run in runs if run.info.run_id in first} == first  # untouched
    baseline = next(line for line in table(tmp_path).splitlines() if "Baseline" in line)
    assert baseline.count("±") == 3  # 10%, 50% and their average, each over the two seeds

    # A setup more: only its trials run.
    assert "Starting 'grows': 8 trials in 8 cells (4 reused, 4 to run); " in launch(tmp_path, seeds=[1, 2], setups=["baseline", "dual_coop"])
    assert len(trial_runs(tmp_path)) == 8

    # Another number of epochs changes what every trial computes: all of them run again.
    output = launch(tmp_path, seeds=[1, 2], setups=["baseline", "dual_coop"], training={"epochs": 2})
    assert "Starting 'grows': 8 trials in 8 cells; " in output and "reused" not in output
    assert len(trial_runs(tmp_path)) == 16

    # A ratio less: nothing runs; the table drops the ratio, MLflow keeps its runs, status counts them.
    output = launch(tmp_path, seeds=[1, 2], setups=["baseline", "dual_coop"], training={"epochs": 2}, label_ratios=[0.5])
    assert "Starting 'grows': 4 trials in 4 cells (4 reused, 0 to run); " in output
    assert len(trial_runs(tmp_path)) == 16
    shown = table(tmp_path)
    assert "50%" in shown and "10%" not in shown and "12 trial run(s) of earlier versions of the spec" in shown
    status = cli(tmp_path, "status", "grows")
    assert status.stdout.splitlines()[0].endswith(": 4 trials: 4 finished, 0 running, 0 failed, 0 pending"), status.stdout
    assert "12 trial run(s) of earlier versions of the spec are not in it now" in status.stdout
