"""How `TrainingStep` warms up, captures, replays and falls back, with the CUDA parts stood in for
on the CPU: the warm-up runs eagerly, a capture records its inputs' shapes (or raises, as capturing
a step that reads a value back does), and a replay runs the step on the static inputs. The real
graphs are checked against eager steps in tests/test_gpu.py."""

from __future__ import annotations

import logging

import pytest
import torch

from trainables.errors import UserInputError
from trainables.step import WARMUP_STEPS, GroupStep, TrainingStep


class StandInGraph:
    """A stand-in for CUDA's stream and graph, for a `GraphedStep`."""

    def __init__(self, *args, capture_error: Exception | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.capture_error = capture_error
        self.captures: list[list[tuple[int, ...]]] = []
        self.replays = 0

    def _warm_up(self, inputs):
        self._step(inputs)

    def _record(self, inputs):
        self.captures.append([tuple(x.shape) for x in inputs])
        if self.capture_error is not None:
            raise self.capture_error
        self._static_inputs = [x.clone() for x in inputs]
        step = self

        class Replay:
            def replay(self) -> None:
                step.replays += 1
                step._step(step._static_inputs)

        return Replay()


class StandInGraphStep(StandInGraph, TrainingStep):
    """`TrainingStep` with the stand-in graph."""


class StandInGroupStep(StandInGraph, GroupStep):
    """`GroupStep` with the stand-in graph."""


def _problem(seed: int = 0):
    """A linear regression whose steps depend on every batch, with its batches of 8, 8, 8 and 4 rows."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=0.05, momentum=0.9)
    x, y = torch.randn(28, 3, generator=generator), torch.randn(28, generator=generator)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 28, 8)]

    def loss_of(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((features @ weight - targets) ** 2).mean()

    return weight, optimizer, loss_of, batches


def _train(step: TrainingStep, batches, epochs: int = 3) -> list[float]:
    losses = []
    for epoch in range(epochs):
        for batch in batches:
            step(*batch)
        losses.append(step.end_epoch(epoch))
    return losses


def test_the_capture_takes_a_full_batch_even_when_an_epoch_has_few_of_them():
    weight, optimizer, loss_of, batches = _problem()
    step = StandInGraphStep(loss_of, optimizer, torch.device("cpu"), True, full_rows=8)
    _train(step, batches)
    # Three full batches an epoch: epoch 1 warms up, epoch 2's first full batch is captured.
    assert step.captures == [[(8, 3), (8,)]]
    assert step.replays == 3 * 3 - WARMUP_STEPS  # every full batch after the warm-up, the captured one included


def test_without_a_known_full_batch_the_fourth_call_is_captured_whatever_its_shape():
    weight, optimizer, loss_of, batches = _problem()
    step = StandInGraphStep(loss_of, optimizer, torch.device("cpu"), True)
    _train(step, batches, epochs=1)
    assert step.captures == [[(4, 3), (4,)]]  # what full_rows is for


def test_graphed_steps_train_as_eager_ones():
    weight, optimizer, loss_of, batches = _problem()
    graphed_losses = _train(StandInGraphStep(loss_of, optimizer, torch.device("cpu"), True, full_rows=8), batches)
    graphed = weight.detach().clone()
    weight, optimizer, loss_of, batches = _problem()
    eager_losses = _train(TrainingStep(loss_of, optimizer, torch.device("cpu")), batches)
    assert graphed_losses == eager_losses
    assert torch.equal(graphed, weight.detach())


def test_a_capture_that_fails_under_auto_warns_once_and_steps_eagerly(caplog):
    weight, optimizer, loss_of, batches = _problem()
    error = RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors ...")
    step = StandInGraphStep(loss_of, optimizer, torch.device("cpu"), True, full_rows=8, capture_error=error)
    with caplog.at_level(logging.WARNING, logger="trainables.step"):
        losses = _train(step, batches)
    assert len(step.captures) == 1 and step.replays == 0  # tried once, never again
    assert step.graphed is False
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert warnings == [
        "the training step cannot be captured as a CUDA graph (CUDA error: operation not permitted when stream is "
        "capturing CUDA kernel errors ...): running it eagerly"
    ]
    assert step.warnings() == {
        "training.cuda_graph": "the step could not be captured as a CUDA graph, so it ran eagerly: CUDA error: operation "
        "not permitted when stream is capturing CUDA kernel errors ..."
    }
    # The batch whose capture failed was trained eagerly: nothing was skipped or applied twice.
    fallen_back = weight.detach().clone()
    weight, optimizer, loss_of, batches = _problem()
    assert losses == _train(TrainingStep(loss_of, optimizer, torch.device("cpu")), batches)
    assert torch.equal(fallen_back, weight.detach())


def test_a_capture_that_fails_under_true_is_the_trials_one_line_error():
    weight, optimizer, loss_of, batches = _problem()
    step = StandInGraphStep(
        loss_of, optimizer, torch.device("cpu"), True, full_rows=8, graph_required=True,
        capture_error=RuntimeError("boolean mask indexing\nneeds the values"),
    )  # fmt: skip
    with pytest.raises(UserInputError) as raised:
        _train(step, batches)
    assert str(raised.value) == (
        "training.cuda_graph is true, but this trial's step cannot be captured as a CUDA graph (boolean mask indexing "
        "needs the values); set training.cuda_graph to auto to run it eagerly"
    )
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_an_eager_step_has_no_warnings():
    weight, optimizer, loss_of, batches = _problem()
    step = TrainingStep(loss_of, optimizer, torch.device("cpu"))
    _train(step, batches, epochs=1)
    assert step.warnings() == {}


def _members(count: int):
    """`count` regressions on the same features with targets of their own: (weight, step, targets of every row)."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(28, 3, generator=generator)
    members = []
    for _ in range(count):
        weight = torch.nn.Parameter(torch.zeros(3))
        targets = torch.randn(28, generator=generator)
        step = TrainingStep(lambda f, t, w=weight: ((f @ w - t) ** 2).mean(), torch.optim.SGD([weight], lr=0.05, momentum=0.9),
                            torch.device("cpu"))  # fmt: skip
        members.append((weight, step, targets))
    batches = [(x[i : i + 8], torch.arange(i, min(i + 8, 28))) for i in range(0, 28, 8)]
    return members, batches


def test_a_graphed_group_step_trains_each_member_as_its_own_eager_steps():
    members, batches = _members(3)
    group = StandInGroupStep([(step, targets) for _, step, targets in members], torch.device("cpu"), True, full_rows=8)
    losses = [[] for _ in members]
    for epoch in range(3):
        for features, rows in batches:
            group(features, rows)
        for i, (_, step, _) in enumerate(members):
            losses[i].append(step.end_epoch(epoch))
    assert len(group.captures) == 1 and group.replays == 3 * 3 - WARMUP_STEPS  # one graph for every member's step
    alone, batches = _members(3)
    for i, (weight, step, targets) in enumerate(alone):
        eager = []
        for epoch in range(3):
            for features, rows in batches:
                step(features, targets[rows])
            eager.append(step.end_epoch(epoch))
        assert eager == losses[i] and torch.equal(weight.detach(), members[i][0].detach())


def test_a_group_capture_that_fails_under_auto_warns_on_every_members_run():
    members, batches = _members(2)
    error = RuntimeError("operation not permitted when stream is capturing")
    group = StandInGroupStep([(step, targets) for _, step, targets in members], torch.device("cpu"), True, full_rows=8,
                             capture_error=error)  # fmt: skip
    for _ in range(2):
        for features, rows in batches:
            group(features, rows)
    assert group.graphed is False and len(group.captures) == 1
    for _, step, _ in members:
        assert step.warnings() == {"training.cuda_graph": "the step could not be captured as a CUDA graph, so it ran eagerly: "
                                   "operation not permitted when stream is capturing"}  # fmt: skip
