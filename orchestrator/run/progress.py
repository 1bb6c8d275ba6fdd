"""Progress of a run: a compact table of trials and their best metric instead of Ray's log stream.

On a terminal the table refreshes in place; otherwise (a log file, a CI job) each trial's status
change is one line, and the full table is printed when the run ends.
"""

from __future__ import annotations

import time

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from trainables.tasks import task_of

from orchestrator.track.members import Members, epochs, is_group
from orchestrator.track.trial_errors import (
    error_path,
    error_summary,
    trial_exception,
    user_error_cause,
)

_ORDER = {"RUNNING": 0, "PENDING": 1, "PAUSED": 2, "ERROR": 3, "TERMINATED": 4}


def trial_rows(trials: list, statuses: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(name, status, epoch/epochs, "best <metric> <value>") per trial: running first, then by name.
    The metric is the one the trial's family ranks by."""
    rows = []
    for trial in sorted(trials, key=lambda t: (_ORDER.get(statuses[t.trial_id], 9), t.config["trial_name"])):
        result = trial.last_result or {}
        metric = task_of(trial.config).metric
        best = result.get(f"best_{metric}")
        rows.append(
            (
                trial.config["trial_name"],
                statuses[trial.trial_id],
                f"{result.get('epoch', 0)}/{epochs(trial.config)}",
                f"best {metric} {best:.2f}" if best is not None else f"best {metric} -",
            )
        )
    return rows


def render(trials: list, statuses: dict[str, str], reused: int = 0) -> Table:
    """The table of `trials`, with their `statuses` by trial id; `reused`: the spec's trials that
    earlier launches finished, which this one does not run."""
    counts = {}
    for trial in trials:
        counts[statuses[trial.trial_id]] = counts.get(statuses[trial.trial_id], 0) + 1
    summary = ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items(), key=lambda kv: _ORDER.get(kv[0], 9)))
    title = f"{reused} reused, {len(trials)} to run: {summary}" if reused else f"{len(trials)} trials: {summary}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column, justify in (("trial", "left"), ("status", "left"), ("epoch", "right"), ("best", "right")):
        table.add_column(column, justify=justify)
    for row in trial_rows(trials, statuses):
        table.add_row(*row)
    return table


class ProgressTable(Callback):
    """Shows trials as a table refreshed at most every `interval_s` seconds."""

    def __init__(self, interval_s: float = 5.0, reused: int = 0):
        self.interval_s = interval_s
        self.reused = reused
        self._reset()

    def _reset(self) -> None:
        self._console: Console | None = None
        self._live: Live | None = None
        self._last_shown = 0.0
        self._shown: dict[str, tuple[str, int]] = {}  # what each trial's line last said
        self._statuses: dict[str, str] = {}  # as of the last step: stopping marks every trial TERMINATED
        self._members = Members()  # what fused groups' results said of each member

    def __getstate__(self) -> dict:
        return {"interval_s": self.interval_s, "reused": self.reused}

    def __setstate__(self, state: dict) -> None:
        self.reused = 0  # in states pickled before launches reused trials
        self.__dict__.update(state)
        self._reset()

    def setup(self, **info) -> None:
        self._console = Console()
        if self._console.is_terminal:
            self._live = Live(console=self._console, auto_refresh=False, transient=False)
            self._live.start()

    def _rows_of(self, trials: list) -> list:
        """The trials shown: each Ray trial, or each member of a fused group."""
        return [one for trial in trials for one in self._members.of(trial)]

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        for member in self._members.record(trial, result)[1]:
            self._console.print(f"{member.config['trial_name']} failed: {member.error}", style="red", highlight=False, soft_wrap=True)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        trials = self._rows_of(trials)
        self._statuses = {trial.trial_id: trial.status for trial in trials}
        now = time.monotonic()
        if now - self._last_shown < self.interval_s:
            return
        self._last_shown = now
        if self._live is not None:
            self._live.update(render(trials, self._statuses, self.reused), refresh=True)
            return
        for trial in trials:
            state = (trial.status, (trial.last_result or {}).get("epoch", 0))
            if self._shown.get(trial.trial_id) != state:
                self._shown[trial.trial_id] = state
                name, status, epoch, best = trial_rows([trial], self._statuses)[0]
                self._console.print(f"{name}  {status}  epoch {epoch}  {best}", highlight=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        name = trial.config["trial_name"]
        cause = user_error_cause(trial_exception(trial))
        message = f"{name} failed: {cause}" if cause else f"{name} failed; traceback in {error_path(trial)}"
        if is_group(trial) and cause is None:  # its members' own failures were said as they happened
            message = f"{name} failed: {error_summary(trial)}"
        self._console.print(message, style="red", highlight=False, soft_wrap=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        trials = self._rows_of(trials)
        # Trials that ended after the last step (or were stopped by Ctrl-C) keep their last status.
        statuses = {trial.trial_id: self._statuses.get(trial.trial_id, trial.status) for trial in trials}
        if self._live is not None:
            self._live.update(render(trials, statuses, self.reused), refresh=True)
            self._live.stop()
            self._live = None
        else:
            self._console.print(render(trials, statuses, self.reused))
