"""Paper-style comparison tables from the trial runs of one MLflow experiment.

Reading: every trial run (tag `orchestrator.role=trial`) becomes one row of a pandas frame. Pivoting:
only FINISHED runs count; within a cell (dataset, backbone, setup, label ratio, seed) the best trial by
the chosen metric is the cell's value; a table cell is the mean ± std of those values over seeds. The
layout is that of Table 1 of the PositiveCoOp paper (arXiv 2409.08381): one block per dataset and
backbone, a row per setup, a column per label ratio, Avg, #Params and hours. Rendering: rich, Markdown
(tabulate), CSV, LaTeX (booktabs, pandas Styler) and HTML (pandas Styler).
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

import numpy as np
import pandas as pd
import rich.console
import rich.measure
import rich.table
import rich.text
from tabulate import tabulate

from trainables.errors import UserInputError

from orchestrator.schema import (
    CELL_KEY_TAG,
    CONFIG_HASH_TAG,
    ERROR_TAG,
    FAMILY_TAG,
    FINAL_METRICS,
    KEY_TAGS,
    RANKING_METRICS,
    STUDY_TAG,
    TRIAL_KEY_TAG,
    TRIAL_ROLE,
    role_filter,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SETUP_ORDER = ("baseline", "negative_coop", "dual_coop", "positive_coop")
"""Canonical row order within a block, as in the paper's Table 1; other setups follow alphabetically."""
SETUP_LABELS = {
    "baseline": "Baseline",
    "negative_coop": "NegativeCoOp",
    "dual_coop": "DualCoOp",
    "positive_coop": "PositiveCoOp",
}
BLOCK = ["dataset", "backbone"]
ROW = [*BLOCK, "setup"]
CELL = [*ROW, "label_ratio", "seed"]
AVG = "Avg"
STATS = ["mean", "std", "n", "best"]
ROW_KINDS = ("ours", "paper", "delta")
MISSING = "—"

PAPER_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
REFERENCE_BLOCKS = {("coco", "RN101"): "COCO", ("voc", "RN101"): "VOC2007"}
"""(spec dataset name, backbone model) -> the block of the paper's Table 1 it reproduces. The paper
reports ResNet101 only, so other backbones and other datasets get no reference rows."""
REFERENCE_SOURCE = (
    "PositiveCoOp paper (arXiv 2409.08381), Table 1 (ResNet101, CLIP weights, 448 px);"
    " GPU h from its supplementary Table 3"
)


def ratio_label(ratio: float) -> str:
    """Column label of a label ratio, as the paper prints it: 0.3 -> "30%"."""
    return f"{ratio * 100:g}%"


def backbone_model(backbone: str) -> str:
    """The model part of a backbone tag: "RN101/openai@448" -> "RN101"."""
    return backbone.split("/")[0].split("@")[0]


def setup_sort_key(setup: str) -> tuple[int, str]:
    return (SETUP_ORDER.index(setup) if setup in SETUP_ORDER else len(SETUP_ORDER), setup)


def check_metric(metric: str) -> None:
    if metric not in RANKING_METRICS:
        raise UserInputError(f"unknown metric '{metric}': choose one of {', '.join(RANKING_METRICS)}")


# ---------------------------------------------------------------- reading


def read_trials(client: MlflowClient, experiment_id: str) -> pd.DataFrame:
    """One row per trial run of the experiment, whatever its status.

    Columns: `run_id`, `run_name`, `status`, `error` (a failed run's reason, else None), `start_time`, the key tags (`label_ratio` as float, `seed` as int),
    `cell_key`, `trial_key`, every final metric (NaN where not logged) and every param as
    `params.<dotted name>` (strings, as MLflow stores them).
    """
    rows = []
    page_token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=role_filter(TRIAL_ROLE),
            max_results=1000,
            page_token=page_token,
        )
        for run in page:
            tags = run.data.tags
            missing = [tag for tag in KEY_TAGS if tag not in tags]
            if missing:
                raise UserInputError(f"trial run {run.info.run_id} lacks the tag(s) {', '.join(missing)}")
            rows.append(
                {
                    "run_id": run.info.run_id,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "error": tags.get(ERROR_TAG),
                    "start_time": run.info.start_time,
                    **{tag: tags[tag] for tag in KEY_TAGS},
                    "cell_key": tags.get(CELL_KEY_TAG),
                    "family": tags.get(FAMILY_TAG, "mlr"),
                    "trial_key": tags.get(TRIAL_KEY_TAG),
                    "config_hash": tags.get(CONFIG_HASH_TAG),
                    "study": tags.get(STUDY_TAG),
                    **{metric: run.data.metrics.get(metric, math.nan) for metric in FINAL_METRICS},
                    **{f"params.{name}": value for name, value in run.data.params.items()},
                }
            )
        page_token = page.token
        if not page_token:
            break
    columns = ["run_id", "run_name", "status", "error", "start_time", *KEY_TAGS, "cell_key", "family", "trial_key",
               "config_hash", "study", *FINAL_METRICS]  # fmt: skip
    return pd.DataFrame(rows, columns=None if rows else columns).astype({"label_ratio": float, "seed": int})


