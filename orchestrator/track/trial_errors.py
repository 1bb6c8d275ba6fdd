"""Trial failures caused by bad input (a corrupt image, a wrong option) read as one line, like
every other user error; anything else keeps Ray's traceback in the log and the trial's folder."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ray import cloudpickle

from trainables.errors import UserInputError

_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
"""The colour codes Ray writes into a trial's error file."""


def user_error_cause(error: BaseException | None) -> UserInputError | None:
    """The UserInputError a trial (or an actor's constructor) raised, unwrapped from Ray's errors;
    None for other failures."""
    # RayTaskError keeps the task's own exception as `cause` (and is an instance of its class too,
    # with the remote traceback as its text); a dead actor's error keeps its creation task's.
    for _ in range(4):
        cause = getattr(error, "cause", None)
        if cause is None:
            return error if isinstance(error, UserInputError) else None
        error = cause
    return None


def trial_exception(trial) -> BaseException | None:
    """The exception a failed trial raised, from the copy Tune has just written on the driver
    (the one in the results folder is synced later, after the callbacks run)."""
    name = trial.run_metadata.pickled_error_filename
    if not name or not trial.local_path or not Path(trial.local_path, name).is_file():
        return None
    with open(Path(trial.local_path, name), "rb") as file:
        return cloudpickle.load(file)


def error_summary(trial) -> str:
    """The failed trial's exception in one line: `Type: message`, from the pickled exception, or
    the traceback file's last line."""
    error = trial_exception(trial)
    cause = getattr(error, "cause", error)  # Ray wraps the trial's exception in a RayTaskError
    if cause is not None and not isinstance(cause, BaseException):
        cause = None
    if cause is not None:
        message = " ".join(str(cause).split())
        return f"{type(cause).__name__}: {message}"[:500] if message else type(cause).__name__
    lines = [line for line in traceback_text(trial).splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else "unknown error (no error file)"


def traceback_text(trial) -> str:
    """The failed trial's traceback, from the driver's copy of its error file ("" if none), without
    the terminal colours Ray puts in it."""
    name = trial.run_metadata.error_filename
    if not name or not trial.local_path or not Path(trial.local_path, name).is_file():
        return ""
    return _TERMINAL_COLOURS.sub("", Path(trial.local_path, name).read_text())


def error_path(trial) -> Path | None:
    """The traceback file in the trial's results folder (Ray also stages one in a temporary folder)."""
    name = trial.run_metadata.error_filename
    return Path(trial.path, name) if name and trial.path else None


class ShortenVanishedFileSyncWarnings(logging.Filter):
    """Ray's syncer warns with a whole traceback when a file it listed was gone when it copied it;
    for one of Tune's temporary files (`.tmp-<name>`, renamed meanwhile) that is harmless, and the
    warning becomes one line. Other failed syncs keep their traceback."""

    VANISHED = re.compile(r"FileNotFoundError: .*?([^\s'\"]*/\.tmp-[^/\s'\"]+)")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        found = self.VANISHED.search(message) if message.startswith("Last sync command failed") else None
        if found:
            record.msg = (
                f"Ray's syncer missed {found.group(1)}, a temporary file replaced while it copied "
                "(harmless: the next sync copies the new file)"
            )
            record.args = ()
        return True


class HideUserErrorTracebacks(logging.Filter):
    """Drops Tune's "Trial task failed" record, traceback included, when bad input caused it;
    the progress table prints the one-line message instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and user_error_cause(record.exc_info[1]))
