"""The layout the docs promise (docs/ARCHITECTURE.md), read from the source: dependencies point one
way, the floors below `orchestrator/families/` name no family, and modules and functions stay small."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "trainables")
SHARED_FLOORS = ("run", "track", "report", "specs")
FAMILY_WORDS = re.compile(r"(?<![A-Za-z0-9])(mAP|auroc|AUROC|mlr|MLR|ood|OOD)(?![A-Za-z0-9])")
"""The built-in families' names and ranked metrics, as words."""


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_the_shared_floors_name_no_family_and_no_familys_metric():
    """`specs`, `run`, `track` and `report` ask the family registry; a family's name or metric in their
    code, strings, comments or imports means they know one."""
    found = []
    for path in _sources(*(f"orchestrator/{floor}" for floor in SHARED_FLOORS)):
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) and FAMILY_WORDS.search(token.string):
                found.append(f"{path.relative_to(REPO)}:{token.start[0]}: {FAMILY_WORDS.search(token.string).group(0)}")
    assert not found, "\n".join(found)


def test_the_library_never_imports_the_harness_and_only_its_trainable_imports_ray():
    for path in _sources("trainables"):
        imported = _imported(path)
        assert not any(m.split(".")[0] == "orchestrator" for m in imported), path
        assert not any(m.split(".")[0] == "mlflow" for m in imported), path
        if path.name != "trainable.py":
            assert not any(m.split(".")[0] == "ray" for m in imported), path


def test_one_family_wing_never_imports_the_other():
    wings = {"trainables/mlr": "trainables.ood", "trainables/ood": "trainables.mlr",
             "orchestrator/families/mlr": "orchestrator.families.ood", "orchestrator/families/ood": "orchestrator.families.mlr"}  # fmt: skip
    for wing, other in wings.items():
        for path in _sources(wing):
            assert not any(m == other or m.startswith(f"{other}.") for m in _imported(path)), (path, other)


def test_modules_and_functions_stay_small():
    """At most 300 lines a module and 60 a function: a newcomer reads one at a time."""
    too_long = []
    for path in _sources(*PACKAGES):
        text = path.read_text()
        if len(text.splitlines()) > 300:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        too_long += [
            f"{path.relative_to(REPO)}: {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
        ]
    assert not too_long, "\n".join(too_long)
