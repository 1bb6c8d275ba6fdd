"""One driver per experiment: the lease taken, refused, taken over from a dead driver, raced for."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from trainables.errors import UserInputError

from orchestrator.run import lease as lease_module
from orchestrator.run.lease import Lease


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.2)


def test_a_live_driver_keeps_the_experiment_and_gives_it_back(tmp_path):
    first = Lease(str(tmp_path), "grid", "grid")
    first.acquire()
    written = json.loads((tmp_path / "grid.driver-lease.json").read_text())
    assert (written["host"], written["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(UserInputError) as refused:
        Lease(str(tmp_path), "grid", "grid").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"experiment 'grid' is being run by another driver: pid {os.getpid()} on {socket.gethostname()}, since ")
    assert "see `python -m orchestrator status grid`" in message
    first.release()
    assert not (tmp_path / "grid.driver-lease.json").exists()
    with Lease(str(tmp_path), "grid", "grid"):
        pass  # free again


def _write(tmp_path, **fields) -> None:
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None, "started": now - 60,
              "heartbeat": now, "token": "theirs", **fields}  # fmt: skip
    (tmp_path / "grid.driver-lease.json").write_text(json.dumps(holder))


def test_a_dead_drivers_lease_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write(tmp_path, pid=int(gone.stdout), process_start=lease_module._process_start(os.getpid()))  # a pid no longer running
    with Lease(str(tmp_path), "grid", "grid") as taken:
        assert taken.read().pid == os.getpid()


def test_a_reused_pid_is_not_the_driver_that_held_it(tmp_path):
    _write(tmp_path, process_start="1")  # this pid, but a process started at another time
    with Lease(str(tmp_path), "grid", "grid") as taken:
        assert taken.read().token != "theirs"


def test_a_driver_elsewhere_counts_while_its_heartbeat_is_fresh(tmp_path):
    _write(tmp_path, host="another-machine", pid=1)
    with pytest.raises(UserInputError, match="pid 1 on another-machine"):
        Lease(str(tmp_path), "grid", "grid").acquire()
    _write(tmp_path, host="another-machine", pid=1, heartbeat=time.time() - lease_module.STALE_S - 1)
    with Lease(str(tmp_path), "grid", "grid") as taken:
        assert taken.read().host == socket.gethostname()


def test_the_heartbeat_keeps_a_lease_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    with Lease(str(tmp_path), "grid", "grid") as held:
        first = held.read().heartbeat
        time.sleep(0.3)
        assert held.read().heartbeat > first


def test_of_two_drivers_starting_at_once_one_holds_the_lease(tmp_path):
    start, outcomes = threading.Barrier(2), []

    def launch() -> None:
        candidate = Lease(str(tmp_path), "grid", "grid")
        start.wait()
        try:
            candidate.acquire()
            outcomes.append(candidate)
        except UserInputError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [o for o in outcomes if isinstance(o, Lease)]
    assert len(held) == 1 and sum(isinstance(o, UserInputError) for o in outcomes) == 1
    assert held[0].read().token == held[0].holder.token
    held[0].release()


def test_an_object_store_holds_the_lease_too(tmp_path):
    # pyarrow's local filesystem through a URI stands in for a bucket here; the S3 path is the same code.
    with Lease(f"file://{tmp_path}", "grid", "grid") as held:
        assert held.read().pid == os.getpid()
        with pytest.raises(UserInputError, match="being run by another driver"):
            Lease(f"file://{tmp_path}", "grid", "grid").acquire()
