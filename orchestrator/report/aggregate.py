"""What the `table` command hands each task family to tabulate: the spec's trial runs read once
(`TableInput`), and what a family's table is to the command (`TablePart`: shown in a format, written
in every format). The command itself is `orchestrator.report.table`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from orchestrator.report.experiment import Target


@dataclass(frozen=True)
class TableInput:
    """What the `table` command read, for the families to tabulate: the store, the experiment and
    its launch run, the spec's trial runs (`report.reader.read_trials`), and the options."""

    client: MlflowClient
    experiment: str
    target: Target
    launch: Run | None
    trials: pd.DataFrame
    metric: str | None
    """`--metric`: what a cell's value is and how its best trial is chosen; None: each family's default."""
    reference: str

    def trials_of(self, family: str) -> pd.DataFrame:
        return self.trials[self.trials["family"] == family]


@dataclass(frozen=True)
class TablePart:
    """One table of the output: `show(fmt)` prints it (`rich` to the console, any other format as a
    clean document on stdout), `write(out_dir)` writes it in every format (and its plots)."""

    show: Callable[[str], None]
    write: Callable[[Path], list[Path]]

    @classmethod
    def of_document(cls, document: Callable[[str], str], write: Callable[[Path], list[Path]]) -> "TablePart":
        """A table whose every format, rich included, is a text (`document(fmt)`)."""
        return cls(lambda fmt: sys.stdout.write(document(fmt)), write)
