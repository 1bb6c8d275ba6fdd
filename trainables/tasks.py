"""The registry a Ray worker reads: `TASKS`, each task family's trial config, loop and ranked metric
(`trainables.lifecycle.TaskFamily`). Adding a family is its package (config, trial, `TASK`) and one
entry here; a family from outside (a test, a notebook) is added by the orchestrator
(`orchestrator.family.register`), and a worker imports it by its `source`.
"""

from __future__ import annotations

import importlib

from trainables import mlr, ood
from trainables.lifecycle import TaskFamily

__all__ = ["MEMBER_ERRORS", "MEMBERS", "SHIPPED", "TASKS", "TaskFamily", "task_of"]

TASKS: dict[str, TaskFamily] = {task.name: task for task in (mlr.TASK, ood.TASK)}

MEMBERS = "members"
"""Where a fused group's config lists its members' configs, its results their epochs and its checkpoints their states."""
MEMBER_ERRORS = "member_errors"
"""Where a fused group's result says which members failed at this epoch: trial key -> {"error":
`Type: message`, "traceback": the traceback's text}."""

SHIPPED = frozenset(TASKS)
"""The families that come with `trainables`, which no unregistering removes."""


def task_of(ray_config: dict) -> TaskFamily:
    """The task family of a trial's Ray config; configs made before the OOD family name none: MLR's."""
    name = ray_config.get("family", mlr.TASK.name)
    if name not in TASKS and "family_source" in ray_config:
        module, attribute = ray_config["family_source"].split(":")
        TASKS[name] = getattr(importlib.import_module(module), attribute)
    return TASKS[name]
