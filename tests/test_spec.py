"""The experiment spec: structure, cross-field rules, overrides, paths, and the error report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.errors import UserInputError

from orchestrator.cli import main
from orchestrator.families.mlr import trials as mlr_trials
from orchestrator.specs import (
    SEARCH_SPACES_DIR,
    SpecError,
    apply_override,
    load_spec,
    resolve_spec_path,
    spec_hash,
)

REPO = Path(__file__).resolve().parent.parent


def problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, list(overrides))
    return caught.value.problems


def test_valid_spec_gets_absolute_defaults_under_the_working_directory(make_spec, tmp_path):
    spec = make_spec()
    assert spec.storage == str(tmp_path / "runs")
    assert spec.data_dir == tmp_path / "runs" / "data"
    assert spec.cache_dir == tmp_path / "runs" / "cache"
    assert spec.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert spec.state_dir == tmp_path / "runs" / "unit"
    assert spec.results == str(tmp_path / "runs" / "unit")


def test_object_store_results_keep_the_drivers_state_in_the_working_directory(make_spec, tmp_path):
    spec = make_spec(storage="s3://bucket/grids/")
    assert (spec.storage, spec.results) == ("s3://bucket/grids", "s3://bucket/grids/unit")
    assert spec.state_dir == tmp_path / "runs" / "unit"
    assert make_spec(storage="s3://bucket/grids", state_dir="/vol/state").state_dir == Path("/vol/state")
    assert spec_hash(spec) == spec_hash(make_spec())  # where results go does not change them


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"label_ratios": [0.1, 1.5]}, "label_ratios.1", "less than or equal to 1"),
        ({"label_ratios": [0.0]}, "label_ratios.0", "greater than 0"),
        ({"storage": "s3:///prefix"}, "storage", "names no bucket"),
        ({"storage": "ftp://host/results"}, "storage", "storage is a folder or a s3/gs/abfs/abfss/hdfs URI"),
        ({"setups": ["baseline", "triple_coop"]}, "setups", "unknown setup(s) ['triple_coop']"),
        ({"trainig": {"epochs": 3}}, "trainig", "unknown key; expected one of: name, datasets"),
        ({"training": {"epocs": 3}}, "training.epocs", "unknown key; expected one of: epochs, batch_size"),
        ({"seeds": [1, 1]}, "seeds", "duplicate values [1]"),
        ({"search": {"kind": "bayes"}}, "search", "kind must be grid or optuna"),
        ({"resources": {"gpus_per_trial": 1.5}}, "resources.gpus_per_trial", "a trial computes on one GPU: use 1, or a fraction"),
        ({"resources": {"gpus_per_trial": 2}}, "resources.gpus_per_trial", "gpus_per_trial is 2, but a trial computes on one GPU"),
        ({"features": {"mode": "online", "augmentation": "autoaugment"}}, "features.augmentation", "'reference' or 'torchvision'"),
        ({"tracking_uri": "mlflow.db"}, "tracking_uri", "is not a tracking URI"),
    ],
)
def test_each_structural_problem_is_one_line_naming_file_and_field(write_spec, minimal_spec, change, field, words):
    path = write_spec(minimal_spec(**change))
    found = problems(path)
    assert len(found) == 1
    assert found[0].startswith(f"{path}: {field}: ")
    assert words in found[0]


def test_every_problem_is_reported_at_once(write_spec, minimal_spec):
    path = write_spec(minimal_spec(label_ratios=[2.0], setups=["nope"], extra_key=1))
    found = problems(path)
    assert [line.split(": ")[1] for line in found] == ["setups", "label_ratios.0", "extra_key"]


def test_loss_axis_bounds_come_from_the_loss_config(write_spec, minimal_spec):
    path = write_spec(minimal_spec(loss={"gamma_neg": [1, -2], "clip": 1.0}))
    found = problems(path)
    assert any(line.startswith(f"{path}: loss.gamma_neg.1: ") for line in found)
    assert any(line.startswith(f"{path}: loss.clip: ") and "less than 1" in line for line in found)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"loss": {"gamma_neg": {"low": 0, "high": 4}}}, "loss.gamma_neg", "needs search.kind optuna"),
        (
            {"loss": {"gamma_neg": [1, 2]}, "search": {"kind": "optuna", "num_samples": 2}},
            "loss.gamma_neg",
            "a list is a grid axis",
        ),
        ({"search": {"kind": "optuna", "num_samples": 2}}, "search.kind", "at least one loss setting"),
        (
            {"loss": {"clip": {"low": 0.5, "high": 1.5}}, "search": {"kind": "optuna", "num_samples": 2}},
            "loss.clip.high",
            "less than 1",
        ),
        ({"training": {"lr": {"prompt": 0.1, "projecter": 1.0}}}, "training.lr", "unknown parameter group(s) ['projecter']"),
        ({"training": {"lr": {"prompt": 0.1}}}, "training.lr", "'baseline' needs a learning rate for group(s) ['projector']"),
        ({"setup_options": {"dual_coop": {"n_kontext": 4}}}, "setup_options.dual_coop", "unknown option(s) n_kontext"),
        ({"setup_options": {"positiv_coop": {}}}, "setup_options.positiv_coop", "unknown setup 'positiv_coop'"),
        ({"lr_per_setup": {"dual": {"prompt": 0.1}}}, "lr_per_setup.dual", "unknown setup 'dual'"),
        ({"lr_per_setup": {"dual_coop": {"projector": 0.1}}}, "lr_per_setup.dual_coop", "no parameter group(s) ['projector']"),
        ({"setup_options": {"dual_coop": {"n_kontext": 4}}, "setups": ["baseline"]}, "setup_options.dual_coop", "n_kontext"),
        ({"scheduler": {"kind": "asha", "grace_period": 5}}, "scheduler.grace_period", "more than training.epochs (2)"),
        ({"cache_dir": "runs/unit/cache"}, "cache_dir", "inside this spec's folder"),
        (
            {"loss": {"gamma_neg": {"low": 0, "high": 4}}, "search": {"kind": "optuna", "num_samples": 2, "metric": "best_auroc"}},
            "search.metric",
            "'best_auroc' is not a metric the trials report: use one of best_mAP, mAP",
        ),
        ({"datasets": [{"name": "voc", "kind": "voc", "root": "no/such/voc"}]}, "datasets.0", "no/such/voc"),
    ],
)
def test_cross_field_rules(write_spec, minimal_spec, change, field, words):
    path = write_spec(minimal_spec(**change))
    found = problems(path)
    assert any(line.startswith(f"{path}: {field}: ") and words in line for line in found), found


def test_an_optuna_search_tells_its_studies_the_familys_ranking_metric_unless_told_one(write_spec, minimal_spec):
    searched = {"loss": {"gamma_neg": {"low": 0, "high": 4}}}
    spec = load_spec(write_spec(minimal_spec(**searched, search={"kind": "optuna", "num_samples": 2}))).spec
    assert spec.search.metric == "best_mAP"  # the MLR family's first ranking metric, as the default always was
    told = minimal_spec(**searched, search={"kind": "optuna", "num_samples": 2, "metric": "mAP"})
    assert load_spec(write_spec(told, "told.yaml")).spec.search.metric == "mAP"


def test_the_mlr_familys_sections_are_top_level_keys_every_spec_holds(write_spec, minimal_spec):
    """`loss` and `training` are the MLR family's (`default_sections`), read and hashed as the spec's own."""
    spec = load_spec(write_spec(minimal_spec())).spec
    assert spec.loss == spec.section("loss") and spec.loss.gamma_neg == 2.0  # its default, absent from the file
    assert spec.training.epochs == 2 and spec.model_dump(mode="json")["training"]["epochs"] == 2
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(minimal_spec(traning={"epochs": 3}), "typo.yaml"))
    assert "traning: unknown key; expected one of: name, datasets" in str(error.value) and "training" in str(error.value)


def test_narrowing_setups_keeps_the_other_setups_settings(write_spec, minimal_spec):
    """`--set setups=[baseline]` on a spec with per-setup options and rates runs without editing them."""
    path = write_spec(
        minimal_spec(
            setup_options={"dual_coop": {"n_ctx": 4}}, lr_per_setup={"negative_coop": {"embedding": 0.02}}
        )
    )
    spec = load_spec(path, ["setups=[baseline]"]).spec
    assert spec.setups == ["baseline"]
    assert mlr_trials.learning_rates(spec, "baseline") == {"projector": spec.training.lr["projector"]}


def test_overrides_set_nested_fields_list_items_and_yaml_values(write_spec, minimal_spec):
    path = write_spec(minimal_spec())
    spec = load_spec(
        path,
        ["training.epochs=3", "datasets.0.synthetic_num_train=16", "setups=[baseline]", "loss.gamma_neg=[1, 3]"],
    ).spec
    assert spec.training.epochs == 3
    assert spec.datasets[0].synthetic_num_train == 16
    assert spec.setups == ["baseline"]
    assert spec.loss.gamma_neg == [1.0, 3.0]


def test_problems_from_overrides_name_the_override(write_spec, minimal_spec):
    found = problems(write_spec(minimal_spec()), ["datasets.0.synthetic_num_train=2"])
    assert found == ["--set: datasets.0.synthetic_num_train: Input should be greater than or equal to 8 (got 2)"]


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("training.epochs", "expected key=value"),
        ("datasets.3.name=x", "not an index of a list of 1"),
        ("name.first=x", "name is a value, not a section"),
    ],
)
def test_malformed_overrides(minimal_spec, assignment, words):
    with pytest.raises(UserInputError, match=words.replace("(", r"\(")):
        apply_override(minimal_spec(), assignment)


def test_bare_name_resolves_in_search_spaces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_spec_path("smoke.yaml") == SEARCH_SPACES_DIR / "smoke.yaml"
    assert resolve_spec_path("smoke") == SEARCH_SPACES_DIR / "smoke.yaml"
    (tmp_path / "smoke.yaml").write_text("name: local\n")
    assert resolve_spec_path("smoke.yaml") == tmp_path / "smoke.yaml"  # the working directory wins
    with pytest.raises(UserInputError, match="spec file not found: nowhere.yaml"):
        resolve_spec_path("nowhere.yaml")


def test_invalid_yaml_is_one_line_with_its_position(write_spec, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsetups: [baseline\n")
    with pytest.raises(UserInputError) as caught:
        load_spec(path)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}: invalid YAML at line")


def test_spec_hash_follows_results_not_paths_or_resources(write_spec, minimal_spec, tmp_path):
    base = spec_hash(load_spec(write_spec(minimal_spec())).spec)
    moved = minimal_spec(storage="elsewhere", cache_dir="c", resources={"cpus_per_trial": 2})
    assert spec_hash(load_spec(write_spec(moved, "moved.yaml")).spec) == base
    assert spec_hash(load_spec(write_spec(minimal_spec(loss={"gamma_neg": 3}), "loss.yaml")).spec) != base


def test_every_shipped_spec_is_structurally_valid(tmp_path, monkeypatch):
    """The shipped specs pass every check but the dataset roots (COCO and VOC are not on this machine)."""
    monkeypatch.chdir(tmp_path)
    for path in sorted(SEARCH_SPACES_DIR.glob("*.yaml")):
        assert load_spec(path, check_data=False).spec.name == path.stem


@pytest.mark.parametrize(
    ("change", "field"),
    [({"label_ratios": [1.5]}, "label_ratios.0"), ({"setups": ["nope"]}, "setups"), ({"bogus": 1}, "bogus")],
)
def test_cli_validate_exits_2_with_one_line(write_spec, minimal_spec, capsys, change, field):
    path = write_spec(minimal_spec(**change))
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: {path}: {field}: ")
    assert "Traceback" not in captured.err


def test_python_m_orchestrator_validate(write_spec, minimal_spec, tmp_path):
    """The real entry point: one line per problem on stderr, exit code 2, no traceback."""
    path = write_spec(minimal_spec(label_ratios=[1.5], setups=["nope"], bogus=1))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(": ")[2] for line in lines] == ["setups", "label_ratios.0", "bogus"]
    assert "Traceback" not in done.stderr
