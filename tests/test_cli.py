"""The command line in-process: help, validate, describe, cache, ui, and run's checks before Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator import cli
from orchestrator.specs import SEARCH_SPACES_DIR

REPO = SEARCH_SPACES_DIR.parent
MODEL_CONFIGS = REPO / "trainables" / "backbone" / "model_configs"


@pytest.fixture
def tiny_spec(write_spec, minimal_spec):
    """A valid spec in a fresh working directory: 1 dataset x 2 setups x 2 ratios x 1 seed."""
    raw = minimal_spec(
        name="tiny",
        datasets=[
            {"name": "shapes", "kind": "synthetic", "synthetic_num_train": 8, "synthetic_num_test": 8,
             "synthetic_image_size": 32, "synthetic_num_classes": 5}
        ],  # fmt: skip
        label_ratios=[0.2, 0.7],
        seeds=[4],
        training={"epochs": 2, "eval_batch_size": 8},
    )
    return write_spec(raw, "tiny.yaml")


@pytest.mark.parametrize("command", [[], ["run"], ["validate"], ["describe"], ["cache"], ["table"], ["status"], ["ui"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m orchestrator {' '.join(command)}".rstrip())
    if not command:
        for name in ("run", "validate", "describe", "cache", "table", "status", "ui"):
            assert f"\n    {name} " in text


def test_validate_reports_the_counts(tiny_spec, capsys):
    assert cli.main(["validate", str(tiny_spec), "--set", "loss.gamma_neg=[0, 1, 2]"]) == 0
    assert capsys.readouterr().out.strip() == f"{tiny_spec}: valid (4 cells, 12 trials)"


def test_describe_counts_trials_and_parameters(tiny_spec, capsys, tmp_path):
    assert cli.main(["describe", str(tiny_spec)]) == 0
    text = capsys.readouterr().out
    assert "Cells: 4 = 1 datasets x 2 setups x 2 label ratios x 1 seeds" in text
    assert "Trials: 4;" in text
    config = json.loads((MODEL_CONFIGS / "RN-tiny.json").read_text())
    d, width, classes, n_ctx = config["embed_dim"], config["text_cfg"]["width"], 5, 16
    baseline = d * 2 * classes + 2 * classes  # Linear(d, 2K) applied per location
    dual = 2 * classes * n_ctx * width  # class-specific positive and negative contexts
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.startswith(("baseline", "dual_coop"))}
    assert rows == {"baseline": f"{baseline:,}", "dual_coop": f"{dual:,}"}
    assert f"Ray results:    {tmp_path / 'runs' / 'tiny'}" in text
    assert f"MLflow:         sqlite:///{tmp_path / 'mlflow.db'}" in text


def test_cache_fills_then_reuses(tiny_spec, capsys, tmp_path):
    assert cli.main(["cache", str(tiny_spec)]) == 0
    first = capsys.readouterr().out
    assert "2 encoded, 0 already cached" in first  # the train split (resize-only view) and the test split
    assert len(list((tmp_path / "runs" / "cache").rglob("*.npy"))) == 2
    assert cli.main(["cache", str(tiny_spec)]) == 0
    assert "0 encoded, 2 already cached" in capsys.readouterr().out


def test_ui_without_a_store_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["ui"]) == 2
    expected = f"error: no MLflow store at {tmp_path / 'mlflow.db'} (run `python -m orchestrator run SPEC` first)"
    assert capsys.readouterr().err.strip() == expected


def test_ui_execs_mlflow_on_the_spec_store_and_prints_its_runs_view(tiny_spec, tmp_path, monkeypatch, capsys):
    from orchestrator.track.store import TrackingStore

    store = TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    started = []
    monkeypatch.setattr(cli.os, "execv", lambda program, argv: started.append(argv))
    assert cli.main(["ui", str(tiny_spec), "--port", "5123"]) == 0
    (argv,) = started
    assert argv[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "--host", "127.0.0.1", "--port", "5123"]  # fmt: skip
    printed = capsys.readouterr().out
    page = f"http://127.0.0.1:5123/#/experiments/{store.experiment_id}/runs?viewStateShareKey=orchestrator-trials"
    assert f"  tiny: {page}" in printed.splitlines()


def test_run_refuses_an_unreachable_tracking_server_before_starting_ray(tiny_spec, capsys):
    assert cli.main(["run", str(tiny_spec), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
    assert "\n" not in err


def test_run_refuses_a_missing_dataset_root(tiny_spec, capsys, tmp_path):
    assert cli.main(["run", str(tiny_spec), "--set", "datasets.0={name: voc, kind: voc, root: nowhere}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --set: datasets.0: dataset 'voc': root ") and str(tmp_path / "nowhere") in line


@pytest.mark.parametrize("buffered", [True, False])
def test_output_piped_into_a_reader_that_has_gone_is_no_traceback(tiny_spec, tmp_path, buffered):
    """`python -m orchestrator validate SPEC | head -c 0`: exit code 1 (as Python's own), nothing on stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "orchestrator", "validate", str(tiny_spec)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the command writes
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1
    assert stderr == ""
