"""The task families: what a trial trains and how its loop reports. Adding a family is one package
(its config and its loop) and one entry in `FAMILIES`; a family from outside (a test, a notebook)
is added to `FAMILIES` by the orchestrator, and a Ray worker imports it by its `source`.

Both loops share one contract: `run(config, state) -> Iterator[(metrics, state)]`, one item per
epoch, resumable from any yielded state; `metrics` holds `epoch`, `train_loss`, the family's
per-epoch `metric` (maximised) and `best_<metric>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from trainables.config import TrialConfig
from trainables.ood.config import OODTrialConfig
from trainables.ood.train import run_ood_epochs
from trainables.train import run_epochs


@dataclass(frozen=True)
class TaskFamily:
    name: str
    config: type[BaseModel]
    run: Callable[..., Iterator[tuple[dict, dict]]]
    metric: str
    """The per-epoch metric trials are ranked by (maximised): `best_<metric>` is its best epoch's."""
    source: str | None = None
    """`module:attribute` naming this object, for a family outside `BUILTIN`: Ray workers import
    `trainables` only, and find such a family through its trials' configs (`family_source`)."""


FAMILIES = {
    "mlr": TaskFamily("mlr", TrialConfig, run_epochs, "mAP"),
    "ood": TaskFamily("ood", OODTrialConfig, run_ood_epochs, "auroc"),
}

BUILTIN = tuple(FAMILIES)


def family_of(ray_config: dict) -> TaskFamily:
    """The family of a trial's Ray config; configs made before the OOD family name none: `mlr`."""
    name = ray_config.get("family", "mlr")
    if name not in FAMILIES and "family_source" in ray_config:
        module, attribute = ray_config["family_source"].split(":")
        FAMILIES[name] = getattr(importlib.import_module(module), attribute)
    return FAMILIES[name]
