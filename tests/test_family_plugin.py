"""A third task family, registered from here, runs end to end through `run` and `table` on real Ray
and a real MLflow store, with nothing outside this file changed for it: the test of the
orchestrator's family plug-ins (`orchestrator.family`).

The toy family counts: each trial "trains" for `toy.epochs` epochs and reports `score`, which is
its seed plus `toy.offset` times the epoch; its table has one column, the best score, by setup.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from trainables.config import BackboneConfig
from trainables.tasks import TaskFamily

from orchestrator import cli, family
from orchestrator.report.render import write_formats
from orchestrator.specs.grid import Cell, Trial, trial_key
from orchestrator.track.schema import FAMILY_TAG, ROLE_TAG, TRIAL_ROLE

REPO = Path(__file__).resolve().parent.parent


# -- the toy family: its config and loop (what `trainables/<family>/` holds) ----------------------


class ToySet(BaseModel):
    name: str = "counting"


class ToyTraining(BaseModel):
    epochs: int


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setup: str
    dataset: ToySet
    backbone: BackboneConfig
    training: ToyTraining
    offset: float
    label_ratio: float
    seed: int


def run_toy(config: ToyConfig, state: dict | None) -> Iterator[tuple[dict, dict]]:
    state = state or {"epoch": 0, "best": float("-inf")}
    for epoch in range(state["epoch"] + 1, config.training.epochs + 1):
        score = config.seed + config.offset * epoch
        state = {"epoch": epoch, "best": max(state["best"], score)}
        yield {"epoch": epoch, "train_loss": 1.0 / epoch, "score": score, "best_score": state["best"]}, state


TOY_TASK = TaskFamily("toy", ToyConfig, run_toy, "score", source=f"{__name__}:TOY_TASK")


# -- its orchestrator side: spec section, cells, trials, table ------------------------------------


class ToySection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 2
    offset: float = 0.5


class Toy(family.Family):
    task = TOY_TASK
    section = "toy"
    section_model = ToySection

    def setups(self):
        return ["toy"]

    def problems(self, spec):
        if self.setups_in(spec) and spec.section("toy") is None:
            return [("toy", "setup 'toy' needs a toy section")]
        return []

    def cells(self, spec):
        return [Cell(ToySet(), "toy", 1.0, seed, spec.backbone.configs()[0], family="toy") for seed in spec.seeds]

    def fixed_trials(self, spec, cell):
        section = spec.section("toy")
        config = ToyConfig(setup="toy", dataset=cell.dataset, backbone=cell.backbone, training={"epochs": section.epochs},
                           offset=section.offset, label_ratio=cell.label_ratio, seed=cell.seed).model_dump(mode="json")  # fmt: skip
        return [Trial(cell.key, cell.key, trial_key(cell.key, config), config, cell.setup, family="toy")]

    def tables(self, report):
        from orchestrator.report.aggregate import TablePart

        trials = report.trials_of("toy")
        table = trials[trials["status"] == "FINISHED"].groupby("setup")[["best_score"]].mean()

        def document(fmt: str) -> str:
            return table.to_csv() if fmt == "csv" else table.to_string() + "\n"

        return [TablePart.of_document(document, lambda out_dir: write_formats(out_dir, "toy", document))]


def main(argv: list[str]) -> int:
    """The CLI with the toy family registered (what a Ray-running test starts in a process of its own)."""
    family.register(Toy())
    return cli.main(argv)


@pytest.fixture
def toy_family():
    toy = family.register(Toy())
    yield toy
    family.unregister(toy.name)


@pytest.fixture
def toy_spec(tmp_path) -> Path:
    spec = {
        "name": "toy-counting",
        "backbone": {"model": "RN-tiny", "image_size": 64},
        "setups": ["toy"],
        "seeds": [1, 2],
        "toy": {"epochs": 2, "offset": 0.5},
        "storage": str(tmp_path / "runs"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "cache_dir": str(tmp_path / "cache"),
        "data_dir": str(tmp_path / "data"),
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.integration
def test_a_registered_family_runs_and_tabulates_on_real_ray_and_mlflow(toy_family, toy_spec, tmp_path, capsys):
    # `run` in its own process (its Ray and its environment end with it); the worker finds the toy
    # family through its trials' configs (`family_source`), importing this file from PYTHONPATH.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)])}
    command = [sys.executable, "-c", f"import sys, {__name__} as toy; sys.exit(toy.main(sys.argv[1:]))", "run", str(toy_spec)]
    done = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy-counting").experiment_id
    trials = client.search_runs([experiment], f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'")
    assert sorted(run.data.tags["seed"] for run in trials) == ["1", "2"]
    for run in trials:
        seed = int(run.data.tags["seed"])
        assert run.info.status == "FINISHED" and run.data.tags[FAMILY_TAG] == "toy"
        assert run.data.metrics["best_score"] == seed + 0.5 * 2
        assert [m.value for m in client.get_metric_history(run.info.run_id, "score")] == [seed + 0.5, seed + 1.0]
        assert run.data.params["offset"] == "0.5"

    assert cli.main(["table", str(toy_spec), "--format", "csv", "--no-log"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col=0)
    assert table.loc["toy", "best_score"] == pytest.approx((2.0 + 3.0) / 2)


def test_a_registered_family_s_section_is_checked_like_any_field(toy_family, toy_spec, capsys):
    assert cli.main(["validate", str(toy_spec), "--set", "toy.bogus=1"]) == 2
    error = capsys.readouterr().err
    assert "toy.bogus: unknown key; expected one of: epochs, offset" in error and "Traceback" not in error
    assert cli.main(["validate", str(toy_spec), "--set", "toy=null"]) == 2
    assert "toy: setup 'toy' needs a toy section" in capsys.readouterr().err
