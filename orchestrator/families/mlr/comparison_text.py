"""The comparison table as text: its cells as strings with the best of each column marked
(`display_frame`), then each format of `orchestrator.report.render`: rich with colours, a Markdown pipe
table, CSV with every statistic, booktabs LaTeX and HTML.
"""

from __future__ import annotations

import io
import re
from typing import TextIO

import numpy as np
import pandas as pd
import rich.table
import rich.text
from tabulate import tabulate

from trainables.errors import UserInputError

from orchestrator.families.mlr.comparison_table import (
    SETUP_LABELS,
    ComparisonTable,
    _fewer_seeds,
    _in_block,
)
from orchestrator.report.render import (
    FORMATS,
    MISSING,
    best_css,
    html_styler,
    latex_escape,
    print_wide,
)


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


def print_rich(table: ComparisonTable, title: str | None = None, file: TextIO | None = None) -> None:
    """Print the rich table to `file` (default stdout), at least as wide as the table so that no cell is cut."""
    print_wide(to_rich(table, title), file)


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
