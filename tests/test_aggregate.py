"""The `table` command on a real MLflow store: what it prints, writes and logs, the rerun commands, and bad input."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import UserInputError

from orchestrator import cli
from orchestrator.families.mlr import tables as mlr_tables
from orchestrator.report import table as table_command
from orchestrator.report.experiment import Target, launch_run, read_spec, spec_source
from orchestrator.report.reader import check_metric
from orchestrator.report.render import FILE_NAMES, FORMATS
from orchestrator.specs import load_spec

SHAPES = ("shapes", "RN-tiny/random@128")
SEARCH_NAME = "tiny-search"
# (setup, ratio) -> gamma_neg tried -> best_mAP; the best of each cell is marked.
SEARCHES = {
    ("positive_coop", 0.1): {"0.5": 60.0, "2.75": 66.0, "4.0": 63.0, "5.5": 61.0},  # best 2.75
    ("positive_coop", 0.5): {"0.5": 70.0, "2.75": 71.0, "4.0": 74.0, "5.5": 72.0},  # best 4.0
    ("baseline", 0.1): {"0.5": 62.0, "2.75": 61.0, "4.0": 60.0, "5.5": 59.0},  # best 0.5
    ("baseline", 0.5): {"0.5": 69.0, "2.75": 73.0, "4.0": 70.0, "5.5": 68.0},  # best 2.75
}
SPEC = """\
name: tiny-search
datasets:
  - {name: shapes, kind: synthetic}
backbone: {model: RN-tiny, pretrained: null, image_size: 128}
setups: [baseline, positive_coop]
label_ratios: [0.1, 0.5]
seeds: [1]
loss:
  gamma_neg: {low: 0.0, high: 6.0}
search: {kind: optuna, num_samples: 4}
scheduler: {kind: asha}
tracking_uri: sqlite:///%s
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, log_trial) -> dict:
    """An experiment with an Optuna-like search and a launch run, one without a launch run, an empty one."""
    folder = tmp_path_factory.mktemp("aggregate")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec_path = folder / "tiny_search.yaml"
    spec_path.write_text(SPEC % (folder / "mlflow.db"))
    client = MlflowClient(tracking_uri=uri)

    search = client.create_experiment(SEARCH_NAME, artifact_location=(folder / "artifacts" / "search").as_uri())
    launch = client.create_run(search, tags={"orchestrator.role": "launch", "spec_hash": "abc", "spec_path": str(spec_path)}).info.run_id
    for (setup, ratio), trials in SEARCHES.items():
        for trial, (gamma_neg, value) in enumerate(trials.items()):
            log_trial(client, search, setup, SHAPES, ratio, 1, value, params={"loss.gamma_neg": gamma_neg}, trial=trial)

    grid = client.create_experiment("grid-only", artifact_location=(folder / "artifacts" / "grid").as_uri())
    for setup in ("baseline", "dual_coop"):
        for ratio in (0.1, 0.5):
            log_trial(client, grid, setup, SHAPES, ratio, 0, 50 + 10 * ratio)

    client.create_experiment("empty", artifact_location=(folder / "artifacts" / "empty").as_uri())
    return {"uri": uri, "client": client, "spec_path": spec_path, "launch": launch, "folder": folder}


def table_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    table_command.configure_parser(parser)
    return parser.parse_args(list(argv))


def commands_from(stderr: str) -> dict[str, list[str]]:
    """The printed rerun commands, split like a shell, keyed by the `name=` override."""
    commands = {}
    for line in stderr.splitlines():
        if line.strip().startswith("python -m orchestrator run"):
            words = shlex.split(line)
            overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
            commands[overrides[0].removeprefix("name=")] = words
    return commands


def test_parser_choices_are_the_tables_choices():
    for metric in ("best_mAP", "last_mAP"):  # the metrics the tables judge a cell by
        check_metric(metric)
        assert table_args("experiment", "--metric", metric).metric == metric
    with pytest.raises(UserInputError):
        check_metric("mAP")
    with pytest.raises(SystemExit):
        table_args("experiment", "--metric", "mAP")
    for fmt in FORMATS:  # the parser's choices are the renderer's formats, not a copy of them
        assert table_args("experiment", "--format", fmt).format == fmt
    with pytest.raises(SystemExit):
        table_args("experiment", "--format", "pdf")


