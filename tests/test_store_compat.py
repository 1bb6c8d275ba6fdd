"""A store written before the orchestrator was laid out by concern resumes and tabulates after it.

`fixtures/store-before-layout.tgz` is a real launch killed midway, made by commit 44c1fdb (the
flat `orchestrator/` of 21 modules) in /tmp/orchestrator-store-before-layout:

    python -m orchestrator run smoke.yaml --set datasets.0.synthetic_num_train=64 \
        --set datasets.0.synthetic_num_test=32 --set label_ratios=[0.5] --set backbone.pretrained=null \
        --set 'setups=[baseline, dual_coop, negative_coop]' --set training.epochs=6 \
        --set resources.max_concurrent_trials=1        # SIGKILLed with negative_coop at epoch 4 of 6

kept without its generated images and feature cache (made again on resume) and without the killed
driver's lease. Tune's pickles (tuner.pkl, the searcher state) name that layout's modules
(`orchestrator.grid.Plan`, `orchestrator.tracking.MlflowCallback`, ...), and they hold absolute
paths, so the store is unpacked where it was made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.track.schema import ROLE_TAG, TRIAL_KEY_TAG

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "store-before-layout.tgz"
WHERE_MADE = Path("/tmp/orchestrator-store-before-layout")
LAUNCH = ["run", "smoke.yaml", "--set", "datasets.0.synthetic_num_train=64", "--set", "datasets.0.synthetic_num_test=32",
          "--set", "label_ratios=[0.5]", "--set", "backbone.pretrained=null",
          "--set", "setups=[baseline, dual_coop, negative_coop]", "--set", "training.epochs=6",
          "--set", "resources.max_concurrent_trials=1"]  # fmt: skip


def orchestrator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=WHERE_MADE, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )  # fmt: skip


def test_a_store_from_before_the_layout_resumes_and_tabulates():
    shutil.rmtree(WHERE_MADE, ignore_errors=True)
    WHERE_MADE.mkdir(parents=True)
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(WHERE_MADE, filter="data")
    mlflow = MlflowClient(f"sqlite:///{WHERE_MADE / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("smoke").experiment_id
    before = {r.data.tags[TRIAL_KEY_TAG]: r for r in mlflow.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")}
    assert sorted(r.info.status for r in before.values()) == ["FINISHED", "FINISHED", "RUNNING"]

    resumed = orchestrator(*LAUNCH)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.startswith("Resuming 'smoke'"), resumed.stdout

    after = mlflow.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")
    assert sorted(r.data.tags[TRIAL_KEY_TAG] for r in after) == sorted(before)  # no trial run twice
    assert {r.info.status for r in after} == {"FINISHED"}
    for run in after:
        key = run.data.tags[TRIAL_KEY_TAG]
        assert run.info.run_id == before[key].info.run_id  # the killed trial continued in its own run
        assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "mAP")] == list(range(1, 7)), key

    table = orchestrator("table", "smoke", "--out", str(WHERE_MADE / "tables"))
    assert table.returncode == 0, table.stderr
    for setup in ("Baseline", "DualCoOp", "NegativeCoOp"):
        assert setup in table.stdout, table.stdout
    shutil.rmtree(WHERE_MADE, ignore_errors=True)
