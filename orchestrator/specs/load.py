"""Reading a spec: `load_spec(file, overrides)` validates it all at once.

It reads the YAML file, applies `--set key=value` overrides, validates the structure with pydantic
(unknown keys rejected) and then the cross-field rules (`orchestrator.specs.checks`), and raises one
`SpecError` that lists every problem as `<file>: <dotted.field>: <message>`. Relative paths resolve
against the working directory, so everything a run writes lands under it unless the spec says otherwise.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from trainables.errors import UserInputError

from orchestrator.family import sections as family_sections
from orchestrator.specs.checks import semantic_problems
from orchestrator.specs.models import ExperimentSpec
from orchestrator.specs.sections import TAG

SEARCH_SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
"""Where a bare spec file name (`smoke.yaml`) is looked up when it is not in the working directory."""

class SpecError(UserInputError):
    """Every problem found in one spec, one line each: `<source>: <dotted.field>: <message>`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class LoadedSpec:
    spec: ExperimentSpec
    path: Path


def resolve_spec_path(name: str | Path) -> Path:
    """A path as given if it exists, else a bare file name looked up in `search_spaces/`."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.absolute()
    if len(path.parts) == 1:
        for candidate in (SEARCH_SPACES_DIR / path, SEARCH_SPACES_DIR / f"{path}.yaml"):
            if candidate.is_file():
                return candidate
    raise UserInputError(f"spec file not found: {name} (looked in the working directory and {SEARCH_SPACES_DIR})")


def read_yaml(path: Path) -> dict:
    """A spec file's top-level mapping; one-line UserInputError for invalid YAML or another shape."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UserInputError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected a mapping of spec fields at the top level")
    return raw


def apply_override(raw: dict, assignment: str) -> str:
    """Set one `dotted.key=value` (the value parsed as YAML; list items by index) in `raw`; return the key."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserInputError(f"--set {assignment}: expected key=value, e.g. --set training.epochs=2")
    value = yaml.safe_load(text) if text.strip() else None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserInputError(f"--set {key}: {where} is not an index of a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise UserInputError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
    return key


def _field_type(annotation: Any, part: str | int) -> Any:
    """The type one location step leads to: a model's field, a list's items, a dict's values."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is list and isinstance(part, int):
        return typing.get_args(annotation)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
        return annotation.model_fields[part].annotation
    return None  # a union (search, scheduler) or a plain value: no single set of keys


def _valid_keys(loc: tuple) -> list[str]:
    """The field names of the section holding `loc`'s last key, for the unknown-key message."""
    annotation: Any = ExperimentSpec
    sections = family_sections()
    if len(loc) > 1 and loc[0] in sections:  # a task family's section is a model of its own
        annotation, loc = sections[loc[0]], loc[1:]
    elif len(loc) == 1:  # the top level: the spec's fields and the families' sections
        return [*ExperimentSpec.model_fields, *sections]
    for part in loc[:-1]:
        annotation = _field_type(annotation, part)
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith(TAG))) or "(top level)"


def _format_error(error: dict) -> tuple[str, str]:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        keys = _valid_keys(loc)
        hint = f"; expected one of: {', '.join(keys)}" if keys else ""
        return _dotted(loc), f"unknown key{hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("missing", "value_error") and "input" in error:
        shown = repr(error["input"])
        message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return _dotted(loc), message


def _source(field: str, path: Path, overridden: list[str]) -> str:
    if any(field == key or field.startswith(f"{key}.") for key in overridden):
        return "--set"
    return str(path)


def load_spec(name: str | Path, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> LoadedSpec:
    """Read, override and validate a spec; raise `SpecError` listing every problem.

    `check_data=False` skips the dataset layout checks (for commands that do not touch the data).
    """
    path = resolve_spec_path(name)
    raw = read_yaml(path)
    overridden = [apply_override(raw, assignment) for assignment in overrides]
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as error:
        problems = [_format_error(e) for e in error.errors()]
        raise SpecError([f"{_source(field, path, overridden)}: {field}: {message}" for field, message in problems])
    problems = semantic_problems(spec, check_data=check_data)
    if problems:
        raise SpecError([f"{_source(field, path, overridden)}: {field}: {message}" for field, message in problems])
    return LoadedSpec(spec=spec, path=path)