def _finished_with(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The FINISHED trials that logged `metric`: the only ones a table or a search summary counts."""
    return trials[(trials["status"] == "FINISHED") & trials[metric].notna()]


def best_per_cell(trials: pd.DataFrame, metric: str = "best_mAP") -> pd.DataFrame:
    """The best FINISHED trial of every cell by `metric` (a cell has several trials in a search or a loss grid).

    Adds `trials_in_cell`: how many finished trials the best was chosen from.
    """
    check_metric(metric)
    finished = _finished_with(trials, metric)
    best = finished.loc[finished.groupby(CELL)[metric].idxmax()]
    counts = finished.groupby(CELL).size().rename("trials_in_cell")
    return best.join(counts, on=CELL).reset_index(drop=True)


# ---------------------------------------------------------------- searches


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Params (`params.<name>` columns) that take more than one value among the finished trials of some cell."""
    finished = trials[trials["status"] == "FINISHED"]
    params = [column for column in finished.columns if column.startswith("params.")]
    if finished.empty or not params:
        return []
    varying = finished.groupby(CELL)[params].nunique().gt(1).any()
    return sorted(varying[varying].index)


def search_trials(trials: pd.DataFrame, metric: str = "best_mAP") -> pd.DataFrame:
    """Finished trials of the cells that were searched (more than one finished trial with the metric)."""
    check_metric(metric)
    finished = _finished_with(trials, metric)
    return finished[finished.groupby(CELL)["run_id"].transform("size") > 1]


def best_search_configs(trials: pd.DataFrame, metric: str = "best_mAP") -> pd.DataFrame:
    """The best trial of every searched cell, with its searched params, in table order."""
    searched = search_trials(trials, metric)
    if searched.empty:
        return searched
    best = best_per_cell(searched, metric)
    ordered = best.assign(_order=best["setup"].map(setup_sort_key))
    return ordered.sort_values(["_order", "dataset", "backbone", "label_ratio", "seed"]).drop(columns="_order")


# ---------------------------------------------------------------- the reference


def load_reference() -> pd.DataFrame:
    """Table 1 of the PositiveCoOp paper as shipped in `orchestrator/reference/positivecoop_table1.csv`.

    One row per method and paper block; columns `dataset` (COCO, VOC2007), `backbone`, `method`,
    `setup` (this project's registry name, NaN for methods without a counterpart), `params` (as
    printed), `gpu_hours`, then `10%`..`90%` and `Avg` (mAP, %).
    """
    with resources.files("orchestrator").joinpath("reference").joinpath("positivecoop_table1.csv").open() as csv:
        return pd.read_csv(csv, comment="#")


# ---------------------------------------------------------------- pivoting


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    """The comparison of one experiment, ready to render.

    `values`: index (dataset, backbone, setup, row), row in {"ours", "paper", "delta"}; columns a
    MultiIndex (column label, stat): labels "10%".."90%" and "Avg", stats mean, std, n (seeds; 0 for
    a missing cell, NaN outside the block or for paper and delta rows), best. `info`: same index;
    `params` (exact count), `params_label` (paper style), `gpu_hours` and `train_hours` (mean per
    trial). `block_columns`: the ratio labels each (dataset, backbone) block ran.
    """

    values: pd.DataFrame
    info: pd.DataFrame
    block_columns: dict[tuple[str, str], list[str]]
    hours_column: str
    metric: str
    notes: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return list(self.values.columns.get_level_values(0).unique())

    def stat(self, name: str) -> pd.DataFrame:
        """One stat for every row and column label, e.g. `table.stat("mean")`."""
        return self.values.xs(name, axis=1, level=1)


def build_table(
    trials: pd.DataFrame, metric: str = "best_mAP", reference: pd.DataFrame | None = None
) -> ComparisonTable:
    """Pivot trial runs into the comparison table; `reference` (from `load_reference`) adds paper and delta rows."""
    check_metric(metric)
    cells = best_per_cell(trials, metric).rename(columns={metric: "value"})
    # Every (setup, ratio) that some trial run of the block names is expected, so that failed or
    # never-run cells show as missing.
    block_ratios = trials[[*BLOCK, "label_ratio"]].drop_duplicates().sort_values("label_ratio")
    rows = trials[ROW].drop_duplicates()
    expected = rows.merge(block_ratios, on=BLOCK)
    block_columns = {
        (dataset, backbone): group["label_ratio"].map(ratio_label).tolist()
        for (dataset, backbone), group in block_ratios.groupby(BLOCK)
    }

    per_ratio = (
        expected.merge(cells, on=[*ROW, "label_ratio"], how="left")
        .groupby([*ROW, "label_ratio"])["value"]
        .agg(mean="mean", std="std", n="count")  # std (ddof 1) is NaN for a single seed
        .reset_index()
    )
    per_ratio["column"] = per_ratio["label_ratio"].map(ratio_label)
    n_ratios = block_ratios.groupby(BLOCK).size().rename("n_ratios")
    ours = pd.concat([per_ratio.drop(columns="label_ratio"), _average(per_ratio, cells, n_ratios)], ignore_index=True)
    ours["best"] = ours["mean"].notna() & (ours["mean"] == ours.groupby([*BLOCK, "column"])["mean"].transform("max"))
    long = ours.assign(row="ours")
    info = _setup_info(cells, rows)

    reference_notes: list[str] = []
    if reference is not None:
        paper, paper_info, reference_notes = _reference_rows(rows, reference, block_columns)
        long = pd.concat([long, paper, _delta_rows(ours, paper)], ignore_index=True)
        info = pd.concat([info, paper_info])

    columns = _column_order(block_columns)
    values = long.set_index([*ROW, "row", "column"])[STATS].unstack("column")
    values = values.swaplevel(axis=1).reindex(pd.MultiIndex.from_product([columns, STATS]), axis=1)
    values = values.reindex(_row_order(values.index))
    best = [(column, "best") for column in columns]
    values[best] = values[best].fillna(False).astype(bool)
    hours_column = "GPU h" if (cells["gpu_seconds"].fillna(0) > 0).any() else "Train h"
    table = ComparisonTable(values, info.reindex(values.index), block_columns, hours_column, metric, notes=())
    return dataclasses.replace(table, notes=tuple(_notes(table) + reference_notes))


def _average(per_ratio: pd.DataFrame, cells: pd.DataFrame, n_ratios: pd.Series) -> pd.DataFrame:
    """Avg: the mean over ratios of the per-ratio means, only when every ratio of the block has one.

    Its std is over seeds of each seed's own average, counting the seeds that have every ratio.
    """
    mean = per_ratio.groupby(ROW)["mean"].agg(lambda means: means.mean(skipna=False))
    seeds = cells.groupby([*ROW, "seed"])["value"].agg(["mean", "count"]).join(n_ratios, on=BLOCK)
    complete = seeds[seeds["count"] == seeds["n_ratios"]]
    spread = complete.groupby(ROW)["mean"].agg(std="std", n="count")
    avg = mean.to_frame("mean").join(spread).reset_index()
    return avg.assign(n=avg["n"].fillna(0), column=AVG)


def format_params(count: float) -> str:
    """A parameter count as the paper prints it: 80000 -> "80k", 730000 -> "730k", 1310720 -> "1.31M"."""
    if count >= 1e6:
        return f"{count / 1e6:.3g}M"
    if count >= 1e3:
        return f"{count / 1e3:.3g}k"
    return f"{count:.0f}"


def _params_label(counts: pd.Series) -> str | None:
    """Paper-style label of a row's trainable parameters; a range if its trials disagree."""
    counts = counts.dropna()
    if counts.empty:
        return None
    low, high = counts.min(), counts.max()
    return format_params(low) if low == high else f"{format_params(low)}–{format_params(high)}"


def _setup_info(cells: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """#Params and mean hours per trial of each of our rows, from the trials chosen for its cells."""
    grouped = cells.groupby(ROW)
    info = pd.DataFrame(
        {
            "params": grouped["trainable_params"].max(),
            "params_label": grouped["trainable_params"].agg(_params_label),
            "gpu_hours": grouped["gpu_seconds"].mean() / 3600,
            "train_hours": grouped["train_seconds"].mean() / 3600,
        }
    )
    info = rows.assign(row="ours").join(info, on=ROW).set_index([*ROW, "row"])
    return info.astype({"params": "Int64", "params_label": object})


def _reference_rows(
    rows: pd.DataFrame, reference: pd.DataFrame, block_columns: dict[tuple[str, str], list[str]]
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The paper's numbers for each of our (block, setup) rows that Table 1 has, in our column layout."""
    paper_columns = [ratio_label(ratio) for ratio in PAPER_RATIOS]
    cells, info, without_reference, recomputed = [], [], [], False
    for (dataset, backbone), columns in block_columns.items():
        paper_block = REFERENCE_BLOCKS.get((dataset, backbone_model(backbone)))
        if paper_block is None:
            without_reference.append(f"{dataset} ({backbone})")
            continue
        setups = rows.loc[(rows["dataset"] == dataset) & (rows["backbone"] == backbone), "setup"]
        block = reference[(reference["dataset"] == paper_block) & reference["setup"].isin(setups)].set_index("setup")
        means = block.reindex(columns=columns)  # ratios Table 1 does not have are missing
        # Table 1's Avg is over 10%..90%; over other ratios it is recomputed so that the delta compares like with like.
        means[AVG] = block[AVG] if columns == paper_columns else means.mean(axis=1, skipna=False)
        recomputed |= columns != paper_columns and not block.empty
        long = means.reset_index().melt(id_vars="setup", var_name="column", value_name="mean")  # keeps missing cells
        cells.append(long.assign(dataset=dataset, backbone=backbone))
        block_info = block[["params", "gpu_hours"]].rename(columns={"params": "params_label"}).reset_index()
        info.append(block_info.assign(dataset=dataset, backbone=backbone))
    paper = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=[*ROW, "column", "mean"])
    paper = paper.astype({"mean": float}).assign(std=math.nan, n=math.nan, best=False, row="paper")
    paper_info = (
        pd.concat(info, ignore_index=True) if info else pd.DataFrame(columns=[*ROW, "params_label", "gpu_hours"])
    ).assign(row="paper").set_index([*ROW, "row"])
    notes = []
    if not paper.empty:
        notes.append(f"[paper]: {REFERENCE_SOURCE}; Δ = ours − paper.")
        if recomputed:
            notes.append("The paper's Avg is recomputed over the ratios shown (Table 1 averages 10%..90%).")
    if without_reference:
        notes.append(
            f"No paper reference for {', '.join(without_reference)}: Table 1 has COCO and VOC2007 with ResNet101 only."
        )
    return paper, paper_info, notes


def _delta_rows(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Ours − paper in every column of every row that has a reference (missing where either is)."""
    keys = [*ROW, "column"]
    both = paper[keys + ["mean"]].merge(ours[keys + ["mean"]], on=keys, how="left", suffixes=("_paper", "_ours"))
    delta = both[keys].assign(mean=both["mean_ours"] - both["mean_paper"])
    return delta.assign(std=math.nan, n=math.nan, best=False, row="delta")


def _column_order(block_columns: dict[tuple[str, str], list[str]]) -> list[str]:
    labels = {label for columns in block_columns.values() for label in columns}
    return sorted(labels, key=lambda label: float(label.rstrip("%"))) + [AVG]


def _row_order(index: pd.MultiIndex) -> pd.MultiIndex:
    def order(key: tuple) -> tuple:
        dataset, backbone, setup, row = key
        return dataset, backbone, setup_sort_key(setup), ROW_KINDS.index(row)

    return pd.MultiIndex.from_tuples(sorted(index, key=order), names=index.names)


def _in_block(table: ComparisonTable) -> pd.DataFrame:
    """True where a row's block ran that column (Avg always)."""
    blocks = table.values.index.droplevel(["setup", "row"])
    return pd.DataFrame(
        [[column == AVG or column in table.block_columns[block] for column in table.columns] for block in blocks],
        index=table.values.index,
        columns=table.columns,
    )


def _fewer_seeds(table: ComparisonTable) -> pd.DataFrame:
    """True for our cells averaged over fewer seeds than the most any cell of their block has."""
    n = table.stat("n")
    most = n.max(axis=1).groupby(level=BLOCK).transform("max")
    return (n > 0) & n.lt(most, axis=0)


def _notes(table: ComparisonTable) -> list[str]:
    notes = [
        f"Cells: {table.metric} (%) of each cell's best finished trial, mean ± std over seeds (std only with more"
        f" than one seed); best of each column in bold; {MISSING} = no finished trial.",
        "Avg: mean over the ratios shown, only when every ratio has a value.",
    ]
    if not _in_block(table).all(axis=None):
        notes.append("Blank: that ratio was not run for that dataset.")
    if _fewer_seeds(table).any(axis=None):
        notes.append("†: fewer seeds than other cells of the block (a trial failed or did not run).")
    if table.hours_column == "GPU h":
        notes.append("#Params: trainable parameters. GPU h: mean GPU hours per trial.")
    else:
        notes.append(
            "#Params: trainable parameters. Train h: mean wall-clock training hours per trial (no GPU time was"
            " recorded; the paper's GPU hours are not comparable and not shown)."
        )
    return notes


# ---------------------------------------------------------------- rendering


def display_frame(table: ComparisonTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table as text cells, and where the best marks go.

    Index (Dataset, Setup) of display labels; columns the ratio labels, Avg, #Params and the hours column.
    """
    mean, std = table.stat("mean"), table.stat("std")
    kinds = table.values.index.get_level_values("row").to_numpy()[:, None]
    plain = mean.map(lambda value: f"{value:.1f}")
    spread = std.map(lambda value: "" if pd.isna(value) else f" ± {value:.1f}")
    signed = mean.map(lambda value: f"{value:+.1f}".replace("-", "−"))
    dagger = _fewer_seeds(table).map({True: "†", False: ""}.get)
    text = pd.DataFrame(
        np.where(kinds == "ours", plain + spread + dagger, np.where(kinds == "delta", signed, plain)),
        index=mean.index,
        columns=mean.columns,
    )
    text = text.mask(mean.isna(), MISSING).where(_in_block(table), "")

    info, kind = table.info, table.values.index.get_level_values("row")
    gpu = table.hours_column == "GPU h"
    text["#Params"] = info["params_label"].fillna(MISSING)
    text[table.hours_column] = (info["gpu_hours"] if gpu else info["train_hours"]).map(_format_hours)
    # Deltas compare mAP only; the paper's GPU hours are no match for our CPU training hours.
    text.loc[kind == "delta", ["#Params", table.hours_column]] = ""
    if not gpu:
        text.loc[kind == "paper", table.hours_column] = ""

    best = table.stat("best").reindex(columns=text.columns, fill_value=False).astype(bool)
    labels = pd.MultiIndex.from_tuples(
        [(f"{dataset} ({backbone})", _setup_label(setup, row)) for dataset, backbone, setup, row in mean.index],
        names=["Dataset", "Setup"],
    )
    return text.set_axis(labels), best.set_axis(labels)


def _setup_label(setup: str, row: str) -> str:
    label = SETUP_LABELS.get(setup, setup)
    return {"ours": label, "paper": f"{label} [paper]", "delta": f"{label} Δ"}[row]


def _format_hours(hours: float) -> str:
    if pd.isna(hours):
        return MISSING
    if hours >= 100:
        return f"{hours:.0f}"
    return f"{hours:.3g}" if hours >= 0.01 or hours == 0 else "<0.01"


def to_markdown(table: ComparisonTable) -> str:
    """A pipe table in the paper's layout (dataset named on its block's first row), best cells in bold, notes below."""
    text, best = display_frame(table)
    text = text.mask(best, "**" + text + "**").reset_index()
    text["Dataset"] = text["Dataset"].where(text["Dataset"] != text["Dataset"].shift(), "")
    aligns = ["left", "left"] + ["right"] * (text.shape[1] - 2)
    body = tabulate(text, headers="keys", tablefmt="pipe", showindex=False, colalign=aligns, disable_numparse=True)
    return body + "\n\n" + "\n".join(f"- {note}" for note in table.notes) + "\n"


def to_csv(table: ComparisonTable) -> str:
    """One line per row: `<label>_mean`, `_std`, `_n`, `_best` per column label, then params (exact), params_label,
    gpu_hours, train_hours."""
    values = table.values.copy()
    values.columns = [f"{column}_{stat}" for column, stat in values.columns]
    n_columns = [column for column in values.columns if column.endswith("_n")]
    values[n_columns] = values[n_columns].astype("Int64")
    return values.join(table.info).reset_index().to_csv(index=False)


_LATEX = str.maketrans(
    {
        "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---", "–": "--", "−": "$-$",
        "†": r"$^\dagger$", "Δ": r"$\Delta$", "≥": r"$\geq$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
    }
)


def latex_escape(text: str) -> str:
    """Text (with the few non-ASCII symbols the tables use) as LaTeX source."""
    return text.translate(_LATEX)


def best_css(best: pd.DataFrame) -> pd.DataFrame:
    """Bold where `best` is True, as CSS for a pandas Styler (its LaTeX export turns it into \\textbf)."""
    return best.map({True: "font-weight: bold", False: ""}.get)


def to_latex(table: ComparisonTable) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule; packages booktabs and multirow), notes as caption."""
    text, best = display_frame(table)
    text = text.map(latex_escape)
    text.index = text.index.set_levels([level.map(latex_escape) for level in text.index.levels])
    text.columns = text.columns.map(latex_escape)
    styler = text.style.apply(lambda _: best_css(best).set_axis(text.index).set_axis(text.columns, axis=1), axis=None)
    latex = styler.to_latex(
        hrules=True,
        convert_css=True,
        clines="skip-last;data",
        multirow_align="t",
        column_format="ll" + "r" * text.shape[1],
        caption=latex_escape(" ".join(table.notes)),
        position_float="centering",
    )
    # Blocks are separated by booktabs rules rather than Styler's \cline (none before the closing rule).
    latex = re.sub(r"\\cline\{[\d-]+\}\n\\bottomrule", r"\\bottomrule", latex)
    return re.sub(r"\\cline\{[\d-]+\}", r"\\midrule", latex)


def to_html(table: ComparisonTable) -> str:
    """An HTML table (pandas Styler): best cells bold, notes as caption."""
    text, best = display_frame(table)
    return html_styler(text, best, table.notes).to_html()


def html_styler(text: pd.DataFrame, best: pd.DataFrame, notes: list[str]):
    """The Styler of every HTML table here: escaped cells and headers, best cells bold, notes as caption."""
    return (
        text.style.format(escape="html")
        .format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1)
        .apply(lambda _: best_css(best), axis=None)
        .set_caption("<br>".join(html.escape(note) for note in notes))
        .set_table_styles(
            [
                {"selector": "", "props": "border-collapse: collapse; font-family: sans-serif"},
                {"selector": "th, td", "props": "padding: 2px 10px; border-bottom: 1px solid #ddd"},
                {"selector": "td", "props": "text-align: right"},
                {"selector": "caption", "props": "caption-side: bottom; text-align: left; font-size: smaller"},
            ]
        )
    )


def to_rich(table: ComparisonTable, title: str | None = None) -> rich.table.Table:
    """A rich table, one section per block: best cells bold with *, paper rows dim, deltas green or red."""
    text, best = display_frame(table)
    kinds = table.values.index.get_level_values("row")
    deltas = table.stat("mean")
    caption = rich.text.Text("\n".join(["*: best of its column.", *table.notes]))
    output = rich.table.Table(title=title, caption=caption, caption_justify="left")
    output.add_column("Dataset", no_wrap=True)
    output.add_column("Setup", no_wrap=True)
    for column in text.columns:
        output.add_column(column, justify="right", no_wrap=True)
    datasets = text.index.get_level_values("Dataset")
    for position, ((dataset, setup), cells) in enumerate(text.iterrows()):
        kind = kinds[position]
        first_of_block = position == 0 or datasets[position - 1] != dataset
        last_of_block = position == len(text) - 1 or datasets[position + 1] != dataset
        styled = []
        for column, cell in cells.items():
            if best.iloc[position][column]:
                styled.append(rich.text.Text(f"{cell}*", style="bold"))
            elif kind == "delta" and column in deltas.columns and pd.notna(deltas.iloc[position][column]):
                styled.append(rich.text.Text(cell, style="green" if deltas.iloc[position][column] >= 0 else "red"))
            else:
                styled.append(rich.text.Text(cell, style="dim" if kind == "paper" else ""))
        labels = rich.text.Text(dataset if first_of_block else ""), rich.text.Text(setup)
        output.add_row(*labels, *styled, end_section=last_of_block)
    return output


FORMATS = ("rich", "markdown", "csv", "latex", "html")
FILE_NAMES = {
    "rich": "comparison.txt", "markdown": "comparison.md", "csv": "comparison.csv", "latex": "comparison.tex",
    "html": "comparison.html",
}  # fmt: skip


def print_rich(table: ComparisonTable, title: str | None = None, file: TextIO | None = None) -> None:
    """Print the rich table to `file` (default stdout), at least as wide as the table so that no cell is cut."""
    output = to_rich(table, title)
    console = rich.console.Console(file=file)
    natural = rich.measure.Measurement.get(console, console.options.update(max_width=10_000), output).maximum
    if natural > console.width:
        console = rich.console.Console(file=file, width=natural)
    console.print(output)


def render(table: ComparisonTable, fmt: str, title: str | None = None) -> str:
    """The table as text in one of FORMATS (rich: plain text without colours)."""
    if fmt == "rich":
        buffer = io.StringIO()
        print_rich(table, title, buffer)
        return buffer.getvalue()
    renderers = {"markdown": to_markdown, "csv": to_csv, "latex": to_latex, "html": to_html}
    if fmt not in renderers:
        raise UserInputError(f"unknown table format '{fmt}': choose one of {', '.join(FORMATS)}")
    return renderers[fmt](table)


def render_marked(shown: pd.DataFrame, marked: pd.DataFrame, fmt: str, title: str, caption: str) -> str:
    """A table of strings (its index: the row labels, one column per level) with some cells marked
    bold, as text in one of FORMATS except csv: the conventions of the comparison table (bold and *,
    LaTeX escaping and booktabs, the same HTML style, the caption under it)."""
    labels = list(shown.index.names) if shown.index.names[0] is not None else [""]
    if fmt == "markdown":
        bold = shown.mask(marked, "**" + shown + "**")
        return bold.reset_index().to_markdown(index=False, disable_numparse=True) + f"\n\n- {caption}\n"
    if fmt == "latex":
        text = shown.map(latex_escape)
        escape = lambda key: tuple(map(latex_escape, key)) if isinstance(key, tuple) else latex_escape(key)  # noqa: E731
        text.index = text.index.map(escape)
        text.columns = text.columns.map(latex_escape)
        styler = text.style.apply(lambda _: best_css(marked).set_axis(text.index).set_axis(text.columns, axis=1), axis=None)
        return styler.to_latex(hrules=True, convert_css=True, column_format="l" * len(labels) + "r" * text.shape[1],
                               caption=latex_escape(f"{title}. {caption}"), position_float="centering")  # fmt: skip
    if fmt == "html":
        return html_styler(shown, marked, [caption]).to_html()
    if fmt != "rich":
        raise ValueError(f"unknown table format '{fmt}'")
    output = rich.table.Table(title=title, caption=caption, caption_justify="left")
    for label in labels:
        output.add_column(label, no_wrap=True)
    for column in shown.columns:
        output.add_column(column, justify="right", no_wrap=True)
    for (key, row), (_, marks) in zip(shown.iterrows(), marked.iterrows(), strict=True):
        cells = [rich.text.Text(f"{cell}*", style="bold") if mark else rich.text.Text(cell) for cell, mark in zip(row, marks)]
        keys = key if isinstance(key, tuple) else (key,)
        output.add_row(*(rich.text.Text(str(part)) for part in keys), *cells)  # Text: "[reference]" is not markup
    buffer = io.StringIO()
    console = rich.console.Console(file=buffer, width=10_000)
    natural = rich.measure.Measurement.get(console, console.options, output).maximum
    rich.console.Console(file=buffer, width=natural).print(output)
    return buffer.getvalue()


def write_formats(out_dir: Path, stem: str, render: Callable[[str], str]) -> list[Path]:
    """`render(fmt)` for every format, written under `out_dir/tables` as `<stem>.<extension>`."""
    table_dir = out_dir / "tables"
    table_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, file_name in FILE_NAMES.items():
        path = table_dir / file_name.replace("comparison", stem)
        path.write_text(render(fmt))
        written.append(path)
    return written
