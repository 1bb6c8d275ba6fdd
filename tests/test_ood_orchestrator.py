"""The OOD family in the orchestrator: the `ood` spec section, its cells and trials, its input
errors (one line, exit code 2) and the OOD table."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from trainables.ood.config import OODTrialConfig

from orchestrator.cli import main
from orchestrator.families.ood import table as ood_table
from orchestrator.specs import grid

OOD_SECTION = {
    "id_dataset": {"name": "shapes-id", "kind": "synthetic", "synthetic_classes": 3, "synthetic_per_class": 4},
    "ood_sets": [
        {"name": "near", "group": "near", "kind": "synthetic", "synthetic_classes": [4]},
        {"name": "empty", "group": "far", "kind": "synthetic"},
    ],
    "variants": ["zero_shot", "neglabel", "lapt", "lapt_no_cross_modal"],
    "label_ratios": [0.5, 1.0],
    "negatives": {"corpus": "common", "count": 20},
}


@pytest.fixture
def ood_spec(minimal_spec):
    def make(**ood_changes) -> dict:
        return minimal_spec(setups=["baseline", "lapt"], seeds=[1, 2], ood={**OOD_SECTION, **ood_changes})

    return make


def test_ood_cells_one_trial_each_untuned_variants_once(write_spec, ood_spec):
    from orchestrator.specs import load_spec

    spec = load_spec(write_spec(ood_spec())).spec
    cells = grid.cells(spec)
    ood = [cell for cell in cells if cell.family == "ood"]
    assert [cell.key for cell in cells if cell.family == "mlr"] == [
        "baseline-shapes-r0.1-s1", "baseline-shapes-r0.1-s2", "baseline-shapes-r0.5-s1", "baseline-shapes-r0.5-s2",
    ]  # fmt: skip
    # zero_shot and neglabel once; the two tuned variants at 2 ratios x 2 seeds.
    assert len(ood) == 2 + 2 * 2 * 2
    assert {c.key for c in ood if c.setup in ("zero_shot", "neglabel")} == {"zero_shot-shapes-id-r1-s1", "neglabel-shapes-id-r1-s1"}
    trial, = grid.grid_trials(spec, next(c for c in ood if c.key == "lapt_no_cross_modal-shapes-id-r0.5-s2"))
    config = OODTrialConfig.model_validate(trial.trial_config)
    assert trial.as_config()["family"] == "ood" and trial.as_config()["setup"] == "lapt_no_cross_modal"
    assert (config.options.variant, config.mixing.cross_modal, config.mixing.cross_distribution) == ("lapt", False, True)
    assert (config.label_ratio, config.seed, config.backbone.model) == (0.5, 2, "RN-tiny")
    untuned, = grid.grid_trials(spec, next(c for c in ood if c.setup == "neglabel"))
    assert OODTrialConfig.model_validate(untuned.trial_config).training.epochs == 1


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"ood": None}, "ood", "setup 'lapt' needs an ood section"),
        ({"scheduler": {"kind": "asha", "grace_period": 1000}}, "scheduler.grace_period", "is more than ood.training.epochs"),
        ({"setups": ["dual_coop"], "datasets": []}, "datasets", "need at least one multi-label dataset"),
    ],
)
def test_family_rules(write_spec, ood_spec, changes, field, words, capsys):
    path = write_spec({**ood_spec(), **changes})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}: " in err and words in err, err


@pytest.mark.parametrize(
    ("ood_changes", "field", "words"),
    [
        ({"ood_sets": [{"name": "sun", "group": "far", "kind": "folder", "root": "no/such/folder"}]},
         "ood.ood_sets.0", "image set 'sun': "),
        ({"negatives": {"corpus": "word_list", "word_list": "empty.txt"}}, "ood.negatives", "holds no words"),
        ({"negatives": {"corpus": "wordnet", "wordnet_dir": "no-wordnet"}}, "ood.negatives", "no WordNet database"),
    ],
)  # fmt: skip
def test_bad_ood_input_is_one_line_and_exit_code_2(write_spec, ood_spec, tmp_path, capsys, ood_changes, field, words):
    (tmp_path / "empty.txt").write_text("# nothing but a comment\n")
    path = write_spec(ood_spec(**ood_changes))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and f": {field}: " in lines[0] and words in lines[0], err
    assert "Traceback" not in err


# -- the OOD table ---------------------------------------------------------------------------------


def _trials() -> pd.DataFrame:
    sets = (("ssb_hard", "near"), ("inat", "far"), ("sun", "far"))
    rows = []
    for variant, ratio, seed, auroc in [("lapt", 1.0, 1, 90.0), ("lapt", 1.0, 2, 92.0), ("neglabel", 1.0, 1, 80.0)]:
        metrics = {f"auroc.{name}": auroc + i for i, (name, _) in enumerate(sets)}
        metrics |= {f"fpr95_ood_pos.{name}": 100 - auroc - i for i, (name, _) in enumerate(sets)}
        metrics |= {"auroc.near": auroc, "fpr95_ood_pos.near": 100 - auroc, "auroc.far": auroc + 1.5,
                    "fpr95_ood_pos.far": 98.5 - auroc, "id_accuracy": 70.0 + seed}  # fmt: skip
        rows.append({"variant": variant, "label_ratio": ratio, "seed": seed, "sets": sets, **metrics})
    return pd.DataFrame(rows)


def test_ood_table_means_over_seeds_per_set_and_group():
    table = ood_table.build_ood_table(_trials())
    assert list(table.index) == ["LAPT", "NegLabel (untuned)"]
    assert table.loc["LAPT", ("ssb_hard", "auroc")] == pytest.approx(91.0)
    assert table.loc["LAPT", ("sun", "fpr95_ood_pos")] == pytest.approx(100 - 91.0 - 2)
    assert table.loc["LAPT", ("Far avg", "auroc")] == pytest.approx(92.5)
    assert table.loc["NegLabel (untuned)", ("ID", "id_accuracy")] == pytest.approx(71.0)
    assert list(dict.fromkeys(place for place, _ in table.columns)) == ["ssb_hard", "inat", "sun", "Near avg", "Far avg", "ID"]


def test_ood_table_reference_rows_and_formats():
    table = ood_table.build_ood_table(_trials(), ood_table.load_reference())
    reference = table.loc["LAPT (released script log) [reference]"]
    assert reference[("Far avg", "fpr95_ood_pos")] == 24.29 and reference[("Near avg", "auroc")] == 81.88
    assert math.isnan(reference[("ssb_hard", "auroc")])
    # The best of each column among our rows is bold: LAPT's AUROC (higher) and FPR95 (lower), not the reference's.
    markdown = ood_table.render(table, "markdown", "t")
    lapt_row = next(line for line in markdown.splitlines() if line.startswith("| LAPT "))
    assert "**91.0**" in lapt_row and "**7.0**" in lapt_row and "—" in markdown
    assert "**" not in next(line for line in markdown.splitlines() if "[reference]" in line)
    csv = pd.read_csv(io.StringIO(ood_table.render(table, "csv", "t")), index_col=0)
    assert csv.loc["LAPT", "ssb_hard.auroc"] == pytest.approx(91.0)
    assert "LAPT (released script log) [reference]" in ood_table.render(table, "rich", "t")
    latex = ood_table.render(table, "latex", "t")
    assert "\\begin{tabular}" in latex and "ssb\\_hard" in latex and "$\\downarrow$" in latex and "↓" not in latex
    assert "\\bfseries 91.0" in latex and "\\bfseries 80.0" not in latex
    html = ood_table.render(table, "html", "t")
    assert "<table" in html and "font-weight: bold" in html
