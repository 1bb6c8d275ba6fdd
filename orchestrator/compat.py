"""What stores written by older versions hold, read as this version means it.

Every shim for such a store lives here: the module names Tune pickled an experiment under, the
family of runs, cells and Ray configs made before there was a second family, the trial keys made
before a field existed or took another default, runs made before their config hash was a tag, and
specs pickled before the families had sections of their own. Like `orchestrator.family`, it imports
nothing of the orchestrator, so that every floor may use it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

UNTAGGED_FAMILY = "mlr"
"""The family of what was made before the second family: trial runs without a `family` tag, cells
and trials pickled without a `family`, Ray configs naming none (`trainables.tasks.task_of` too)."""

MOVED_MODULES = {
    "orchestrator.spec": "orchestrator.specs",
    "orchestrator.grid": "orchestrator.specs.grid",
    "orchestrator.ood_spec": "orchestrator.families.ood",
    "orchestrator.progress": "orchestrator.run.progress",
    "orchestrator.scheduling": "orchestrator.run.command",
    "orchestrator.run.scheduling": "orchestrator.run.command",
    "orchestrator.search": "orchestrator.run.search",
    "orchestrator.tracking": "orchestrator.track.callback",
}
"""Old module name -> the module that now holds what Tune pickled from it (its `tuner.pkl`, the
searcher's state: the plan, the searcher, the scheduler, the callbacks, the trial-name function):
the flat layout's modules, and `run.scheduling`, which held the run command."""

MOVED_CLASSES = {
    "LossSpec": "orchestrator.families.mlr.sections",
    "TrainingSpec": "orchestrator.families.mlr.sections",
}
"""The spec's models that moved from `orchestrator.specs.sections` (and `orchestrator.specs`, which
handed them on, and the flat layout's `orchestrator.spec`) to their family -> the module now holding them."""

FORMER_DEFAULTS = {"num_workers": 0}
"""Trial-config fields whose default became None (settled when the trial runs): None is hashed as
the default every earlier key was made with, so those keys stay."""

FORMER_BEHAVIOUR = {"augmentation": "torchvision"}
"""Trial-config fields added later, at the value that computes what trials computed before they
existed: left out of hashes there, so those keys stay (a key changes only where the new value does)."""


def resolve_moved_modules() -> None:
    """Let unpickling find the old module and class names (call before Tune reads a saved experiment)."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    for old in ("orchestrator.specs.sections", "orchestrator.specs"):
        module = importlib.import_module(old)
        for name, new in MOVED_CLASSES.items():
            if not hasattr(module, name):
                setattr(module, name, getattr(importlib.import_module(new), name))


def with_family(state: dict) -> dict:
    """A pickled cell's or trial's fields, with the family those made before it had none ran under."""
    return {"family": UNTAGGED_FAMILY, **state}


def run_holds(trial_hash: str, run_hash: str | None, run_key: str | None) -> bool:
    """Whether a trial run (its config hash tag, its trial key) is of the trial whose config hash is
    `trial_hash`; a run made before the hash was a tag is matched by its trial key's last 8 digits."""
    if run_hash:
        return run_hash == trial_hash
    return bool(run_key) and run_key.endswith(f"-{trial_hash[:8]}")


def spec_state(state: dict, fields: dict[str, Any]) -> dict:
    """A pickled `ExperimentSpec`'s state as this version holds it (`fields`: the spec's fields now).
    A spec pickled before the families had sections of their own (in Tune's saved searcher state)
    holds a family's section (`ood`) as a field, and no private attributes; one pickled before the MLR
    family owned `loss` and `training` holds those as fields, beside its other families' sections."""
    values = dict(state["__dict__"])
    legacy = {key: values.pop(key) for key in list(values) if key not in fields}
    private = dict(state.get("__pydantic_private__") or {})
    private["_sections"] = {**{k: v for k, v in legacy.items() if v is not None}, **private.get("_sections", {})}
    fields_set = set(state.get("__pydantic_fields_set__", ())) - set(legacy)
    return {**state, "__dict__": values, "__pydantic_private__": private, "__pydantic_fields_set__": fields_set}