def test_markdown_on_stdout_best_configurations_on_stderr(store, capsys):
    assert table_command.run(table_args(SEARCH_NAME, "--tracking-uri", store["uri"], "--format", "markdown", "--no-log")) == 0
    out, err = capsys.readouterr()
    header = [field.strip() for field in out.splitlines()[0].strip("|").split("|")]
    assert header == ["Dataset", "Setup", "10%", "50%", "Avg", "#Params", "Train h"]
    fields = [[field.strip() for field in line.strip("|").split("|")] for line in out.splitlines()[2:] if line.startswith("|")]
    rows = {row[1]: dict(zip(header, row)) for row in fields}
    # A cell's value is its best trial; best of each column in bold.
    assert (rows["PositiveCoOp"]["10%"], rows["PositiveCoOp"]["50%"]) == ("**66.0**", "**74.0**")
    assert (rows["Baseline"]["10%"], rows["Baseline"]["50%"]) == ("62.0", "73.0")
    assert "Best configuration" not in out
    assert "Best configuration per setup and searched cell (by best_mAP)" in err
    assert "PositiveCoOp · shapes (RN-tiny/random@128) · 10% · seed 1: best_mAP 66.00 (best of 4 trials) with loss.gamma_neg=2.75" in err


def test_rerun_commands_reproduce_the_best_configuration(store, capsys):
    table_command.run(table_args(SEARCH_NAME, "--tracking-uri", store["uri"], "--format", "csv", "--no-log"))
    commands = commands_from(capsys.readouterr().err)
    assert len(commands) == len(SEARCHES)
    expected_gamma = {(setup, ratio): max(trials, key=trials.get) for (setup, ratio), trials in SEARCHES.items()}
    for (setup, ratio), gamma_neg in expected_gamma.items():
        name = f"{SEARCH_NAME}-best-{setup}-shapes-r{ratio:g}-s1"
        words = commands[name]
        assert words[:5] == ["python", "-m", "orchestrator", "run", str(store["spec_path"])]
        overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        # The orchestrator's own spec loader accepts the command and yields the one configuration.
        spec = load_spec(words[4], overrides, check_data=False).spec
        assert spec.name == name and spec.setups == [setup] and spec.label_ratios == [ratio] and spec.seeds == [1]
        assert spec.search.kind == "grid" and spec.scheduler.kind == "none"
        assert spec.loss.gamma_neg == float(gamma_neg)


def test_rerun_command_picks_the_cells_dataset_from_a_multi_dataset_spec(tmp_path):
    spec_path = tmp_path / "two.yaml"
    two_datasets = "  - {name: shapes, kind: synthetic}\n  - {name: dots, kind: synthetic, synthetic_num_classes: 4}"
    spec_path.write_text(SPEC.replace("  - {name: shapes, kind: synthetic}", two_datasets) % (tmp_path / "mlflow.db"))
    best = pd.Series({"setup": "baseline", "dataset": "dots", "label_ratio": 0.5, "seed": 1, "cell_key": "baseline-dots-r0.5-s1",
                      "params.loss.gamma_neg": "1.25"})
    command = mlr_tables.rerun_command(best, ["params.loss.gamma_neg"], str(spec_path), read_spec(spec_path), SEARCH_NAME)
    words = shlex.split(command)
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    spec = load_spec(words[4], overrides, check_data=False).spec
    assert [dataset.name for dataset in spec.datasets] == ["dots"] and spec.datasets[0].synthetic_num_classes == 4
    assert spec.loss.gamma_neg == 1.25 and spec.label_ratios == [0.5]


