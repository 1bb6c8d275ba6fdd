"""Where a spec's results and data live, and what of a spec is only about where or how.

`storage` is a folder or an object store URI (`is_uri`); the tracking URI is made absolute
(`resolve_tracking_uri`); data paths and execution settings are left out of every hash and key
(`without_paths`), so the same data elsewhere, or a trial tuned to its device, keeps its results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainables.errors import UserInputError

from orchestrator.compat import FORMER_BEHAVIOUR, FORMER_DEFAULTS

STORAGE_SCHEMES = ("s3", "gs", "abfs", "abfss", "hdfs")
"""Object stores Ray Tune writes to through pyarrow.fs (S3, through MinIO, is the one tested here)."""

_TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def absolute(path: Path) -> Path:
    return (Path.cwd() / path.expanduser()).absolute()


def is_uri(storage: str) -> bool:
    """Whether a spec's `storage` is an object store URI rather than a folder."""
    return urlparse(storage).scheme in STORAGE_SCHEMES


def resolve_tracking_uri(value: str | None) -> str:
    """An absolute MLflow tracking URI: by default MLflow's MLFLOW_TRACKING_URI, else the working
    directory's `mlflow.db`; a relative SQLite path made absolute; ValueError for anything that is
    not a tracking URI."""
    if value is None:
        value = os.environ.get("MLFLOW_TRACKING_URI")
    if value is None:
        return f"sqlite:///{absolute(Path('mlflow.db'))}"
    scheme = urlparse(value).scheme
    if scheme not in _TRACKING_SCHEMES:
        raise ValueError(f"'{value}' is not a tracking URI; expected sqlite:///path.db or http(s)://host:port")
    if scheme == "sqlite":
        path = value.removeprefix("sqlite:///")
        if path in ("", ":memory:") or value == path:
            raise ValueError("an sqlite tracking URI needs a file: sqlite:///path/to/mlflow.db")
        return f"sqlite:///{absolute(Path(path))}"
    return value.rstrip("/")


def require_existing_store(tracking_uri: str, hint: str) -> None:
    """Readers must not open a missing SQLite store: MLflow would create an empty one in its place."""
    if urlparse(tracking_uri).scheme == "sqlite":
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise UserInputError(f"no MLflow store at {database} ({hint})")


PATH_FIELDS = frozenset({"root", "train_manifest", "test_manifest", "classnames_file", "wordnet_dir", "word_list"})
"""Where data lives: the same data may live elsewhere on another machine, so hashes and keys leave these out."""

EXECUTION_FIELDS = frozenset({"cuda_graph", "device_memory", "gpu_share", "cpus", "decoded_store"})
"""How a trial uses its device, not what it computes: hashes and keys leave these out too, so
that tuning them neither reruns a finished trial nor changes the keys of runs made before them."""

def without_paths(value: Any) -> Any:
    """`value` (JSON-able) with every `PATH_FIELDS` and `EXECUTION_FIELDS` key dropped, at any depth
    (and `FORMER_DEFAULTS` in place of None, `FORMER_BEHAVIOUR` left out)."""
    if isinstance(value, dict):
        return {
            k: FORMER_DEFAULTS[k] if v is None and k in FORMER_DEFAULTS else without_paths(v)
            for k, v in value.items()
            if k not in PATH_FIELDS | EXECUTION_FIELDS and not (k in FORMER_BEHAVIOUR and v == FORMER_BEHAVIOUR[k])
        }  # fmt: skip
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value
