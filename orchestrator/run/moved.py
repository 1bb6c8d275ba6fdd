"""The flat modules of experiments started before the orchestrator was laid out by concern.

Tune pickles an experiment's searcher, scheduler and callbacks by their modules' names (its
`tuner.pkl` and the searcher's state), and the searcher's state holds the plan. An experiment
started earlier names `orchestrator.spec`, `orchestrator.grid`, `orchestrator.tracking`, ...: they
are resolved to the modules that now hold those classes, so that such an experiment resumes (the
spec's models through `orchestrator.specs`, which hands them on).
"""

from __future__ import annotations

import importlib
import sys

MOVED = {
    "orchestrator.spec": "orchestrator.specs",
    "orchestrator.grid": "orchestrator.specs.grid",
    "orchestrator.ood_spec": "orchestrator.families.ood",
    "orchestrator.progress": "orchestrator.run.progress",
    "orchestrator.scheduling": "orchestrator.run.scheduling",
    "orchestrator.search": "orchestrator.run.search",
    "orchestrator.tracking": "orchestrator.track.callback",
}
"""Old module name -> the module that holds what Tune pickled from it."""


def resolve_moved_modules() -> None:
    """Let unpickling find the old module names (call before Tune reads a saved experiment)."""
    for old, new in MOVED.items():
        sys.modules.setdefault(old, importlib.import_module(new))
