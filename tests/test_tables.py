"""The aggregator's tables: runs read from a real MLflow store, pivot, reference rows, every format.

The store is filled with synthetic trial runs of known values written exactly as the orchestrator's
MLflow schema says (docs/ARCHITECTURE.md); expected numbers are computed here with `statistics`.
"""

from __future__ import annotations

import io
import math
import re
import statistics

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import UserInputError

from orchestrator.families.mlr.comparison_table import (
    ComparisonTable,
    build_table,
    format_params,
    load_reference,
)
from orchestrator.families.mlr.comparison_text import (
    display_frame,
    render,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
)
from orchestrator.report.reader import best_per_cell, read_trials

COCO = ("coco", "RN101/openai@448")
VOC = ("voc", "RN101/openai@448")
SHAPES = ("shapes", "RN-tiny/random@128")

# Table 1 of arXiv 2409.08381, typed from the paper.
PAPER_POSITIVE_COOP_COCO = [79.8, 82.1, 83.0, 83.5, 83.7, 83.9, 84.0, 84.2, 84.4]
PAPER_POSITIVE_COOP_COCO_AVG = 83.2
PAPER_NEGATIVE_COOP_VOC = [88.9, 89.3, 89.6, 89.9, 90.7, 91.2, 91.8, 92.1, 92.4]
PAPER_NEGATIVE_COOP_VOC_AVG = 90.8  # as printed; the mean of the nine printed values is 90.66
PAPER_DUAL_COOP_COCO = [78.7, 80.9, 81.7, 82.0, 82.5, 82.7, 82.8, 83.0, 83.1]
PAPER_BASELINE_COCO = [78.9, 80.6, 81.3, 81.9, 82.7, 82.8, 82.9, 83.2, 83.5]


def fill_synthetic(log_trial, client: MlflowClient, experiment_id: str) -> None:
    """The runs whose expected table the tests below write out (`log_trial`: the conftest fixture)."""
    log = lambda *args, **kwargs: log_trial(client, experiment_id, *args, **kwargs)  # noqa: E731
    positive = {"trainable_params": 730_000}
    # PositiveCoOp on COCO, two seeds; the (0.1, seed 1) cell has three trials: the best finished one counts,
    # not the failed one with a higher metric.
    log("positive_coop", COCO, 0.1, 1, 70.0, gpu_seconds=1800, params={"loss.gamma_neg": "3.5"}, trial=0, **positive)
    log("positive_coop", COCO, 0.1, 1, 65.0, gpu_seconds=1800, params={"loss.gamma_neg": "1.5"}, trial=1, **positive)
    log("positive_coop", COCO, 0.1, 1, 99.0, status="FAILED", gpu_seconds=1800, trial=2, **positive)
    log("positive_coop", COCO, 0.1, 2, 72.0, gpu_seconds=5400, **positive)
    log("positive_coop", COCO, 0.5, 1, 80.0, gpu_seconds=1800, **positive)
    log("positive_coop", COCO, 0.5, 2, 83.0, gpu_seconds=5400, **positive)
    log("positive_coop", COCO, 0.9, 1, 85.0, gpu_seconds=1800, **positive)
    log("positive_coop", COCO, 0.9, 2, 86.0, gpu_seconds=5400, **positive)
    # Baseline: seed 2 at 50% failed, 90% never ran.
    log("baseline", COCO, 0.1, 1, 75.0, trainable_params=81_920, gpu_seconds=900)
    log("baseline", COCO, 0.1, 2, 74.0, trainable_params=81_920, gpu_seconds=900)
    log("baseline", COCO, 0.5, 1, 79.0, trainable_params=81_920, gpu_seconds=900)
    log("baseline", COCO, 0.5, 2, 95.0, status="FAILED", trainable_params=81_920, gpu_seconds=900)
    # DualCoOp: its only trial is still running.
    log("dual_coop", COCO, 0.1, 1, 90.0, status="RUNNING", trainable_params=1_310_720)
    # NegativeCoOp on VOC at all nine of the paper's ratios, one seed.
    for step in range(1, 10):
        log("negative_coop", VOC, step / 10, 1, 80.0 + step, trainable_params=163_840, gpu_seconds=3600)
    # A dataset the paper does not have.
    log("dual_coop", SHAPES, 0.1, 0, 40.0, trainable_params=4096, gpu_seconds=0.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory, log_trial) -> tuple[MlflowClient, str]:
    folder = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.create_experiment("synthetic", artifact_location=(folder / "artifacts").as_uri())
    fill_synthetic(log_trial, client, experiment_id)
    return client, experiment_id


