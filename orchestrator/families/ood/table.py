"""The OOD table of the `table` command: one row per LAPT variant, FPR95 and AUROC per OOD set.

Like the LAPT paper's tables: columns FPR95 (lower is better; OpenOOD's convention, OOD as the
positive class: `fpr95_ood_pos`) and AUROC for each OOD set, their near-OOD and far-OOD averages,
and the ID top-1 accuracy; each value the mean over seeds of the trials' last-epoch metrics (%).
Rows: the variants of `orchestrator.families.ood.VARIANTS` (and a label ratio when several were run);
`--reference paper` adds the rows of `reference/lapt_ood.csv`.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import pandas as pd

from orchestrator.report.render import MISSING, render_marked

METRICS = (("fpr95_ood_pos", "FPR95↓"), ("auroc", "AUROC↑"))
GROUPS = ("near", "far")
VARIANT_LABELS = {
    "lapt": "LAPT",
    "lapt_no_cross_modal": "LAPT w/o cross-modal mixing",
    "lapt_no_cross_distribution": "LAPT w/o cross-distribution mixing",
    "lapt_no_mixing": "LAPT w/o mixing",
    "neglabel": "NegLabel (untuned)",
    "zero_shot": "Zero-shot (MSP)",
}
"""Each variant's row label, in the rows' order."""


def ood_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The FINISHED rows of `report.reader.read_trials`'s frame for an OOD family's runs, with the
    columns the table reads: `variant` (the setup), and `sets`, the OOD sets in order (from the
    trial's config param `ood_sets`, its list of sets as JSON, `track.store.flatten`)."""
    finished = trials[trials["status"] == "FINISHED"]
    if finished.empty:
        return finished
    sets = finished["params.ood_sets"].map(lambda text: tuple((entry["name"], entry["group"]) for entry in json.loads(text)))
    return finished.assign(variant=finished["setup"], sets=sets)


def load_reference() -> pd.DataFrame:
    with resources.files("orchestrator").joinpath("reference").joinpath("lapt_ood.csv").open() as csv:
        return pd.read_csv(csv, comment="#")


def _columns(sets: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(header place, metric, logged metric name) of every column."""
    columns = [(name, metric, f"{metric}.{name}") for name, _ in sets for metric, _ in METRICS]
    for group in GROUPS:
        if any(g == group for _, g in sets):
            columns += [(f"{group.capitalize()} avg", metric, f"{metric}.{group}") for metric, _ in METRICS]
    return columns + [("ID", "id_accuracy", "id_accuracy")]


def build_ood_table(trials: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows: variant (with its ratio when a variant ran at several); columns: (OOD set or near/far
    average, metric) and the ID accuracy; values: means over seeds, NaN where nothing was logged."""
    sets = list(dict.fromkeys(s for run_sets in trials["sets"] for s in run_sets))
    columns = _columns(sets)
    several_ratios = trials.groupby("variant")["label_ratio"].nunique()
    order = {variant: i for i, variant in enumerate(VARIANT_LABELS)}
    groups = sorted(trials.groupby(["variant", "label_ratio"]), key=lambda kv: (order.get(kv[0][0], len(order)), -kv[0][1]))
    rows, labels = [], []
    for (variant, ratio), runs in groups:
        rows.append([runs[logged].mean() if logged in runs else math.nan for _, _, logged in columns])
        label = VARIANT_LABELS.get(variant, variant)
        labels.append(f"{label} ({ratio:.0%} images)" if several_ratios[variant] > 1 else label)
    if reference is not None:
        for label, reported in reference.groupby("label", sort=False):
            by_group = {(f"{row['group'].capitalize()} avg", metric): row[metric] for _, row in reported.iterrows() for metric, _ in METRICS}
            rows.append([by_group.get((place, metric), math.nan) for place, metric, _ in columns])
            labels.append(f"{label} [reference]")
    index = pd.MultiIndex.from_tuples([(place, metric) for place, metric, _ in columns])
    return pd.DataFrame(rows, index=pd.Index(labels, name="Variant"), columns=index)


LOWER_IS_BETTER = ("fpr95_ood_pos",)
CAPTION = "FPR95: OpenOOD's (OOD positive); values in %, means over seeds; best of each column in bold (*)."


def display(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(strings: one decimal, "—" where missing, headers `<set> FPR95↓`; the best cell of each
    column among the rows we ran, the reference rows left out)."""
    names = dict(METRICS) | {"id_accuracy": "Acc"}
    ours = ~table.index.str.endswith("[reference]")
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for column in table.columns:
        values = table.loc[ours, column]
        if values.notna().any():
            target = values.min() if column[1] in LOWER_IS_BETTER else values.max()
            best.loc[ours, column] = values == target
    shown = table.map(lambda v: MISSING if pd.isna(v) else f"{v:.1f}")
    headers = [f"{place} {names[metric]}" for place, metric in table.columns]
    shown.columns = best.columns = headers
    return shown, best


def render(table: pd.DataFrame, fmt: str, title: str) -> str:
    """The OOD table as text in one of `FORMATS`, with the MLR table's conventions (bold best
    cells, LaTeX escaping, the same HTML style)."""
    if fmt == "csv":
        flat = table.copy()
        flat.columns = [f"{place}.{metric}" for place, metric in table.columns]
        return flat.to_csv()
    shown, best = display(table)
    return render_marked(shown, best, fmt, title, CAPTION)
