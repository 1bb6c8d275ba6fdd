"""While the tracking server does not answer: which trials MLflow missed, kept beside the results.

The callback lists them (`Undelivered`) instead of failing the launch; a later launch delivers them
from Ray's results (`orchestrator.track.replay`).
"""

from __future__ import annotations

import functools
import json
import sys
import time
import urllib.error
from pathlib import Path

from mlflow.exceptions import MlflowException

PROBE_INTERVAL_S = 30.0
"""While the tracking server is down, how often the driver asks it again."""


def is_unreachable(error: BaseException) -> bool:
    """Whether an MLflow call failed because the server did not answer (not because it refused)."""
    if isinstance(error, (ConnectionError, TimeoutError, urllib.error.URLError)):
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        return error.get_http_status_code() in (502, 503, 504) or "Max retries exceeded" in text or "Connection" in text
    return type(error).__module__.startswith(("requests", "urllib3")) and "Connection" in type(error).__name__


class Undelivered:
    """The trials whose MLflow logging an unreachable server interrupted, listed in the driver's
    folder (`mlflow-undelivered.json` in `ExperimentSpec.state_dir`) by the Tune experiment that
    holds their results, so that a later launch delivers them from there."""

    FILE = "mlflow-undelivered.json"

    def __init__(self, state_dir: Path):
        self.path = state_dir / self.FILE

    def by_location(self) -> dict[str, list[str]]:
        """Ray trial ids by their Tune experiment's location ("": the experiment's own folder, where
        Tune kept them before each spec had its own; a list written then reads so)."""
        if not self.path.is_file():
            return {}
        listed = json.loads(self.path.read_text())
        return {"": listed} if isinstance(listed, list) else listed

    def trials(self) -> list[str]:
        """Ray trial ids, sorted."""
        return sorted(trial for trials in self.by_location().values() for trial in trials)

    def add(self, trial_id: str, location: str | None) -> None:
        """List `trial_id` under its Tune experiment's location (None: the experiment's own folder)."""
        listed = self.by_location()
        listed[location or ""] = sorted({*listed.get(location or "", []), trial_id})
        self.path.write_text(json.dumps(listed))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def unless_unreachable(handler):
    """A trial event's handler of `callback.MlflowCallback`, run unless the server is down or the trial already missed an
    event: then list the trial as undelivered (its run is rebuilt later from Ray's results)."""

    @functools.wraps(handler)
    def guarded(self, iteration: int, trials: list, trial, *args, **info) -> None:
        if self.results_dir is None:
            return handler(self, iteration, trials, trial, *args, **info)
        undelivered = Undelivered(self.results_dir)
        if trial.trial_id in undelivered.trials() or not self._server_answers():
            undelivered.add(trial.trial_id, self.tune_location)
            return None
        try:
            return handler(self, iteration, trials, trial, *args, **info)
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._down_until = time.monotonic() + PROBE_INTERVAL_S
            undelivered.add(trial.trial_id, self.tune_location)
            print(f"MLflow at {self.tracking_uri} does not answer; trial results are kept in {self.results_dir} "
                  "and delivered when it does", file=sys.stderr, flush=True)  # fmt: skip
            return None

    return guarded