def test_out_writes_every_format_and_the_plots_and_logs_them(store, tmp_path, capsys):
    out = tmp_path / "out"
    assert table_command.run(table_args(SEARCH_NAME, "--tracking-uri", store["uri"], "--out", str(out), "--reference", "paper")) == 0
    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    tables_written = {f"tables/{name}" for name in FILE_NAMES.values()} | {"tables/best_configs.csv"}
    plots_written = {f"plots/{stem}.{fmt}" for stem in ("map_vs_ratio", "search_scatter", "param_importances") for fmt in ("png", "svg")}
    assert written == tables_written | plots_written
    assert all((out / path).stat().st_size > 0 for path in written)
    assert (out / "plots/map_vs_ratio.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert r"\toprule" in (out / "tables/comparison.tex").read_text()
    best = pd.read_csv(out / "tables/best_configs.csv")
    assert len(best) == 4 and set(best["params.loss.gamma_neg"]) == {0.5, 2.75, 4.0}
    # Logged under the experiment's launch run.
    client = store["client"]
    logged = {info.path for folder in ("tables", "plots") for info in client.list_artifacts(store["launch"], folder)}
    assert logged == written
    assert "Logged tables/ and plots/ to run " + store["launch"] in capsys.readouterr().err


def test_a_launch_run_is_made_when_the_experiment_has_none(store, capsys):
    client = store["client"]
    experiment = client.get_experiment_by_name("grid-only").experiment_id
    assert launch_run(client, experiment) is None
    assert table_command.run(table_args("grid-only", "--tracking-uri", store["uri"])) == 0
    launch = launch_run(client, experiment)
    assert launch is not None and launch.info.status == "FINISHED"
    assert {info.path for info in client.list_artifacts(launch.info.run_id, "plots")} == {"plots/map_vs_ratio.png", "plots/map_vs_ratio.svg"}
    out = capsys.readouterr().out
    assert "grid-only: best_mAP" in out and "55.0*" in out  # rich, the default; best marked
    assert "Best configuration" not in out  # no search, no rerun commands


def test_a_spec_names_the_experiment_and_its_store(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not where the store is: the spec's tracking_uri finds it
    assert table_command.run(table_args(str(store["spec_path"]), "--format", "csv", "--no-log")) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert set(frame["setup"]) == {"baseline", "positive_coop"}
    assert frame.set_index("setup").loc["positive_coop", "10%_mean"] == 66.0


def test_spec_source_order(store, tmp_path):
    client = store["client"]
    target = Target(SEARCH_NAME, store["uri"])
    launch = client.get_run(store["launch"])
    assert spec_source(client, target, launch)[0] == str(store["spec_path"])
    # Without a spec_path tag: the launch run's spec.yaml artifact in a local store.
    experiment = client.create_experiment("artifact-spec", artifact_location=(tmp_path / "artifacts").as_uri())
    bare = client.create_run(experiment, tags={"orchestrator.role": "launch"}).info.run_id
    local_copy = tmp_path / "spec.yaml"
    local_copy.write_text(store["spec_path"].read_text())
    client.log_artifact(bare, str(local_copy))
    local_copy.unlink()
    spec, raw = spec_source(client, Target("artifact-spec", store["uri"]), client.get_run(bare))
    assert spec.endswith("spec.yaml") and raw["name"] == SEARCH_NAME
    # Nothing readable: the experiment name.
    assert spec_source(client, Target("elsewhere", store["uri"]), None) == ("elsewhere", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "no MLflow experiment named 'nope'"),
        (["empty"], "MLflow experiment 'empty' has no trial runs"),
        (["missing.yaml"], "spec file not found: missing.yaml"),
    ],
)
def test_bad_input_is_a_one_line_user_error(store, argv, message):
    with pytest.raises(UserInputError, match=message) as error:
        table_command.run(table_args(*argv, "--tracking-uri", store["uri"], "--no-log"))
    assert "\n" not in str(error.value)


def test_a_missing_store_is_not_created(tmp_path):
    with pytest.raises(UserInputError, match="no MLflow store at"):
        table_command.run(table_args("anything", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert not (tmp_path / "mlflow.db").exists()


def test_the_cli_exits_2_on_an_unknown_experiment(store, capsys):
    assert cli.main(["table", "nope", "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: no MLflow experiment named 'nope' in {store['uri']}"


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_table_of_a_real_smoke_run(tmp_path):
    """The real CLI trains the smoke spec (scaled down) with the real trainable, then `table` reads it back."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    smoke = [
        "--set", "datasets.0.synthetic_num_train=64", "--set", "datasets.0.synthetic_num_test=32",
        "--set", "training.epochs=2", "--set", "label_ratios=[0.5]", "--set", "setups=[baseline,positive_coop]",
        "--set", "seeds=[1,2]", "--set", "backbone.pretrained=null",
    ]  # fmt: skip
    trained = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "smoke.yaml", *smoke],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrator", "table", "smoke.yaml", "--format", "csv", "--out", "out"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    table = pd.read_csv(io.StringIO(shown.stdout)).set_index("setup")
    assert list(table.index) == ["baseline", "positive_coop"]

    # Independently: each trial's best epoch from its per-epoch mAP history, averaged over the two seeds.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], "tags.`orchestrator.role` = 'trial'")
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}
    for setup in ("baseline", "positive_coop"):
        best = [
            max(metric.value for metric in client.get_metric_history(run.info.run_id, "mAP"))
            for run in runs
            if run.data.tags["setup"] == setup
        ]
        assert table.loc[setup, "50%_mean"] == pytest.approx(statistics.mean(best))
        assert table.loc[setup, "50%_std"] == pytest.approx(statistics.stdev(best))
        assert table.loc[setup, "50%_n"] == 2
    assert table.loc["positive_coop", "params"] > table.loc["baseline", "params"] > 0
    assert (tmp_path / "out/plots/map_vs_ratio.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    launch = launch_run(client, experiment)
    assert {info.path for info in client.list_artifacts(launch.info.run_id, "tables")} >= {"tables/comparison.md"}
