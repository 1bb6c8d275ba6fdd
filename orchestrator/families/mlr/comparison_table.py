"""The comparison table of the MLR setups, as in Table 1 of the PositiveCoOp paper (arXiv 2409.08381).

One block per dataset and backbone, a row per setup, a column per label ratio, Avg, #Params and
hours; a table cell is the mean ± std over seeds of the cells' values (`orchestrator.report.reader`).
`--reference paper` adds the paper's rows and a delta row per setup. Its text is
`orchestrator.families.mlr.comparison_text`.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources

import pandas as pd

from orchestrator.report.reader import BLOCK, ROW, best_per_cell, check_metric, search_trials
from orchestrator.report.render import MISSING

SETUP_ORDER = ("baseline", "negative_coop", "dual_coop", "positive_coop")
"""Canonical row order within a block, as in the paper's Table 1; other setups follow alphabetically."""

SETUP_LABELS = {
    "baseline": "Baseline",
    "negative_coop": "NegativeCoOp",
    "dual_coop": "DualCoOp",
    "positive_coop": "PositiveCoOp",
}

AVG = "Avg"

STATS = ["mean", "std", "n", "best"]

ROW_KINDS = ("ours", "paper", "delta")

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


def best_search_configs(trials: pd.DataFrame, metric: str = "best_mAP") -> pd.DataFrame:
    """The best trial of every searched cell, with its searched params, in table order."""
    searched = search_trials(trials, metric)
    if searched.empty:
        return searched
    best = best_per_cell(searched, metric)
    ordered = best.assign(_order=best["setup"].map(setup_sort_key))
    return ordered.sort_values(["_order", "dataset", "backbone", "label_ratio", "seed"]).drop(columns="_order")


def load_reference() -> pd.DataFrame:
    """Table 1 of the PositiveCoOp paper as shipped in `orchestrator/reference/positivecoop_table1.csv`.

    One row per method and paper block; columns `dataset` (COCO, VOC2007), `backbone`, `method`,
    `setup` (this project's registry name, NaN for methods without a counterpart), `params` (as
    printed), `gpu_hours`, then `10%`..`90%` and `Avg` (mAP, %).
    """
    with resources.files("orchestrator").joinpath("reference").joinpath("positivecoop_table1.csv").open() as csv:
        return pd.read_csv(csv, comment="#")


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
