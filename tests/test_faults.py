"""Faults provoked for real on the CLI: a trial that diverges, a spec that is wrong in many ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.track.schema import ERROR_TAG, ROLE_TAG, TRIAL_ROLE

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
SPEC = {
    "name": "faults",
    "datasets": [{"name": "shapes", "kind": "synthetic", "synthetic_num_train": 16, "synthetic_num_test": 8}],
    "backbone": {"model": "RN-tiny", "image_size": 64},
    "setups": ["baseline", "dual_coop"],
    "label_ratios": [0.5],
    "seeds": [1, 2],
    "training": {"epochs": 2},
}


def cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.integration
def test_diverging_trials_fail_with_their_reason_and_the_others_finish(tmp_path):
    # A learning rate of 1e38 blows the Baseline's head up to NaN within its second epoch (4 steps
    # each); DualCoOp keeps its own learning rates.
    spec = {**SPEC, "training": {"epochs": 2, "batch_size": 4}, "lr_per_setup": {"baseline": {"projector": 1e38}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = cli(tmp_path, "run", "spec.yaml")
    assert done.returncode == 1, done.stdout + done.stderr  # 1: some trials failed
    assert "2 of 4 trials failed" in done.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faults")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id]) if r.data.tags[ROLE_TAG] == TRIAL_ROLE}
    for seed in (1, 2):
        failed, finished = runs[f"baseline-shapes-r0.5-s{seed}"], runs[f"dual_coop-shapes-r0.5-s{seed}"]
        assert failed.info.status == "FAILED"
        assert failed.data.tags[ERROR_TAG].startswith("FloatingPointError: training loss is ")
        assert " at epoch 2, step " in failed.data.tags[ERROR_TAG]
        traceback = Path(client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()
        assert 'trainables/step.py", line' in traceback and "FloatingPointError" in traceback
        assert "\x1b[" not in traceback  # Ray's terminal colours are gone
        assert finished.info.status == "FINISHED" and "best_mAP" in finished.data.metrics

    status = cli(tmp_path, "status", "faults")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].endswith(": 4 trials: 2 finished, 0 running, 2 failed, 0 pending")
    assert lines[1].startswith("  failed   baseline-shapes-r0.5-s1: FloatingPointError: training loss is ")
    assert len(lines) == 3

    table = cli(tmp_path, "table", "faults", "--no-log")
    assert table.returncode == 0, table.stderr
    assert "2 failed trial(s), not in the table:" in table.stderr
    assert "  baseline-shapes-r0.5-s1: FloatingPointError: training loss is " in table.stderr
    baseline_row = next(line for line in table.stdout.splitlines() if "Baseline" in line)
    assert "–" in baseline_row or "-" in baseline_row  # its cell has no finished trial


BASE_YAML = yaml.safe_dump(SPEC)
MALFORMED = {
    # (name: the spec file's text, or a dict of top-level fields replaced in SPEC)
    "ratio above one": {"label_ratios": [1.5]},
    "ratio zero": {"label_ratios": [0]},
    "ratio as text": {"label_ratios": "half"},
    "unknown setup": {"setups": ["baseline", "quad_coop"]},
    "no setups": {"setups": []},
    "no seeds": {"seeds": []},
    "no datasets for MLR setups": {"datasets": []},
    "negative gamma": {"loss": {"gamma_neg": -1}},
    "clip of one": {"loss": {"clip": 1.0}},
    "gamma as text": {"loss": {"gamma_pos": "high"}},
    "zero epochs": {"training": {"epochs": 0}},
    "unknown top-level key": {"colour": "blue"},
    "misspelt nested key": {"training": {"epoch": 3}},
    "unknown backbone": {"backbone": {"model": "NoSuchNet", "image_size": 64}},
    "missing dataset root": {"datasets": [{"name": "coco", "kind": "coco", "root": "/no/such/coco"}]},
    "root with spaces and non-ASCII": {"datasets": [{"name": "coco", "kind": "coco", "root": "/tmp/dätä sets/cöcö 2014"}]},
    "unknown dataset kind": {"datasets": [{"name": "x", "kind": "imagenet22k", "root": "/data"}]},
    "manifest file missing": {"datasets": [{"name": "m", "kind": "manifest", "train_manifest": "/nö/train.csv", "test_manifest": "/nö/test.csv"}]},
    "fractional GPUs above one": {"resources": {"gpus_per_trial": 1.5}},
    "optuna without samples": {"search": {"kind": "optuna"}},
    "unknown search kind": {"search": {"kind": "bayes"}},
    "negative learning rate": {"lr_per_setup": {"dual_coop": {"prompt": -1}}},
    "learning rate of an unknown setup": {"lr_per_setup": {"quad_coop": {"prompt": 0.1}}},
    "tracking URI of an unknown scheme": {"tracking_uri": "ftp://mlflow.example.org"},
    "name with a slash": {"name": "a/b"},
    "duplicate seeds": {"seeds": [1, 1]},
    "YAML syntax error": "name: x\nsetups: [baseline\n",
    "empty file": "",
    "a list, not a mapping": "- baseline\n- dual_coop\n",
    "binary junk": "\x00\x01\x02 \xff",
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_spec_is_one_line_per_problem_and_exit_code_2(case, command, tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    monkeypatch.chdir(tmp_path)
    change = MALFORMED[case]
    text = change if isinstance(change, str) else yaml.safe_dump({**SPEC, **change}, allow_unicode=True)
    path = tmp_path / "spëc with space.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    assert cli.main([command, str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert 1 <= len(lines) <= 3, captured.err
    assert all(line.startswith((f"{path}:", "error:")) for line in lines), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


@pytest.mark.parametrize(
    "args",
    [["--set", "training.epochs=ten"], ["--set", "no_such_field=1"], ["--set", "label_ratios=[2]"], ["--set", "oops"],
     ["--tracking-uri", "not a uri"]],
)  # fmt: skip
def test_bad_overrides_are_one_line_errors(args, tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(BASE_YAML)
    assert cli.main(["validate", "spec.yaml", *args]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err, captured.err


def test_missing_spec_file_is_one_line(tmp_path, monkeypatch, capsys):
    from orchestrator import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "nö such spec.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: spec file not found: nö such spec.yaml (looked in the working directory and ")
