"""Files and folders that appear whole: written under a temporary name beside their place, then renamed.

A rename is atomic, so a reader sees no file or a complete one and needs no lock; a killed writer
leaves only a temporary, which no reader opens. Artifacts built once and shared by processes (the
synthetic checkpoint, a generated dataset, cache entries) are built under a file lock by one of
them, which first clears what killed writers left:

    build_once(folder / "shapes-1a2b", generate)     # generate(temporary folder), once across processes
    replace(run_dir / "mask.npz", save)               # save(temporary file), then renamed over the old
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def temporary_path(path: Path) -> Path:
    """Where `path` is written before its rename: `.<name>.tmp-<host>-<pid>` beside it (the host too,
    because processes on several nodes share a cache)."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def replace(path: Path, write: Callable[[Path], None]) -> Path:
    """`path` written whole by `write(temporary path)`, then renamed over whatever was there."""
    temporary = temporary_path(path)
    write(temporary)
    os.replace(temporary, path)
    return path


def clear_leftovers(path: Path) -> None:
    """Delete the temporaries that killed writers of `path` left (call it holding `path`'s lock, when
    no other writer is active). Older versions named them `<name>.tmp-<pid>`: those go too."""
    pattern = glob.escape(path.name) + ".tmp-*"
    for leftover in [*path.parent.glob("." + pattern), *path.parent.glob(pattern)]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def lock(path: Path) -> FileLock:
    """The file lock of whoever writes `path`: `<path>.lock`."""
    return FileLock(f"{path}.lock")


def build_once(path: Path, write: Callable[[Path], None], *, companions: tuple[Path, ...] = ()) -> Path:
    """`path`, made by `write(temporary path)` under `path`'s lock and renamed into place, unless some
    process already made it: concurrent callers build it once. `companions` are files that `write`
    publishes beside it (with `replace`) before `path` itself, the commit; their leftovers are cleared too."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock(path):
        if path.exists():  # another process built it while we waited
            return path
        for target in (path, *companions):
            clear_leftovers(target)
        replace(path, write)
    return path
