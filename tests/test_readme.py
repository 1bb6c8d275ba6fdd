"""The README's quick start, run as a new user types it: the demo run, its table, and its runs in the MLflow UI."""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
def test_quick_start_demo_as_written(tmp_path, chromium):
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    outputs = []
    for command in quick_start_commands():
        done = subprocess.run(
            [sys.executable, *command[1:]], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        outputs.append(done.stdout)
    run_output, table_output = outputs
    assert "All 13 trials finished" in run_output
    for setup in ("Baseline", "PositiveCoOp", "NegativeCoOp", "DualCoOp"):
        assert setup in table_output
    assert "10%" in table_output and "50%" in table_output
    client, experiment = every_setup_learns(tmp_path)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # LAPT's OOD table, and LAPT above the untuned NegLabel score it starts from.
    assert "OOD detection" in table_output and "NegLabel (untuned)" in table_output
    ood = client.search_runs([experiment.experiment_id], "tags.`orchestrator.role` = 'trial' and tags.family = 'ood'")
    auroc = {run.data.tags["setup"]: run.data.metrics["auroc"] for run in ood}
    assert sorted(auroc) == ["lapt", "lapt_no_cross_distribution", "lapt_no_cross_modal", "neglabel", "zero_shot"]
    assert auroc["lapt"] > auroc["neglabel"], auroc
    # `orchestrator ui`, opened as the user opens the address it prints.
    trials = client.search_runs([experiment.experiment_id], "tags.`orchestrator.role` = 'trial'")
    with orchestrator_ui(tmp_path, environment) as page:
        chromium.get(page)
        # The count shows before the rows render: wait until every trial's row is there.
        shown = wait_for_text(chromium, ["Training runs", "matching runs", *(run.info.run_name for run in trials)])
        chromium.save_screenshot(str(tmp_path / "mlflow-ui.png"))
    assert "Training runs" in shown and "13 matching runs" in shown, shown
    for column in ("best_mAP", "best_auroc", "setup", "label_ratio", "seed"):
        assert column in shown.splitlines(), column
    mlr = [run for run in trials if run.data.tags["family"] == "mlr"]
    ranked = sorted(mlr, key=lambda run: -run.data.metrics["best_mAP"])
    lines = shown.splitlines()
    # Run names (setup, dataset, ratio, seed) best first, and each trial's mAP and ratio in its row;
    # the LAPT trials (no mAP) are listed too, with their AUROC.
    assert [line for line in lines if line in {run.info.run_name for run in mlr}] == [run.info.run_name for run in ranked]
    for run in trials:
        assert run.info.run_name in lines and run.data.tags["label_ratio"] in lines
        metric = "best_mAP" if run in mlr else "best_auroc"
        assert as_javascript_prints(run.data.metrics[metric]) in lines, (run.info.run_name, metric)


AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
"""PyTorch, oneDNN and MKL limited to AVX2 kernels: the arithmetic of a CPU without AVX-512 or AMX."""


@pytest.mark.integration
def test_demo_every_setup_learns_on_avx2_kernels(tmp_path):
    # fp32 sums in another order (other SIMD widths) give the pre-trained demo backbone other weights
    # (up to 0.11 apart after its 200 steps); every setup must learn on those too.
    environment = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **AVX2_KERNELS}
    # The MLR setups at 50%, what `every_setup_learns` judges (LAPT's cells are the quick start's).
    command = [sys.executable, "-m", "orchestrator", "run", "smoke.yaml", "--set", "label_ratios=[0.5]",
               "--set", "setups=[baseline, positive_coop, negative_coop, dual_coop]"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    every_setup_learns(tmp_path)


def every_setup_learns(folder: Path):
    """Check that at 50% of the labels every setup of the demo run in `folder` is 12 mAP points
    above chance (the mean prevalence of the test labels); return the MLflow client and experiment."""
    from mlflow.tracking import MlflowClient

    from trainables import data

    from orchestrator.specs import load_spec

    spec = load_spec(REPO / "search_spaces" / "smoke.yaml", check_data=False).spec
    test = data.build_dataset(spec.datasets[0], "test", folder / "runs" / "data")
    chance = 100 * float((test.labels == 1).mean())
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    trials = client.search_runs([experiment.experiment_id], "tags.`orchestrator.role` = 'trial' and tags.label_ratio = '0.5'")
    best = {run.data.tags["setup"]: run.data.metrics["best_mAP"] for run in trials}
    assert sorted(best) == sorted(["baseline", "positive_coop", "negative_coop", "dual_coop"])
    assert all(value >= chance + 12 for value in best.values()), (chance, best)
    return client, experiment


def as_javascript_prints(value: float) -> str:
    """A number as the MLflow UI (JavaScript's Number.toString) shows it: 100.0 as "100"."""
    return str(int(value)) if value.is_integer() else repr(value)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class orchestrator_ui:
    """`python -m orchestrator ui --port P` in `cwd`; entering gives the trials address it printed."""

    def __init__(self, cwd: Path, environment: dict):
        self.port = free_port()
        command = [sys.executable, "-m", "orchestrator", "ui", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=subprocess.PIPE, text=True, start_new_session=True
        )

    def __enter__(self) -> str:
        header = self.process.stdout.readline()
        assert header.startswith(f"MLflow UI on http://127.0.0.1:{self.port}"), header
        page = self.process.stdout.readline().split(": ", 1)[1].strip()
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return page
            except OSError:
                assert time.monotonic() < deadline and self.process.poll() is None, "the MLflow UI did not start"
                time.sleep(1)

    def __exit__(self, *exc) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.process.stdout.close()


def wait_for_text(driver, texts: list[str], timeout_s: float = 90) -> str:
    """The page's visible text once it contains every one of `texts` (the UI renders the runs table
    after loading), or as it is after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = driver.find_element("tag name", "body").text
        if all(text in shown for text in texts) or time.monotonic() > deadline:
            return shown
        time.sleep(1)