@pytest.fixture(scope="module")
def trials(store) -> pd.DataFrame:
    return read_trials(*store)


@pytest.fixture(scope="module")
def table(trials) -> ComparisonTable:
    return build_table(trials, "best_mAP", load_reference())


def cell(table: ComparisonTable, block, setup: str, column: str, stat: str = "mean", row: str = "ours"):
    return table.values.loc[(*block, setup, row), (column, stat)]


# ---------------------------------------------------------------- reading


def test_read_trials_has_every_run_with_typed_keys(trials):
    assert len(trials) == 23
    assert trials["status"].value_counts().to_dict() == {"FINISHED": 20, "FAILED": 2, "RUNNING": 1}
    assert trials["label_ratio"].dtype == float and trials["seed"].dtype == int
    running = trials[trials["status"] == "RUNNING"].iloc[0]
    assert (running["setup"], running["dataset"], running["best_mAP"]) == ("dual_coop", "coco", 90.0)
    assert set(trials["params.loss.gamma_neg"]) == {"2.0", "3.5", "1.5"}


def test_read_trials_rejects_a_trial_run_without_its_key_tags(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("broken", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_run(experiment_id, tags={"orchestrator.role": "trial", "setup": "baseline"})
    with pytest.raises(UserInputError, match="lacks the tag"):
        read_trials(client, experiment_id)


def test_best_per_cell_takes_the_best_finished_trial(trials):
    cells = best_per_cell(trials, "best_mAP")
    chosen = cells.set_index(["setup", "dataset", "label_ratio", "seed"])
    assert chosen.loc[("positive_coop", "coco", 0.1, 1), "best_mAP"] == 70.0  # not the FAILED 99
    assert chosen.loc[("positive_coop", "coco", 0.1, 1), "trials_in_cell"] == 2
    assert ("baseline", "coco", 0.5, 2) not in chosen.index
    assert ("dual_coop", "coco", 0.1, 1) not in chosen.index
    by_last = best_per_cell(trials, "last_mAP").set_index(["setup", "dataset", "label_ratio", "seed"])
    assert by_last.loc[("positive_coop", "coco", 0.1, 1), "last_mAP"] == 69.0


def test_unknown_metric_is_a_user_error(trials):
    with pytest.raises(UserInputError, match="unknown metric 'mAP'"):
        build_table(trials, "mAP")


# ---------------------------------------------------------------- pivot


def test_means_and_stds_over_seeds(table):
    for ratio, (seed1, seed2) in {"10%": (70.0, 72.0), "50%": (80.0, 83.0), "90%": (85.0, 86.0)}.items():
        assert cell(table, COCO, "positive_coop", ratio) == pytest.approx(statistics.mean([seed1, seed2]))
        assert cell(table, COCO, "positive_coop", ratio, "std") == pytest.approx(statistics.stdev([seed1, seed2]))
        assert cell(table, COCO, "positive_coop", ratio, "n") == 2
    assert cell(table, COCO, "baseline", "10%") == pytest.approx(74.5)
    # One finished seed: a mean, no std.
    assert cell(table, COCO, "baseline", "50%") == 79.0
    assert math.isnan(cell(table, COCO, "baseline", "50%", "std"))
    assert cell(table, COCO, "baseline", "50%", "n") == 1


def test_average_over_ratios(table):
    means = [statistics.mean([70, 72]), statistics.mean([80, 83]), statistics.mean([85, 86])]
    assert cell(table, COCO, "positive_coop", "Avg") == pytest.approx(statistics.mean(means))
    per_seed = [statistics.mean([70, 80, 85]), statistics.mean([72, 83, 86])]
    assert cell(table, COCO, "positive_coop", "Avg", "std") == pytest.approx(statistics.stdev(per_seed))
    assert cell(table, VOC, "negative_coop", "Avg") == pytest.approx(statistics.mean(80.0 + step for step in range(1, 10)))
    # Baseline's 90% never ran: no Avg.
    assert math.isnan(cell(table, COCO, "baseline", "Avg"))


def test_missing_cells_are_missing_not_zero(table):
    assert math.isnan(cell(table, COCO, "baseline", "90%")) and cell(table, COCO, "baseline", "90%", "n") == 0
    assert math.isnan(cell(table, COCO, "dual_coop", "10%")) and cell(table, COCO, "dual_coop", "10%", "n") == 0
    assert pd.isna(table.info.loc[(*COCO, "dual_coop", "ours"), "params"])
    text, _ = display_frame(table)
    row = text.loc[("coco (RN101/openai@448)", "DualCoOp")]
    assert list(row[["10%", "50%", "90%", "Avg", "#Params"]]) == ["—"] * 5
    assert "0.0" not in " ".join(row)


def test_ratio_columns_and_blank_cells_outside_a_block(table):
    assert table.columns == [f"{step * 10}%" for step in range(1, 10)] + ["Avg"]
    assert table.block_columns[COCO] == ["10%", "50%", "90%"]
    text, _ = display_frame(table)
    assert text.loc[("coco (RN101/openai@448)", "PositiveCoOp"), "20%"] == ""
    assert text.loc[("shapes (RN-tiny/random@128)", "DualCoOp"), "50%"] == ""


def test_best_marks_per_block_and_column(table):
    best = table.stat("best")
    coco = best.loc[COCO].xs("ours", level="row")
    assert coco["10%"].to_dict() == {"baseline": True, "dual_coop": False, "positive_coop": False}
    assert coco["50%"].to_dict() == {"baseline": False, "dual_coop": False, "positive_coop": True}
    assert coco["90%"].to_dict() == {"baseline": False, "dual_coop": False, "positive_coop": True}
    assert coco["Avg"].to_dict() == {"baseline": False, "dual_coop": False, "positive_coop": True}
    assert not best.xs("paper", level="row").any(axis=None) and not best.xs("delta", level="row").any(axis=None)


def test_rows_in_the_paper_order(table):
    coco_rows = [key[2:] for key in table.values.index if key[:2] == COCO]
    assert coco_rows == [
        ("baseline", "ours"), ("baseline", "paper"), ("baseline", "delta"),
        ("dual_coop", "ours"), ("dual_coop", "paper"), ("dual_coop", "delta"),
        ("positive_coop", "ours"), ("positive_coop", "paper"), ("positive_coop", "delta"),
    ]  # fmt: skip


def test_params_and_hours(table):
    info = table.info
    assert info.loc[(*COCO, "positive_coop", "ours"), "params"] == 730_000
    assert info.loc[(*COCO, "positive_coop", "ours"), "params_label"] == "730k"
    assert info.loc[(*COCO, "baseline", "ours"), "params_label"] == "81.9k"
    # Mean over the chosen trials: (1800 + 5400) / 2 s.
    assert info.loc[(*COCO, "positive_coop", "ours"), "gpu_hours"] == pytest.approx(1.0)
    assert table.hours_column == "GPU h"
    assert [format_params(count) for count in (80_000, 730_000, 1_300_000, 1_310_720, 512)] == ["80k", "730k", "1.3M", "1.31M", "512"]


def test_cpu_only_runs_show_training_hours():
    frame = pd.DataFrame(
        {
            "run_id": ["a", "b"], "status": ["FINISHED"] * 2, "setup": ["baseline", "positive_coop"],
            "dataset": ["shapes"] * 2, "backbone": ["RN-tiny/random@128"] * 2, "label_ratio": [0.5] * 2,
            "seed": [0, 0], "best_mAP": [50.0, 60.0], "last_mAP": [49.0, 59.0], "trainable_params": [10, 20],
            "gpu_seconds": [0.0, 0.0], "train_seconds": [36.0, 3.0],
        }
    )  # fmt: skip
    table = build_table(frame)
    assert table.hours_column == "Train h"
    text, _ = display_frame(table)
    assert list(text["Train h"]) == ["0.01", "<0.01"]
    assert "GPU h" not in text.columns


# ---------------------------------------------------------------- the paper's reference


def test_shipped_reference_is_the_paper_table():
    reference = load_reference().set_index(["dataset", "method"])
    ratios = [f"{step * 10}%" for step in range(1, 10)]
    assert list(reference.loc[("COCO", "Positive CoOp"), ratios]) == PAPER_POSITIVE_COOP_COCO
    assert reference.loc[("COCO", "Positive CoOp"), "Avg"] == PAPER_POSITIVE_COOP_COCO_AVG
    assert list(reference.loc[("COCO", "DualCoOp"), ratios]) == PAPER_DUAL_COOP_COCO
    assert list(reference.loc[("VOC2007", "Negative CoOp"), ratios]) == PAPER_NEGATIVE_COOP_VOC
    assert reference.loc[("COCO", "DualCoOp"), "params"] == "1.3M"
    assert reference.loc[("VOC2007", "Baseline"), "params"] == "20k"
    assert reference.loc[("COCO", "Baseline"), "gpu_hours"] == 7.97
    assert reference["setup"].dropna().value_counts().to_dict() == {
        "dual_coop": 2, "baseline": 2, "negative_coop": 2, "positive_coop": 2
    }  # fmt: skip
    assert len(reference) == 26


def test_reference_rows_equal_the_papers_numbers(table):
    # All nine ratios: the printed numbers, the printed Avg.
    for position, value in enumerate(PAPER_NEGATIVE_COOP_VOC, start=1):
        assert cell(table, VOC, "negative_coop", f"{position * 10}%", row="paper") == value
    assert cell(table, VOC, "negative_coop", "Avg", row="paper") == PAPER_NEGATIVE_COOP_VOC_AVG
    # COCO ran 10/50/90%: those columns, and the Avg over them.
    shown = [PAPER_POSITIVE_COOP_COCO[0], PAPER_POSITIVE_COOP_COCO[4], PAPER_POSITIVE_COOP_COCO[8]]
    assert [cell(table, COCO, "positive_coop", column, row="paper") for column in ("10%", "50%", "90%")] == shown
    assert cell(table, COCO, "positive_coop", "Avg", row="paper") == pytest.approx(statistics.mean(shown))
    assert table.info.loc[(*COCO, "positive_coop", "paper"), "params_label"] == "730k"
    assert table.info.loc[(*COCO, "dual_coop", "paper"), "gpu_hours"] == 16
    assert any("recomputed" in note for note in table.notes)


def test_delta_rows_are_ours_minus_paper(table):
    assert cell(table, COCO, "positive_coop", "10%", row="delta") == pytest.approx(71.0 - 79.8)
    assert cell(table, COCO, "positive_coop", "90%", row="delta") == pytest.approx(85.5 - 84.4)
    avg_ours = statistics.mean([71.0, 81.5, 85.5])
    assert cell(table, COCO, "positive_coop", "Avg", row="delta") == pytest.approx(avg_ours - statistics.mean([79.8, 83.7, 84.4]))
    assert cell(table, COCO, "baseline", "10%", row="delta") == pytest.approx(74.5 - PAPER_BASELINE_COCO[0])
    assert math.isnan(cell(table, COCO, "baseline", "90%", row="delta"))  # ours missing
    voc_delta = [cell(table, VOC, "negative_coop", f"{step * 10}%", row="delta") for step in range(1, 10)]
    assert voc_delta == pytest.approx([80.0 + step - paper for step, paper in zip(range(1, 10), PAPER_NEGATIVE_COOP_VOC)])
    assert cell(table, VOC, "negative_coop", "Avg", row="delta") == pytest.approx(85.0 - PAPER_NEGATIVE_COOP_VOC_AVG)


def test_blocks_without_a_reference_get_no_paper_rows(table):
    rows = [key[2:] for key in table.values.index if key[:2] == SHAPES]
    assert rows == [("dual_coop", "ours")]
    assert any("No paper reference for shapes (RN-tiny/random@128)" in note for note in table.notes)


def test_other_backbones_get_no_paper_rows(trials):
    vit = trials[trials["dataset"] == "voc"].assign(backbone="ViT-B-16/openai@224")
    table = build_table(vit, reference=load_reference())
    assert set(table.values.index.get_level_values("row")) == {"ours"}


def test_without_reference_only_our_rows(trials):
    table = build_table(trials)
    assert set(table.values.index.get_level_values("row")) == {"ours"}


# ---------------------------------------------------------------- formats


def markdown_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    rows = [[field.strip() for field in line.strip("|").split("|")] for line in lines]
    return [rows[0]] + rows[2:]  # without the alignment line


def test_markdown(table):
    markdown = to_markdown(table)
    header, *rows = markdown_rows(markdown)
    assert header == ["Dataset", "Setup", *table.columns, "#Params", "GPU h"]
    by_setup = {(row[1]): dict(zip(header, row)) for row in rows if row[1]}
    positive = by_setup["PositiveCoOp"] if "PositiveCoOp" in by_setup else None
    assert positive is not None
    assert positive["50%"] == f"**81.5 ± {statistics.stdev([80, 83]):.1f}**"
    assert positive["10%"] == f"71.0 ± {statistics.stdev([70, 72]):.1f}"
    assert positive["20%"] == ""
    assert positive["#Params"] == "730k" and positive["GPU h"] == "1"
    assert by_setup["Baseline"]["90%"] == "—" and by_setup["Baseline"]["50%"] == "79.0†"
    assert by_setup["PositiveCoOp [paper]"]["10%"] == "79.8"
    assert by_setup["PositiveCoOp Δ"]["10%"] == "−8.8"
    assert by_setup["PositiveCoOp Δ"]["90%"] == "+1.1"
    # The dataset is named on the first row of its block only.
    assert [row[0] for row in rows].count("coco (RN101/openai@448)") == 1
    assert "- †: fewer seeds" in markdown


def test_csv_round_trip(table):
    frame = pd.read_csv(io.StringIO(to_csv(table)))
    positive = frame[(frame["dataset"] == "coco") & (frame["setup"] == "positive_coop") & (frame["row"] == "ours")].iloc[0]
    assert positive["10%_mean"] == pytest.approx(71.0)
    assert positive["10%_std"] == pytest.approx(statistics.stdev([70, 72]))
    assert positive["10%_n"] == 2 and not positive["10%_best"] and positive["50%_best"]
    assert positive["params"] == 730_000 and positive["params_label"] == "730k"
    assert positive["gpu_hours"] == pytest.approx(1.0)
    baseline = frame[(frame["dataset"] == "coco") & (frame["setup"] == "baseline") & (frame["row"] == "ours")].iloc[0]
    assert math.isnan(baseline["90%_mean"]) and baseline["90%_n"] == 0
    assert math.isnan(baseline["20%_n"])  # not part of the block
    paper = frame[(frame["dataset"] == "voc") & (frame["row"] == "paper")].iloc[0]
    assert [paper[f"{step * 10}%_mean"] for step in range(1, 10)] == PAPER_NEGATIVE_COOP_VOC


def test_latex_is_booktabs(table):
    latex = to_latex(table)
    assert latex.count(r"\toprule") == 1 and latex.count(r"\bottomrule") == 1
    # Under the header and between the three blocks; no \cline, no rule stacked on the closing one.
    assert latex.count(r"\midrule") == 3 and r"\cline" not in latex
    assert "\\\\\n\\bottomrule" in latex
    assert r"\bfseries 81.5 $\pm$ 2.1" in latex
    assert r"10\%" in latex and "best\\_mAP" in latex
    assert r"$-$8.8" in latex and "---" in latex
    # Every row has as many cells as the column spec.
    column_spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", latex).group(1)
    body = latex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert rows and all(row.count("&") == len(column_spec) - 1 for row in rows)


def test_html(table):
    html = to_html(table)
    assert html.count("<table") == 1 and "font-weight: bold" in html
    assert "81.5 ± 2.1" in html and "PositiveCoOp [paper]" in html and "<caption>" in html
    # Bold goes on exactly the marked cells: the selectors of the bold rule are the best mask's cells.
    selectors = re.search(r"((?:#T_\w+?_row\d+_col\d+,?\s*)+)\{\s*font-weight: bold", html).group(1)
    _, best = display_frame(table)
    rows, columns = best.to_numpy().nonzero()
    assert set(re.findall(r"_(row\d+_col\d+)", selectors)) == {f"row{r}_col{c}" for r, c in zip(rows, columns)}


def test_rich_marks_best_with_a_star(table):
    text = render(table, "rich", title="synthetic: best_mAP")
    assert "synthetic: best_mAP" in text
    assert "81.5 ± 2.1*" in text and "74.5 ± 0.7*" in text
    assert "PositiveCoOp [paper]" in text and "—" in text


def test_render_rejects_an_unknown_format(table):
    with pytest.raises(UserInputError, match="unknown table format 'xml'"):
        render(table, "xml")
