"""Stopping a command with Ctrl-C or SIGTERM (a terminal, a batch scheduler, `kubectl delete`).

Whatever the command was doing, it ends with one line: what was interrupted, that finished work is
kept, and the command that resumes it (the same one); exit code 130 for SIGINT, 143 for SIGTERM; no
traceback. While Ray Tune runs trials it stops them itself (each trial keeps its last checkpoint),
for SIGTERM too: Tune listens for SIGUSR1 as for Ctrl-C, so SIGTERM is handed to it as that. Once a
command is stopping, another signal ends the process at once, with the same line.

Everything written while a signal may arrive is written whole or not at all (`trainables.atomic`,
the cache's shards, Tune's checkpoints), so the same command afterwards finds nothing half-written.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_state = {"phase": "starting", "signal": signal.SIGINT, "command": "python -m orchestrator"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt."""


def install(argv: list[str]) -> None:
    """Take SIGTERM for the command `argv` (its arguments after `python -m orchestrator`)."""
    _state["command"] = "python -m orchestrator " + shlex.join(argv)
    take_sigterm()


def take_sigterm() -> None:
    """SIGTERM to this module's handler, again after `ray.init`, whose core takes it to abort the process."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def phase(name: str) -> None:
    """What the command does from now on (`running trials`), for the line an interrupt prints: the
    phase a signal stopped, even when the line is printed after it (once Tune has stopped its trials)."""
    _state["phase"] = name


def _on_sigterm(signum, frame) -> None:
    _state["signal"] = signal.SIGTERM
    tune_stop = signal.getsignal(signal.SIGUSR1)
    if callable(tune_stop):  # Tune is running trials: its own graceful stop
        tune_stop(signal.SIGUSR1, frame)
        return
    raise Terminated


def exit_code() -> int:
    return EXIT_CODES[_state["signal"]]


def line(done: str = "") -> str:
    """The one line an interrupt ends with (`done`: what finished, when known)."""
    kept = f"{done}, kept" if done else "finished work is kept"
    return f"Interrupted while {_state['phase']}: {kept}; run the same command to resume: {_state['command']}"


def stopping(done: str = "") -> None:
    """From now on another SIGINT or SIGTERM ends the process at once, printing `line(done)`."""

    def at_once(signum, frame) -> None:
        print(line(done), file=sys.stderr, flush=True)
        os._exit(EXIT_CODES.get(signum, 130))

    signal.signal(signal.SIGINT, at_once)
    signal.signal(signal.SIGTERM, at_once)
