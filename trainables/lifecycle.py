"""A trial's lifecycle, the same for every task family, as torchtune's recipes have one.

A family's trial (`trainables.mlr.trial.MLRTrial`, `trainables.ood.trial.OODTrial`) is built from
its config (set up: backbone, data, features, what it learns, optimiser), then driven by
`run_epochs` one epoch at a time: train, evaluate, keep the best, checkpoint. A state `run_epochs`
yielded starts it again at the next epoch, as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel


class Trial(Protocol):
    """What `run_epochs` asks of a family's trial, in the order it asks."""

    metric: str
    """The per-epoch metric trials are ranked by (maximised): `evaluate()[metric]`."""
    epochs: int
    """How many epochs it trains (one for what learns nothing: it is evaluated once)."""

    def load(self, state: dict) -> None:
        """Resume from a state `run_epochs` yielded: the learned weights and the optimiser's state."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train epoch `epoch` (0-based); `train_loss` and what else the epoch logs (learning rates)."""

    def evaluate(self) -> dict:
        """The epoch's metrics, `metric` among them."""

    def best_of(self, evaluated: dict) -> dict:
        """What the state keeps of the best epoch's evaluation besides its metric (`best_<name>` keys)."""

    def learned(self) -> dict:
        """What a checkpoint keeps to resume: the learned weights and the optimiser's state, on the host."""

    def report(self, evaluated: dict, state: dict) -> dict:
        """What an epoch reports besides its number, losses, best metric and seconds: its metrics
        (from `evaluated`), the best epoch's (from `state`), the trial's facts (parameters, settings)."""


def run_epochs(trial: Trial, state: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """Train `trial` from `state` (None: from scratch); yield (metrics, state) after each epoch.

    The state holds the next epoch, the best metric (`best_<metric>`), its epoch, what the trial
    keeps of it (`best_of`), the seconds trained and what the trial learned; the metrics hold the
    epoch's `train_loss` and the trial's `report`, with `best_<metric>`, `best_epoch` and `train_seconds`.
    """
    state = resumed(trial, state)
    for epoch in range(state["epoch"], trial.epochs):
        started = time.perf_counter()
        trained = trial.train_epoch(epoch)
        metrics, state = end_epoch(trial, epoch, trained, state, started)
        yield metrics, state


def end_epoch(trial: Trial, epoch: int, trained: dict, state: dict, started: float) -> tuple[dict, dict]:
    """Evaluate `trial` after epoch `epoch` (begun at `started`, `time.perf_counter`'s; `trained`: what
    its training reports) and keep its best: (the epoch's metrics, the state to checkpoint)."""
    best = f"best_{trial.metric}"
    evaluated = trial.evaluate()
    seconds = time.perf_counter() - started
    improved = evaluated[trial.metric] > state[best]
    kept = trial.best_of(evaluated) if improved else {k: v for k, v in state.items() if k.startswith("best_")}
    state = kept | {
        "epoch": epoch + 1,
        best: evaluated[trial.metric] if improved else state[best],
        "best_epoch": epoch + 1 if improved else state["best_epoch"],
        "train_seconds": state["train_seconds"] + seconds,
        **trial.learned(),
    }
    metrics = {"epoch": epoch + 1, **trained, **trial.report(evaluated, state)}
    return metrics | {best: state[best], "best_epoch": state["best_epoch"], "train_seconds": state["train_seconds"]}, state


def resumed(trial: Trial, state: dict | None) -> dict:
    """`state` as `end_epoch` continues it, loaded into `trial` (None: a fresh trial's)."""
    best = f"best_{trial.metric}"
    if state is None:
        return {"epoch": 0, best: -math.inf, "best_epoch": 0, "train_seconds": 0.0}
    if "best" in state:  # an OOD trial's checkpoint written before this lifecycle named its best value `best`
        state = {**state, best: state["best"]}
        del state["best"]
    if state["epoch"]:
        trial.load(state)
    return state


@dataclass(frozen=True)
class TaskFamily:
    """A task family as a Ray worker runs it: its trial config and loop, and the metric trials are ranked by."""

    name: str
    config: type[BaseModel]
    run: Callable[..., Iterator[tuple[dict, dict]]]
    """`run(config, state)`: the family's loop, `run_epochs` over its trial for the built-in families."""
    metric: str
    """The per-epoch metric trials are ranked by (maximised): `best_<metric>` is its best epoch's."""
    run_group: Callable[..., Iterator[list]] | None = None
    """`run_group(configs, states)`: the family's loop for trials fused in a group (trials of one
    stream, trained in one process on one device, each batch read once for all), yielding after each
    epoch each member's (metrics, state), the error it failed with, or None where it did not train
    that epoch; None: the family's trials are not fused."""
    source: str | None = None
    """`module:attribute` naming this object, for a family outside `trainables.tasks.TASKS`: Ray
    workers import `trainables` only, and find such a family through its trials' configs (`family_source`)."""
