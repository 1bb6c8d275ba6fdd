"""Figures of one experiment, each saved as PNG and SVG.

mAP against label ratio (a line per setup, a panel per dataset and backbone, a ±std band over seeds);
for searched cells, the metric against each searched parameter (gamma-, gamma+, delta) and Optuna's
parameter importances. Matplotlib's object API is used (`Figure`, no pyplot), so no global backend
state is touched and no display is needed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib
import optuna
import pandas as pd
from matplotlib.figure import Figure

from orchestrator.families.mlr.comparison_table import (
    SETUP_LABELS,
    SETUP_ORDER,
    setup_sort_key,
)
from orchestrator.report.reader import (
    BLOCK,
    CELL,
    best_per_cell,
    search_trials,
    searched_params,
)

FORMATS = ("png", "svg")
PARAM_LABELS = {
    "params.loss.gamma_neg": r"$\gamma_-$ (loss.gamma_neg)",
    "params.loss.gamma_pos": r"$\gamma_+$ (loss.gamma_pos)",
    "params.loss.clip": r"$\delta$ (loss.clip)",
}
FONT = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9}


def param_label(param: str) -> str:
    return PARAM_LABELS.get(param, param.removeprefix("params."))


def setup_colors(setups: list[str]) -> dict[str, tuple]:
    """One colour per setup, the same in every figure: known setups by their canonical position, others after."""
    palette = matplotlib.colormaps["tab10"]
    others = sorted(set(setups) - set(SETUP_ORDER))
    position = {setup: index for index, setup in enumerate([*SETUP_ORDER, *others])}
    return {setup: palette(position[setup] % 10) for setup in set(setups)}


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `<stem>.png` and `<stem>.svg` under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FORMATS]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def panel_grid(panels: int, columns: int, width: float, height: float) -> tuple[Figure, list]:
    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns + 1.8, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, list(axes[:panels])


def plot_map_vs_ratio(trials: pd.DataFrame, metric: str, out_dir: Path, stem: str = "map_vs_ratio") -> list[Path]:
    """Save `map_vs_ratio_figure` as PNG and SVG; [] when no trial finished."""
    figure = map_vs_ratio_figure(trials, metric)
    return [] if figure is None else save_figure(figure, out_dir, stem)


def map_vs_ratio_figure(trials: pd.DataFrame, metric: str) -> Figure | None:
    """mAP against label ratio: a panel per (dataset, backbone), a line per setup (mean over seeds), a ±std band."""
    cells = best_per_cell(trials, metric)
    if cells.empty:
        return None
    stats = cells.groupby([*BLOCK, "setup", "label_ratio"])[metric].agg(["mean", "std"]).reset_index()
    colors = setup_colors(stats["setup"].tolist())
    blocks = list(stats.groupby(BLOCK))
    with matplotlib.rc_context(FONT):
        figure, axes = panel_grid(len(blocks), columns=3, width=4.6, height=3.4)
        for axis, ((dataset, backbone), block) in zip(axes, blocks):
            for setup, line in sorted(block.groupby("setup"), key=lambda item: setup_sort_key(item[0])):
                percent = line["label_ratio"] * 100
                axis.plot(percent, line["mean"], marker="o", color=colors[setup], label=SETUP_LABELS.get(setup, setup))
                # One seed has no std: the band is left out there rather than drawn with zero width.
                if line["std"].notna().any():
                    low, high = line["mean"] - line["std"], line["mean"] + line["std"]
                    axis.fill_between(percent, low, high, color=colors[setup], alpha=0.2, linewidth=0)
            axis.set_xticks(sorted(block["label_ratio"].unique() * 100))
            axis.set_title(f"{dataset} ({backbone})")
            axis.set_xlabel("labels kept (%)")
            axis.set_ylabel(f"{metric} (%)")
            axis.grid(alpha=0.3)
        handles, labels = unique_legend(axes)
        figure.legend(handles, labels, loc="outside right upper", title="setup (band: ±std over seeds)")
    return figure


def numeric_search(trials: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Finished trials of the searched cells, numeric searched params as floats (gamma-, gamma+, delta first)."""
    searched = search_trials(trials, metric)
    numeric = {param: pd.to_numeric(searched[param], errors="coerce") for param in searched_params(trials)}
    params = [param for param, values in numeric.items() if values.notna().sum() == searched[param].notna().sum()]
    known = list(PARAM_LABELS)
    params.sort(key=lambda param: (known.index(param) if param in known else len(known), param))
    return searched.assign(**{param: numeric[param] for param in params}), params


