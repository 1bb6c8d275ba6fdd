"""The text formats every table here is written in, with their file names: rich (plain text),
Markdown, CSV, LaTeX (booktabs, pandas Styler) and HTML (pandas Styler), best cells marked bold.

`render_marked` renders any table of strings with marked cells in those conventions (the families'
tables); `write_formats` writes a table in every format.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

import rich.console
import rich.measure
import rich.table
import rich.text

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("rich", "markdown", "csv", "latex", "html")
"""What `table --format` prints; `--out` writes them all (the CLI's choices are these)."""

FILE_NAMES = {
    "rich": "comparison.txt", "markdown": "comparison.md", "csv": "comparison.csv", "latex": "comparison.tex",
    "html": "comparison.html",
}  # fmt: skip
"""The file each format is written to, for the comparison table; other tables replace its stem."""

MISSING = "—"
"""A cell no finished trial fills."""

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
    print_wide(output, buffer)
    return buffer.getvalue()


def print_wide(output: rich.table.Table, file: TextIO | None = None) -> None:
    """Print a rich table to `file` (default stdout), at least as wide as the table so that no cell is cut."""
    console = rich.console.Console(file=file)
    natural = rich.measure.Measurement.get(console, console.options.update(max_width=10_000), output).maximum
    if natural > console.width:
        console = rich.console.Console(file=file, width=natural)
    console.print(output)


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
