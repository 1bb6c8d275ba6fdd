"""The negation testbed's parts: captions that name absent classes at a chosen rate, the
section 5.2 measurement, and the paired comparison across seeds (against scipy)."""

from __future__ import annotations

import argparse
import itertools
import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from trainables.backbone import pretrain
from trainables.data import synthetic
from trainables.mlr import negation
from trainables.mlr.config import TrialConfig

from orchestrator.families.mlr import negation_table
from orchestrator.families.mlr.paired import paired_difference
from orchestrator.report import table as table_command
from orchestrator.report.reader import read_trials
from orchestrator.report.render import FILE_NAMES
from orchestrator.specs import SpecError, grid, load_spec, spec_hash
from orchestrator.track.store import backbone_tag

NAMES = synthetic.classnames(8)
ABSENCE = re.compile(r"(, no |and no |but no |, without an? )(\w+)")
"""The connector of each of `pretrain.ABSENCE_PHRASINGS`, then the absent class."""


def random_presence(count: int, seed: int = 0) -> np.ndarray:
    """Label sets of 1 to 4 classes out of 8, as the generated images have."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((count, len(NAMES)), dtype=bool)
    for row in labels:
        row[rng.choice(len(NAMES), size=rng.integers(1, 5), replace=False)] = True
    return labels


@pytest.mark.parametrize("rate", [0.005, 0.05, 0.25, 1.0])
def test_captions_name_an_absent_class_at_the_rate_asked(rate):
    labels = random_presence(8000)
    rng = np.random.default_rng(1)
    captions = [pretrain.caption(NAMES, present, rng, rate) for present in labels]
    negated = [(ABSENCE.search(text), present) for text, present in zip(captions, labels, strict=True)]
    count = sum(match is not None for match, _ in negated)
    # Within 4 standard deviations of the binomial count (every label set here has an absent class).
    assert abs(count - rate * len(labels)) <= 4 * np.sqrt(len(labels) * rate * (1 - rate)) + 1e-9
    for match, present in negated:
        if match is not None:  # the class a caption says is absent is absent, and it is one of the classes
            assert not present[NAMES.index(match[2])]
    if rate >= 0.25:  # every phrasing is used
        assert len({match[1].removesuffix("a ").removesuffix("an ") for match, _ in negated if match}) == len(pretrain.ABSENCE_PHRASINGS)


def test_rate_zero_is_the_plain_recipe_draw_for_draw():
    labels = random_presence(500)
    plain, zero = np.random.default_rng(3), np.random.default_rng(3)
    assert [pretrain.caption(NAMES, p, plain) for p in labels] == [pretrain.caption(NAMES, p, zero, 0.0) for p in labels]
    assert "negation_rate" not in pretrain._recipe("RN-tiny", 128, 0, 200, 64, 8, 0.0)  # checkpoint names kept
    assert pretrain._recipe("RN-tiny", 128, 0, 200, 64, 8, 0.25)["negation_rate"] == 0.25


def test_absence_cosines_match_open_clips_own_text_encoder(tiny_rn):
    names = ["circle", "traffic_light"]
    tokenizer = __import__("open_clip").get_tokenizer("RN-tiny")

    def features(texts):
        with torch.no_grad():
            return tiny_rn.model.encode_text(tokenizer(texts), normalize=True)

    present = features([f"a photo of a {n.replace('_', ' ')}." for n in names])
    expected = {
        "not_a_photo": (present * features([f"not a photo of a {n.replace('_', ' ')}." for n in names])).sum(-1).mean(),
        "photo_without": (present * features([f"a photo without a {n.replace('_', ' ')}." for n in names])).sum(-1).mean(),
    }
    measured = negation.absence_cosines(tiny_rn, names)
    assert measured.keys() == expected.keys()
    for key in expected:
        assert measured[key] == pytest.approx(float(expected[key]), abs=1e-5)


def test_paired_difference_matches_scipy_on_fixed_numbers():
    a = np.array([61.2, 58.9, 63.4, 60.1, 59.7])
    b = np.array([57.0, 58.1, 60.2, 55.9, 58.8])
    result = paired_difference(a, b)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert result.mean == pytest.approx(np.mean(a - b))
    assert result.t == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert (result.low, result.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert result.n == 5
    one = paired_difference(a[:1], b[:1])
    assert one.mean == pytest.approx(4.2) and np.isnan(one.low) and np.isnan(one.p_value)
    with pytest.raises(ValueError):
        paired_difference(a, b[:3])


# -- the negation-rate axis of a spec ----------------------------------------------------------------

SYNTHETIC = {"model": "RN-tiny", "pretrained": "synthetic", "image_size": 64}


def test_a_list_of_negation_rates_is_an_axis_of_backbones(make_spec):
    spec = make_spec(backbone={**SYNTHETIC, "synthetic_negation_rate": [0.0, 0.05]})
    plan = grid.Plan.of(spec)
    assert len(plan.cells) == 2 * 2 * 2  # rates x setups x ratios
    rates = {cell.key: cell.backbone.synthetic_negation_rate for cell in plan.cells}
    assert rates["dual_coop-shapes-r0.1-s1"] == 0.0 and rates["dual_coop-shapes-neg0.05-r0.1-s1"] == 0.05
    trials = [trial for cell_trials in plan.fixed_trials.values() for trial in cell_trials]
    assert {trial.trial_config["backbone"]["synthetic_negation_rate"] for trial in trials} == {0.0, 0.05}
    assert len({trial.trial_key for trial in trials}) == len(trials)
    tags = {backbone_tag(TrialConfig.model_validate(trial.trial_config)) for trial in trials}
    assert tags == {"RN-tiny/synthetic@64", "RN-tiny/synthetic-neg0.05@64"}


def test_pretraining_seeds_are_an_axis_too(make_spec):
    spec = make_spec(backbone={**SYNTHETIC, "synthetic_negation_rate": [0.0, 0.05], "synthetic_seed": [0, 1]})
    cells = grid.cells(spec)
    assert len(cells) == 4 * 2 * 2  # (rate, pre-training seed) x setups x ratios
    keys = {cell.key for cell in cells if cell.setup == "baseline" and cell.label_ratio == 0.1}
    assert keys == {"baseline-shapes-r0.1-s1", "baseline-shapes-p1-r0.1-s1", "baseline-shapes-neg0.05-r0.1-s1",
                    "baseline-shapes-neg0.05-p1-r0.1-s1"}  # fmt: skip
    backbones = {(c.backbone.synthetic_negation_rate, c.backbone.synthetic_seed) for c in cells}
    assert backbones == {(0.0, 0), (0.0, 1), (0.05, 0), (0.05, 1)}
    config = TrialConfig.model_validate(grid.Plan.of(spec).fixed_trials["baseline-shapes-neg0.05-p1-r0.1-s1"][0].trial_config)
    assert backbone_tag(config) == "RN-tiny/synthetic-neg0.05-p1@64"


def test_a_single_rate_keeps_the_cell_keys_and_hash_of_a_spec_without_one(make_spec):
    plain = make_spec(backbone=SYNTHETIC)
    listed = make_spec(backbone={**SYNTHETIC, "synthetic_negation_rate": 0.0})
    assert [c.key for c in grid.cells(plain)] == [c.key for c in grid.cells(listed)]
    assert spec_hash(plain) == spec_hash(listed)


@pytest.mark.parametrize(
    ("backbone", "setups", "message"),
    [
        ({"model": "RN-tiny", "image_size": 64, "synthetic_negation_rate": 0.05}, None, "only `pretrained: synthetic` weights"),
        ({"model": "RN-tiny", "image_size": 64, "synthetic_seed": [0, 1]}, None, "only `pretrained: synthetic` weights"),
        ({**SYNTHETIC, "synthetic_negation_rate": [0.0, 0.0]}, None, "duplicate values"),
        ({**SYNTHETIC, "synthetic_negation_rate": [0.0, 1.5]}, None, "less than or equal to 1"),
        ({**SYNTHETIC, "synthetic_negation_rate": [0.0, 0.05]}, ["baseline", "lapt"], "run 'lapt' in a spec of its own"),
    ],
)
def test_negation_rate_mistakes_are_named(write_spec, minimal_spec, backbone, setups, message):
    changes = {"backbone": backbone, **({"setups": setups} if setups else {})}
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(minimal_spec(**changes)), check_data=False)
    field = "synthetic_seed" if "synthetic_seed" in backbone else "synthetic_negation_rate"
    assert f"backbone.{field}" in str(error.value) and message in str(error.value)


# -- the testbed's table and plot --------------------------------------------------------------------

RATES = (0.0, 0.25)
RATIOS = (0.1, 0.9)
SEEDS = (1, 2, 3)
COSINE = {0.0: 0.98, 0.25: 0.61}


def map_of(setup: str, rate: float, ratio: float, seed: int) -> float:
    """Fixed, irregular numbers: NegativeCoOp gains with the rate, the seeds disagree a little."""
    base = 60 + 10 * ratio + seed * 0.7
    return {
        "baseline": base - 3,
        "positive_coop": base,
        "negative_coop": base - 8 + 30 * rate + (seed % 2) * 1.3,
        "dual_coop": base - 1 + seed * 0.4 * ratio,
    }[setup]


@pytest.fixture(scope="module")
def testbed_store(tmp_path_factory, log_trial):
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("testbed")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("testbed", artifact_location=(folder / "artifacts").as_uri())
    for rate, setup, ratio, seed in itertools.product(RATES, SETUPS, RATIOS, SEEDS):
        backbone = f"RN-tiny/synthetic{f'-neg{rate:g}' if rate else ''}@128"
        log_trial(client, experiment, setup, ("shapes", backbone), ratio, seed, map_of(setup, rate, ratio, seed),
                  params={"backbone.synthetic_negation_rate": str(rate)},
                  metrics={"absence_cosine.not_a_photo": COSINE[rate], "absence_cosine.photo_without": COSINE[rate] - 0.1})  # fmt: skip
    return {"uri": uri, "client": client}


SETUPS = ("baseline", "positive_coop", "negative_coop", "dual_coop")


def test_testbed_differences_are_scipys_paired_tests_across_seeds(testbed_store):
    trials = read_trials(testbed_store["client"], testbed_store["client"].get_experiment_by_name("testbed").experiment_id)
    assert negation_table.applies(trials)
    rows = negation_table.comparisons(trials).set_index(["negation_rate", "a", "label_ratio"])
    for rate, (a, b), ratio in itertools.product(RATES, negation_table.COMPARISONS, [*RATIOS, "All"]):
        ratios = RATIOS if ratio == "All" else (ratio,)
        # Per seed, a - b averaged over the ratios in question: the seed is the unit.
        first = np.array([np.mean([map_of(a, rate, r, s) for r in ratios]) for s in SEEDS])
        second = np.array([np.mean([map_of(b, rate, r, s) for r in ratios]) for s in SEEDS])
        reference = stats.ttest_rel(first, second)
        row = rows.loc[(rate, a, ratio)]
        assert row["mean"] == pytest.approx(np.mean(first - second))
        assert row["n"] == len(SEEDS)
        if np.std(first - second) > 1e-9:
            interval = reference.confidence_interval(0.95)
            assert row["p_value"] == pytest.approx(reference.pvalue)
            assert (row["low"], row["high"]) == (pytest.approx(interval.low), pytest.approx(interval.high))
        assert row["absence_cosine.not_a_photo"] == pytest.approx(COSINE[rate])


def test_table_command_adds_the_testbed_table_and_plot(testbed_store, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    table_command.configure_parser(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["testbed", "--tracking-uri", testbed_store["uri"], "--format", "markdown", "--out", str(out), "--no-log"])
    assert table_command.run(args) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if "NegativeCoOp − PositiveCoOp" in line]
    assert len(lines) == len(RATES)
    # NegativeCoOp trails by about 7 points at rate 0 and draws level at 25%; rate 0 comes first.
    at_zero = np.mean([map_of("negative_coop", 0.0, r, s) - map_of("positive_coop", 0.0, r, s) for r in RATIOS for s in SEEDS])
    assert f"{at_zero:+.1f} [" in lines[0] and "0.980" in lines[0]
    written = {path.relative_to(out).as_posix() for path in out.rglob("negation*")}
    assert {f"tables/{name.replace('comparison', 'negation')}" for name in FILE_NAMES.values()} <= written
    assert {"plots/negation_vs_rate.png", "plots/negation_vs_rate.svg"} <= written
    long = pd.read_csv(out / "tables/negation.csv")
    assert len(long) == len(RATES) * len(negation_table.COMPARISONS) * (len(RATIOS) + 1)


CHECKPOINTS = (0, 1, 2)


def checkpoint_map(setup: str, rate: float, pretraining_seed: int, ratio: float, seed: int) -> float:
    """Each checkpoint moves the setups differently; training seeds add a little noise."""
    return map_of(setup, rate, ratio, seed) + {"negative_coop": 2.5, "dual_coop": -1.1}.get(setup, 0.0) * pretraining_seed ** 1.5


def test_with_several_checkpoints_per_rate_the_checkpoint_is_the_unit(tmp_path, log_trial):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("checkpoints", artifact_location=(tmp_path / "artifacts").as_uri())
    for rate, checkpoint, setup, ratio, seed in itertools.product(RATES, CHECKPOINTS, ("positive_coop", "negative_coop"), RATIOS, (1, 2)):
        backbone = f"RN-tiny/synthetic{f'-neg{rate:g}' if rate else ''}{f'-p{checkpoint}' if checkpoint else ''}@128"
        log_trial(client, experiment, setup, ("shapes", backbone), ratio, seed, checkpoint_map(setup, rate, checkpoint, ratio, seed),
                  params={"backbone.synthetic_negation_rate": str(rate), "backbone.synthetic_seed": str(checkpoint)},
                  metrics={"absence_cosine.not_a_photo": COSINE[rate] - 0.01 * checkpoint, "absence_cosine.photo_without": 0.9})  # fmt: skip
    rows = negation_table.comparisons(read_trials(client, experiment)).set_index(["negation_rate", "label_ratio"])
    for rate, ratio in itertools.product(RATES, [*RATIOS, "All"]):
        ratios = RATIOS if ratio == "All" else (ratio,)
        # Per checkpoint, the difference averaged over its training seeds (and ratios): n = checkpoints.
        def per_checkpoint(setup):
            return np.array([np.mean([checkpoint_map(setup, rate, c, r, s) for r in ratios for s in (1, 2)]) for c in CHECKPOINTS])

        reference = stats.ttest_rel(per_checkpoint("negative_coop"), per_checkpoint("positive_coop"))
        row = rows.loc[(rate, ratio)]
        assert (row["n"], row["checkpoints"]) == (len(CHECKPOINTS), len(CHECKPOINTS))
        assert row["t"] == pytest.approx(reference.statistic) and row["p_value"] == pytest.approx(reference.pvalue)
        assert row["absence_cosine.not_a_photo"] == pytest.approx(COSINE[rate] - 0.01)  # the mean over the checkpoints
    shown, _ = negation_table.display(negation_table.comparisons(read_trials(client, experiment)))
    assert set(shown["n"]) == {"3 checkpoints"}