def plot_search(trials: pd.DataFrame, metric: str, out_dir: Path) -> list[Path]:
    """For searched cells: the metric against each searched parameter, and parameter importances ([]: no search)."""
    searched, params = numeric_search(trials, metric)
    if searched.empty or not params:
        return []
    paths = save_figure(search_scatter_figure(searched, params, metric), out_dir, "search_scatter")
    importances = param_importances(searched, params, metric)
    if not importances.empty:
        paths += save_figure(importances_figure(importances), out_dir, "param_importances")
    return paths


def search_scatter_figure(searched: pd.DataFrame, params: list[str], metric: str) -> Figure:
    """A row of panels per (dataset, backbone, label ratio), a panel per searched parameter, colour = setup."""
    colors = setup_colors(searched["setup"].tolist())
    groups = list(searched.groupby([*BLOCK, "label_ratio"]))
    with matplotlib.rc_context(FONT):
        figure, axes = panel_grid(len(groups) * len(params), columns=len(params), width=3.8, height=3.0)
        panels = iter(axes)
        for (dataset, backbone, ratio), group in groups:
            for param in params:
                axis = next(panels)
                for setup, points in sorted(group.groupby("setup"), key=lambda item: setup_sort_key(item[0])):
                    label = SETUP_LABELS.get(setup, setup)
                    axis.scatter(points[param], points[metric], s=18, alpha=0.8, color=colors[setup], label=label)
                axis.set_title(f"{dataset} ({backbone}), {ratio * 100:g}% labels")
                axis.set_xlabel(param_label(param))
                axis.set_ylabel(f"{metric} (%)")
                axis.grid(alpha=0.3)
        handles, labels = unique_legend(axes)
        figure.legend(handles, labels, loc="outside right upper", title="setup")
    return figure


def unique_legend(axes: list) -> tuple[list, list]:
    """One legend entry per setup over all panels, in the canonical setup order."""
    entries = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    setups = {label: setup for setup, label in SETUP_LABELS.items()}
    labels = sorted(entries, key=lambda label: setup_sort_key(setups.get(label, label)))
    return [entries[label] for label in labels], labels


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def param_importances(searched: pd.DataFrame, params: list[str], metric: str, seed: int = 0) -> pd.DataFrame:
    """Optuna fANOVA importances of the searched parameters, per setup.

    One in-memory study per searched cell, built from its MLflow trials (the metric's scale differs
    between datasets and ratios, so cells are not pooled), then averaged over the setup's cells.
    Columns: setup, param, importance (each cell's importances sum to 1).
    """
    rows = []
    with _quiet_optuna():
        for cell, trials in searched.dropna(subset=params).groupby(CELL):
            varying = [param for param in params if trials[param].nunique() > 1]
            # fANOVA needs variation in both the parameters and the metric.
            if not varying or trials[metric].nunique() < 2:
                continue
            distributions = {
                param.removeprefix("params."): optuna.distributions.FloatDistribution(low, high)
                for param, low, high in zip(varying, trials[varying].min(), trials[varying].max())
            }
            study = optuna.create_study(direction="maximize")
            study.add_trials(
                [
                    optuna.trial.create_trial(
                        params=dict(zip(distributions, values)), distributions=distributions, value=value
                    )
                    for values, value in zip(trials[varying].itertuples(index=False), trials[metric])
                ]
            )
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
            )
            setup = cell[CELL.index("setup")]
            rows += [
                {"setup": setup, "param": f"params.{name}", "importance": value} for name, value in importances.items()
            ]
    if not rows:
        return pd.DataFrame(columns=["setup", "param", "importance"])
    return pd.DataFrame(rows).groupby(["setup", "param"], as_index=False)["importance"].mean()


def importances_figure(importances: pd.DataFrame) -> Figure:
    """Horizontal bars: a group per parameter, a bar per setup."""
    table = importances.pivot(index="param", columns="setup", values="importance")
    table = table[sorted(table.columns, key=setup_sort_key)]
    colors = setup_colors(list(table.columns))
    with matplotlib.rc_context(FONT):
        figure = Figure(figsize=(6.5, 1.0 + 0.5 * len(table) * len(table.columns) ** 0.5), layout="constrained")
        axis = figure.subplots()
        height = 0.8 / len(table.columns)
        for position, setup in enumerate(table.columns):
            offsets = [row + (position - (len(table.columns) - 1) / 2) * height for row in range(len(table))]
            label = SETUP_LABELS.get(setup, setup)
            axis.barh(offsets, table[setup].fillna(0), height=height, color=colors[setup], label=label)
        axis.set_yticks(range(len(table)), [param_label(param) for param in table.index])
        axis.set_xlabel("importance (Optuna fANOVA, mean over searched cells)")
        axis.set_xlim(0, 1)
        axis.grid(axis="x", alpha=0.3)
        axis.legend(title="setup", loc="lower right")
    return figure
