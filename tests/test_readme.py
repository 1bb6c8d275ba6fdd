"""The README's quick start, run as a new user types it: the demo run, then its table."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[list[str]]:
    """The `python -m orchestrator ...` lines of the README's first bash block, comments stripped."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("python -m orchestrator")]


def test_quick_start_installs_runs_the_demo_and_tests():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    assert "pip install -e '.[test]'" in block
    assert "python -m pytest" in block
    assert [command[3] for command in quick_start_commands()] == ["run", "table"]


@pytest.mark.integration
def test_quick_start_demo_as_written(tmp_path):
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    outputs = []
    for command in quick_start_commands():
        done = subprocess.run(
            [sys.executable, *command[1:]], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        outputs.append(done.stdout)
    run_output, table_output = outputs
    assert "All 8 trials finished" in run_output
    for setup in ("Baseline", "PositiveCoOp", "NegativeCoOp", "DualCoOp"):
        assert setup in table_output
    assert "10%" in table_output and "50%" in table_output
    # Every setup learns in the demo: at 50% of the labels each is 12 points above chance (the mean
    # prevalence of the test labels; the README's table shows the margins).
    from mlflow.tracking import MlflowClient

    from orchestrator.spec import load_spec
    from trainables import data

    spec = load_spec(REPO / "search_spaces" / "smoke.yaml", check_data=False).spec
    test = data.build_dataset(spec.datasets[0], "test", tmp_path / "runs" / "data")
    chance = 100 * float((test.labels == 1).mean())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    trials = client.search_runs([experiment.experiment_id], "tags.`orchestrator.role` = 'trial' and tags.label_ratio = '0.5'")
    best = {run.data.tags["setup"]: run.data.metrics["best_mAP"] for run in trials}
    assert sorted(best) == sorted(["baseline", "positive_coop", "negative_coop", "dual_coop"])
    assert all(value >= chance + 12 for value in best.values()), (chance, best)
