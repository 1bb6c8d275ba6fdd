"""Trial failures caused by bad input (a corrupt image, a wrong option) read as one line, like
every other user error; anything else keeps Ray's traceback in the log and the trial's folder."""

from __future__ import annotations

import logging
from pathlib import Path

from ray import cloudpickle

from trainables.errors import UserInputError


def user_error_cause(error: BaseException | None) -> UserInputError | None:
    """The UserInputError a trial raised, unwrapped from Ray's task error; None for other failures."""
    cause = getattr(error, "cause", error)  # RayTaskError keeps the trial's own exception as `cause`
    return cause if isinstance(cause, UserInputError) else None


def trial_exception(trial) -> BaseException | None:
    """The exception a failed trial raised, from the copy Tune has just written on the driver
    (the one in the results folder is synced later, after the callbacks run)."""
    name = trial.run_metadata.pickled_error_filename
    if not name or not trial.local_path or not Path(trial.local_path, name).is_file():
        return None
    with open(Path(trial.local_path, name), "rb") as file:
        return cloudpickle.load(file)


def error_path(trial) -> Path | None:
    """The traceback file in the trial's results folder (Ray also stages one in a temporary folder)."""
    name = trial.run_metadata.error_filename
    return Path(trial.path, name) if name and trial.path else None


class HideUserErrorTracebacks(logging.Filter):
    """Drops Tune's "Trial task failed" record, traceback included, when bad input caused it;
    the progress table prints the one-line message instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and user_error_cause(record.exc_info[1]))
