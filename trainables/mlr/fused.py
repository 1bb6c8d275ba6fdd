"""MLR trials fused in a group: the trials of one stream (`trainables.mlr.stream.stream_key`) train
in one process on one device, and each batch is read, augmented and encoded once (online) or
gathered once (cached) for all of them; then every member takes its own optimiser step on it.

The members differ only in what they learn and how (setup and options, loss settings, learning
rates, label ratio), so each computes exactly what it computes alone: the batches are the same (the
order depends on the seed and the epoch, an image's augmentation on the seed, the epoch and the
image), and a member's step touches only its own parameters. Each member keeps its own state
(checkpoint, best epoch, seconds): `run_group_epochs` yields, after every epoch, each member's
(metrics, state) as `trainables.lifecycle.run_epochs` does for one trial, or the error it failed
with (a diverged loss); a member that failed is not stepped again, and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from trainables import lifecycle
from trainables.mlr.config import TrialConfig
from trainables.mlr.stream import MLRStream, stream_key
from trainables.mlr.train import MLRTrial, train_together

Outcome = tuple[dict, dict] | BaseException
"""A member's epoch: (metrics, state) as `run_epochs` yields them, or the error it failed with."""


class FusedMLRTrials:
    """The trials of one stream, built once: the stream, then each member on it."""

    def __init__(self, configs: Sequence[TrialConfig]):
        keys = {stream_key(config) for config in configs}
        if len(keys) != 1:
            raise ValueError(f"fused trials must read one stream; these read {len(keys)} (trainables.mlr.stream.stream_key)")
        self.stream = MLRStream(configs[0])
        self.members = [MLRTrial(config, self.stream) for config in configs]
        self.epochs = configs[0].training.epochs


def run_group_epochs(group: FusedMLRTrials, states: Sequence[dict | None]) -> Iterator[list[Outcome | None]]:
    """Train every member of `group` from its state (None: from scratch); yield, after each epoch, a
    list with each member's outcome, or None for a member that is not at this epoch (it failed
    before, or its state is ahead: a member resumed from a later checkpoint joins the group there)."""
    states = [lifecycle.resumed(member, state) for member, state in zip(group.members, states)]
    failed: set[int] = set()
    for epoch in range(min(state["epoch"] for state in states), group.epochs):
        started = time.perf_counter()
        due = [i for i, state in enumerate(states) if i not in failed and state["epoch"] == epoch]
        if not due:  # every member left at this epoch failed: the others are further on
            continue
        trained = dict(zip(due, train_together(group.stream, [group.members[i] for i in due], epoch)))
        outcomes: list[Outcome | None] = [None] * len(group.members)
        for i, result in trained.items():
            if isinstance(result, BaseException):
                failed.add(i)
                outcomes[i] = result
                continue
            outcomes[i] = lifecycle.end_epoch(group.members[i], epoch, result, states[i], started)
            states[i] = outcomes[i][1]
        yield outcomes


def run_group(configs: Sequence[TrialConfig], states: Sequence[dict | None]) -> Iterator[list[Outcome | None]]:
    """The MLR family's loop for a fused group (`trainables.lifecycle.TaskFamily.run_group`)."""
    return run_group_epochs(FusedMLRTrials(configs), states)
