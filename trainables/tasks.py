"""The task families: what a trial trains and how its loop reports. Adding a family is one module
(its config and its `run_epochs`) and one entry in `FAMILIES`.

Both loops share one contract: `run(config, state) -> Iterator[(metrics, state)]`, one item per
epoch, resumable from any yielded state; `metrics` holds `epoch`, `train_loss`, the family's
per-epoch `metric` (maximised) and `best_<metric>`.
"""

from __future__ import annotations

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


FAMILIES = {
    "mlr": TaskFamily("mlr", TrialConfig, run_epochs, "mAP"),
    "ood": TaskFamily("ood", OODTrialConfig, run_ood_epochs, "auroc"),
}


def family_of(ray_config: dict) -> TaskFamily:
    """The family of a trial's Ray config; configs made before the OOD family name none: `mlr`."""
    return FAMILIES[ray_config.get("family", "mlr")]
