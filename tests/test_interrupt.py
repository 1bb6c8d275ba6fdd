"""Ctrl-C and SIGTERM at any phase of `python -m orchestrator run`: one line saying what was
interrupted, that finished work is kept and the command that resumes; exit code 130 or 143; no
traceback; and the same command afterwards runs every trial once. Ctrl-C goes to the driver's whole
process group, as a terminal sends it, with SIGINT's default handler restored (a shell's background
job starts with SIGINT ignored); SIGTERM to the driver, as `kubectl delete` sends it to a pod's first
process (Ray's own processes on this machine end on a SIGTERM of theirs)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_run_integration import REPO, SMALL, kill_group, runs_by_role

pytestmark = pytest.mark.integration

SPEC = ["smoke.yaml", *SMALL, "--set", "training.epochs=20"]


def _start(cwd: Path, spec: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", *spec], cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=open(cwd / "output.txt", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _output(cwd: Path) -> str:
    return (cwd / "output.txt").read_text()


def _interrupt_when(cwd: Path, spec: list[str], ready: Callable[[], bool], signum: int, timeout: float = 300) -> tuple[int, str]:
    """Start the run, send `signum` once `ready()`, and wait for it to end: SIGINT to its process
    group (a terminal's Ctrl-C), SIGTERM to the driver (what Kubernetes sends a pod's first process)."""
    process = _start(cwd, spec)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, "the run ended before the signal:\n" + _output(cwd)
            assert time.monotonic() < deadline, _output(cwd)
            time.sleep(0.05)
        if signum == signal.SIGINT:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        process.wait(timeout=180)
    finally:
        kill_group(process)
    return process.returncode, _output(cwd)


def _rerun_completes_each_trial_once(cwd: Path, spec: list[str]) -> None:
    process = _start(cwd, spec)
    try:
        process.wait(timeout=600)
    finally:
        kill_group(process)
    output = _output(cwd)
    assert process.returncode == 0, output
    assert "All 4 trials finished" in output
    trials = runs_by_role(cwd, "smoke")["trial"]
    assert sorted(r.data.tags["setup"] for r in trials) == sorted(["baseline", "positive_coop", "negative_coop", "dual_coop"])
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert {r.info.status for runs in runs_by_role(cwd, "smoke").values() for r in runs} == {"FINISHED"}


def _check_one_line(code: int, output: str, spec: list[str], phase: str, expected_code: int) -> None:
    assert code == expected_code, output
    assert "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"Interrupted while {phase}: "), output
    assert last.endswith("; run the same command to resume: python -m orchestrator run " + shlex.join(spec)), last


def _epochs_reported(cwd: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in (cwd / "runs" / "smoke").glob("*/*/result.json"))


def test_ctrl_c_while_filling_the_cache_stops_in_one_line_and_the_rerun_completes(tmp_path):
    # A fill long enough to be caught; two epochs after it are enough for the rerun (the last --set of a key wins).
    spec = [*SPEC, "--set", "datasets.0.synthetic_num_train=1536", "--set", "training.epochs=2"]
    code, output = _interrupt_when(tmp_path, spec, lambda: "Feature cache for dataset" in _output(tmp_path), signal.SIGINT)
    _check_one_line(code, output, spec, "preparing the backbone and the feature cache", 130)
    assert ": 0 of 4 trials finished, kept;" in output
    assert not list((tmp_path / "runs" / "cache" / "features").glob("*.npy"))  # nothing half-written in place
    _rerun_completes_each_trial_once(tmp_path, spec)


@pytest.mark.parametrize(("signum", "expected_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_trials_run_stops_them_in_one_line_and_the_rerun_completes(tmp_path, signum, expected_code):
    code, output = _interrupt_when(tmp_path, SPEC, lambda: _epochs_reported(tmp_path) >= 1, signum)
    _check_one_line(code, output, SPEC, "running trials", expected_code)
    assert " trials finished, kept;" in output.strip().splitlines()[-1]
    statuses = {r.info.status for r in runs_by_role(tmp_path, "smoke").get("trial", [])}
    assert "RUNNING" not in statuses and "KILLED" in statuses  # stopped trials are marked so, not left RUNNING
    _rerun_completes_each_trial_once(tmp_path, SPEC)


def test_ctrl_c_while_pre_training_stops_in_one_line_and_the_rerun_completes(tmp_path):
    spec = [*SPEC, "--set", "backbone.pretrained=synthetic", "--set", "training.epochs=2"]  # the last --set of a key wins
    started = []

    def pre_training() -> bool:
        if "Starting 'smoke'" in _output(tmp_path) and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 5

    code, output = _interrupt_when(tmp_path, spec, pre_training, signal.SIGINT)
    assert "Feature cache for dataset" not in output  # still pre-training when interrupted
    _check_one_line(code, output, spec, "preparing the backbone and the feature cache", 130)
    assert not [p for p in (tmp_path / "runs" / "data").rglob("*.pt") if not p.name.startswith(".")]  # nothing half-trained kept
    _rerun_completes_each_trial_once(tmp_path, spec)


# -- what a normal run prints ----------------------------------------------------------------------


def _sync_warning(error: str) -> logging.LogRecord:
    """Ray's syncer's record, as `ray.train._internal.syncer` logs it (the traceback in the text)."""
    trace = "Traceback (most recent call last):\n" + '  File "pyarrow/_fs.pyx", line 1542, in copy_files\n' * 20 + error
    return logging.LogRecord("ray.train._internal.syncer", logging.WARNING, "syncer.py", 345,
                             f"Last sync command failed with the following error:\n{trace}", None, None)  # fmt: skip


def test_a_sync_that_missed_a_replaced_temporary_file_is_one_line():
    from orchestrator.track.trial_errors import ShortenVanishedFileSyncWarnings

    vanished = "/tmp/ray/session_1/artifacts/2026-12-06_16-00-00/smoke/driver_artifacts/.tmp-search_gen_state-2026.json"
    record = _sync_warning(f"FileNotFoundError: [Errno 2] Failed to open local file '{vanished}'. Detail: [errno 2] No such file")
    assert ShortenVanishedFileSyncWarnings().filter(record)
    assert record.getMessage() == (
        f"Ray's syncer missed {vanished}, a temporary file replaced while it copied (harmless: the next sync copies the new file)"
    )
    other = _sync_warning("PermissionError: [Errno 13] Permission denied: '/results/smoke/experiment_state.json'")
    ShortenVanishedFileSyncWarnings().filter(other)
    assert "Traceback" in other.getMessage()  # another failure keeps its traceback
