"""One driver per experiment: a lease kept in the results storage, where every driver that could
run the experiment looks (a shared folder or an object store, so drivers on different machines
see it too).

The lease is `<storage>/<name>.driver-lease.json`: the driver's host, pid, process start time,
when it started, a heartbeat a thread of the driver refreshes every `HEARTBEAT_S`, and a random
token. A launch reads it first. A live lease refuses the launch in one line naming its driver; a
dead one (on the same host: no process with that pid and start time; elsewhere: a heartbeat older
than `STALE_S`) is taken over. Taking a lease is write, wait `SETTLE_S`, read back: of two
launches that write at once, the one whose write landed last holds it, and the other sees its
token replaced and refuses, having written nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import pyarrow.fs

from trainables.errors import UserInputError

from orchestrator.track import results_store

HEARTBEAT_S = 30.0
STALE_S = 180.0
"""A lease from another host whose heartbeat is older than this belongs to a driver that is gone."""
SETTLE_S = 1.0
"""How long a launch waits after writing the lease before reading it back."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    process_start: str | None
    """The process's start time as the kernel counts it (/proc/<pid>/stat), telling a reused pid apart."""
    started: float
    heartbeat: float
    token: str

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {self.pid} on {self.host}, since {since} (heartbeat {max(0, time.time() - self.heartbeat):.0f} s ago)"

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return time.time() - self.heartbeat < STALE_S
        return _process_start(self.pid) == self.process_start and _running(self.pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None where there is no /proc."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Lease:
    """The lease of experiment `name` in `storage`; `acquire()` takes it or refuses, `release()` gives it back."""

    def __init__(self, storage: str, name: str, experiment: str):
        self.location = f"{storage}/{name}.driver-lease.json"
        self.experiment = experiment
        self.results = f"{storage}/{name}"
        """What a store's error names: the experiment's results, the place the user gave."""
        self.fs, self.path = results_store.open_location(self.location)
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> Holder | None:
        with results_store.reaching(self.results):
            text = results_store.read_text(self.fs, self.path)
        try:
            return Holder(**json.loads(text)) if text else None
        except (TypeError, ValueError):
            return None  # unreadable: no driver can be holding it

    def _write(self, holder: Holder) -> None:
        temporary = f"{self.path}.tmp-{holder.token}"
        with results_store.reaching(self.results):
            self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(temporary) as stream:
                stream.write(json.dumps(asdict(holder)).encode())
            self.fs.move(temporary, self.path)  # a rename on a filesystem, one whole object in a store

    def acquire(self) -> None:
        """Hold the lease, or raise UserInputError naming the driver that does."""
        current = self.read()
        if current is not None and current.alive():
            self._refuse(current)
        now = time.time()
        mine = Holder(socket.gethostname(), os.getpid(), _process_start(os.getpid()), now, now, secrets.token_hex(8))
        self._write(mine)
        time.sleep(SETTLE_S)
        current = self.read()
        if current is None or current.token != mine.token:
            self._refuse(current or mine)
        self.holder = mine
        self._thread = threading.Thread(target=self._beat, name="driver-lease", daemon=True)
        self._thread.start()

    def _refuse(self, holder: Holder) -> None:
        raise UserInputError(
            f"experiment '{self.experiment}' is being run by another driver: {holder.describe()}; "
            f"see `python -m orchestrator status {self.experiment}` (its lease: {self.location})"
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = self.read()
                if current is None or current.token != self.holder.token:
                    return  # taken over (this driver looked dead): the other driver owns the experiment now
                self.holder = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
                self._write(self.holder)
            except (UserInputError, OSError):
                continue  # the store did not answer this time; the next beat tries again

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.holder is None:
            return
        try:
            current = self.read()
            if current is not None and current.token == self.holder.token:
                with results_store.reaching(self.results):
                    self.fs.delete_file(self.path)
        except (UserInputError, OSError, pyarrow.lib.ArrowException):
            pass  # the next launch finds this driver's pid gone, or its heartbeat stale, and takes over
        self.holder = None

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
