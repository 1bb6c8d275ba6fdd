"""Stores written by earlier versions resume and tabulate with this one (`orchestrator.compat`).

Each fixture is a real launch killed midway (SIGKILL), kept without its generated images and
feature cache (made again on resume) and without the killed driver's lease. Tune's pickles
(tuner.pkl, the searcher state) name the modules and classes of the version that wrote them, and
they hold absolute paths, so a store is unpacked where it was made.

`store-before-layout.tgz`, made by commit 44c1fdb (the flat `orchestrator/` of 21 modules, whose
pickles name `orchestrator.grid.Plan`, `orchestrator.tracking.MlflowCallback`, ...) in
/tmp/orchestrator-store-before-layout:

    python -m orchestrator run smoke.yaml --set datasets.0.synthetic_num_train=64 \
        --set datasets.0.synthetic_num_test=32 --set label_ratios=[0.5] --set backbone.pretrained=null \
        --set 'setups=[baseline, dual_coop, negative_coop]' --set training.epochs=6 \
        --set resources.max_concurrent_trials=1        # SIGKILLed with negative_coop at epoch 4 of 6

`store-before-wings.tgz`, made by commit 31056b1 (before the families had wings on both sides, whose
pickles name `orchestrator.run.scheduling` and the loss and training sections in
`orchestrator.specs.sections`) in /tmp/orchestrator-store-before-wings: the same command with a loss
grid (`--set 'loss.gamma_neg=[1, 2]'`, two trials per cell) and `training.epochs=40`, SIGKILLed with
two trials finished, a third at epoch 27 of 40 and three not started.
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
LAUNCH = ["run", "smoke.yaml", "--set", "datasets.0.synthetic_num_train=64", "--set", "datasets.0.synthetic_num_test=32",
          "--set", "label_ratios=[0.5]", "--set", "backbone.pretrained=null",
          "--set", "setups=[baseline, dual_coop, negative_coop]", "--set", "resources.max_concurrent_trials=1"]  # fmt: skip
STORES = {
    "before-layout": (["--set", "training.epochs=6"], 6, 3),
    "before-wings": (["--set", "training.epochs=40", "--set", "loss.gamma_neg=[1, 2]"], 40, 6),
}
"""Fixture -> (the rest of its launch command, epochs, trials)."""


def orchestrator(where: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=where, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("store", STORES)
def test_a_store_written_by_an_earlier_version_resumes_and_tabulates(store):
    launch, epochs, trials = STORES[store]
    where = Path(f"/tmp/orchestrator-store-{store}")
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    with tarfile.open(Path(__file__).parent / "fixtures" / f"store-{store}.tgz") as archive:
        archive.extractall(where, filter="data")
    mlflow = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("smoke").experiment_id
    before = {r.data.tags[TRIAL_KEY_TAG]: r for r in mlflow.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")}
    assert "RUNNING" in {r.info.status for r in before.values()}  # killed midway

    resumed = orchestrator(where, *LAUNCH, *launch)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.startswith("Resuming 'smoke'"), resumed.stdout

    after = mlflow.search_runs([experiment], f"tags.`{ROLE_TAG}` = 'trial'")
    assert len(after) == trials and {r.info.status for r in after} == {"FINISHED"}
    assert len({r.data.tags[TRIAL_KEY_TAG] for r in after}) == trials  # no trial run twice
    for run in after:
        key = run.data.tags[TRIAL_KEY_TAG]
        if key in before:
            assert run.info.run_id == before[key].info.run_id  # a killed trial continued in its own run
        assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "mAP")] == list(range(1, epochs + 1)), key

    table = orchestrator(where, "table", "smoke", "--out", str(where / "tables"))
    assert table.returncode == 0, table.stderr
    for setup in ("Baseline", "DualCoOp", "NegativeCoOp"):
        assert setup in table.stdout, table.stdout
    shutil.rmtree(where, ignore_errors=True)
