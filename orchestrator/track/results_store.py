"""Ray Tune's results of one spec, in a folder or an object store (`s3://bucket/prefix`), through
pyarrow.fs as Tune itself reaches them: whether there is a run to resume, the run's metadata,
starting over. S3 endpoints and credentials come from the environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ...), as for Tune and every Ray node.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

import pyarrow.fs

from trainables.errors import UserInputError

METADATA_FILE = "orchestrator.json"
"""Beside Tune's files: the spec hash and the tracking URI the results were logged with."""


def first_line(error: OSError) -> str:
    """What a store's error says, in one line (pyarrow's S3 errors run over several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def reaching(location: str) -> Iterator[None]:
    """Turn the store's errors (no such bucket, refused credentials, no endpoint) into one line."""
    try:
        yield
    except OSError as error:
        raise UserInputError(f"cannot use storage {location}: {first_line(error)}") from None


def open_location(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem of `location` (an absolute folder or a URI) and the path within it."""
    with reaching(location):
        return pyarrow.fs.FileSystem.from_uri(location)


def has_tune_state(location: str) -> bool:
    """Whether Tune saved an experiment state there (a launch killed before its first save has none)."""
    fs, path = open_location(location)
    with reaching(location):
        if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
            return False
        names = [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(path))]
    return "tuner.pkl" in names and any(name.startswith("experiment_state-") and name.endswith(".json") for name in names)


def read_metadata(location: str) -> dict:
    """The metadata `write_metadata` left, or {} where there is none."""
    fs, path = open_location(location)
    with reaching(location):
        text = read_text(fs, f"{path}/{METADATA_FILE}")
    return json.loads(text) if text is not None else {}


def read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """The contents of the file at `path` in `fs`, or None where there is no file."""
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_metadata(location: str, metadata: dict) -> None:
    fs, path = open_location(location)
    with reaching(location):
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{METADATA_FILE}") as stream:
            stream.write(json.dumps(metadata, indent=2).encode())


def delete(location: str) -> None:
    """Remove everything under `location` (nothing to do where there is nothing)."""
    fs, path = open_location(location)
    with reaching(location):
        if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
            fs.delete_dir(path)
