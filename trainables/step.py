"""A trial's optimiser steps, without a host synchronisation, eager or replayed from a CUDA graph.

A family's loop hands `TrainingStep` a loss function of tensors (a batch's features, its targets,
the step's random draws) and its SGD optimiser. Each call runs forward, backward and the update
and never waits for the device: the learning rates are device tensors (changed with `fill_`, no
recapture), and the sum of the losses and the first non-finite step are kept on the device and
read once per epoch by `end_epoch`, which raises `FloatingPointError` naming the first bad step.

On CUDA with `graphed=True` the whole step is one CUDA graph: the first `WARMUP_STEPS` full
batches run eagerly on a side stream (real training steps: they also create the optimiser's
momentum buffers, which the captured update then changes in place), the next full batch is
captured with static input buffers and replayed, and every later full batch is copied into those
buffers and replayed. A call of another shape (an epoch's last, shorter batch) runs eagerly, so no
batch is dropped, and never becomes the captured shape. Everything runs on the trial's device and
its streams, whichever device is current. The capture wraps the step, not a setup: any loss
function of tensors is captured, so every setup and family gets it without code of its own. The
loss function should not synchronise (no `.item()`, no data-dependent shapes) and should autocast
with `cache_enabled=False` (`trainables.backbone.precision.autocast`); one that does cannot be captured,
and under `cuda_graph: auto` the trial then warns once and steps eagerly (`TrainingStep.fallback`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

from trainables.errors import UserInputError

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
"""Eager steps on a side stream before the capture (PyTorch's recipe for whole-network capture)."""

LossFunction = Callable[..., torch.Tensor]


def use_cuda_graph(requested: Literal["auto"] | bool, device: torch.device) -> bool:
    """`training.cuda_graph` on this trial's device: `auto` is on for CUDA, off elsewhere; `true` on a
    device without CUDA is a one-line error of this trial (the driver, maybe without a GPU, cannot judge it)."""
    if requested == "auto":
        return device.type == "cuda"
    if requested and device.type != "cuda":
        raise UserInputError(f"training.cuda_graph is true, but this trial runs on {device}: CUDA graphs need a CUDA device")
    return bool(requested)


@torch.no_grad()
def sgd_update(optimizer: torch.optim.SGD, learning_rates: Sequence[torch.Tensor]) -> None:
    """`torch.optim.SGD`'s update (weight decay, momentum with dampening, Nesterov, maximize), with
    each parameter group's learning rate read from a 0-dim device tensor: SGD itself turns a tensor
    learning rate into a Python number (a host sync, which a CUDA graph cannot capture).

    The momentum buffers live in `optimizer.state` as SGD keeps them, so `state_dict()` and
    `load_state_dict()` are SGD's own and checkpoints are interchangeable with `optimizer.step()`'s.
    """
    for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
        weight_decay, momentum = group["weight_decay"], group["momentum"]
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = -param.grad if group["maximize"] else param.grad
            if weight_decay != 0:
                grad = grad.add(param, alpha=weight_decay)
            if momentum != 0:
                state = optimizer.state[param]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buffer.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                grad = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
            # p - lr * g, bit for bit SGD's p.add_(g, alpha=-lr): (-1 * g) * lr == -(lr * g) exactly.
            param.addcmul_(grad, lr, value=-1)


def snapshot(state: dict) -> dict:
    """A copy of a state dict (nested dicts and lists of tensors) on the CPU, for a checkpoint:
    detached from the live tensors that later steps change in place, and loadable on any node."""
    if isinstance(state, dict):
        return {key: snapshot(value) for key, value in state.items()}
    if isinstance(state, list):
        return [snapshot(value) for value in state]
    return state.detach().cpu().clone() if isinstance(state, torch.Tensor) else state


class GraphedStep:
    """One step per call, eager or replayed from a CUDA graph (see the module docstring): what
    `TrainingStep` (one trial's) and `GroupStep` (a fused group's members') share. A subclass says
    what a step is (`_step`) and how its gradients are cleared (`_zero_grad`).

    `graphed`: capture the step as a CUDA graph (`use_cuda_graph`); `graph_required`: the spec said
    `true`, so a capture that fails is the trial's one-line error instead of a warning and eager
    steps; `full_rows`: the rows of a full batch (the first input's first dimension), the one shape
    that is warmed up, captured and replayed.
    """

    def __init__(self, device: torch.device, graphed: bool = False, *, graph_required: bool = False, full_rows: int | None = None):
        self.device = device
        self.graphed = graphed
        self.graph_required = graph_required
        self.full_rows = full_rows
        self.fallback: str | None = None
        """Why the step runs eagerly although a graph was asked for (`auto` and a capture that failed)."""
        self._warmup_left = WARMUP_STEPS
        self._graph = None
        self._static_inputs: list[torch.Tensor] = []

    def _step(self, inputs: Sequence[torch.Tensor], zero_grad: bool = True) -> None:
        raise NotImplementedError

    def _zero_grad(self) -> None:
        raise NotImplementedError

    def _fall_back(self, reason: str) -> None:
        """From now on, eager steps: the capture failed for `reason`."""
        self.graphed, self.fallback = False, reason

    def __call__(self, *inputs: torch.Tensor) -> None:
        if not self.graphed:
            self._step(inputs)
            return
        with self._on_device():
            if self._graph is not None and self._fits(inputs):
                for static, value in zip(self._static_inputs, inputs):
                    static.copy_(value, non_blocking=True)
                self._graph.replay()
            elif self._graph is not None or not self._full(inputs):
                self._step(inputs)  # another shape than the graph's (an epoch's last batch): eager
            elif self._warmup_left > 0:
                self._warmup_left -= 1
                self._warm_up(inputs)
            else:
                self._capture(inputs)

    def warnings(self) -> dict[str, str]:
        """What a trial's run should carry as a warning: a graph asked for that could not be captured."""
        if self.fallback is None:
            return {}
        return {"training.cuda_graph": f"the step could not be captured as a CUDA graph, so it ran eagerly: {self.fallback}"}

    def _full(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Whether `inputs` are a full batch: the shape to capture (any, where `full_rows` is not known)."""
        return self.full_rows is None or (inputs[0].dim() > 0 and inputs[0].shape[0] == self.full_rows)

    def _fits(self, inputs: Sequence[torch.Tensor]) -> bool:
        return len(inputs) == len(self._static_inputs) and all(
            s.shape == x.shape and s.dtype == x.dtype for s, x in zip(self._static_inputs, inputs)
        )

    # -- the graph: warm-up, capture, and the way back to eager steps ------------------------------

    def _on_device(self) -> AbstractContextManager:
        """The trial's device as the current one: warm-up, capture and replay use its streams, not cuda:0's."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    def _warm_up(self, inputs: Sequence[torch.Tensor]) -> None:
        """A real step on a side stream of the trial's device (PyTorch's recipe before a capture)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self, inputs: Sequence[torch.Tensor]) -> None:
        """Capture one step of `inputs`' shapes and replay it; where the capture fails, run this and
        every later step eagerly (`auto`: warned once) or fail the trial in one line (`true`)."""
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            self._graph = self._record(inputs)
        except Exception as error:  # what cannot be captured: a read-back, a data-dependent shape, ...
            if stream is not None:
                torch.cuda.set_stream(stream)  # a capture that fails to end leaves its own stream current
            self._graph, self._static_inputs = None, []
            self._zero_grad()  # gradients the capture allocated in its pool
            reason = " ".join(str(error).split()) or type(error).__name__
            if self.graph_required:
                raise UserInputError(
                    f"training.cuda_graph is true, but this trial's step cannot be captured as a CUDA graph ({reason}); "
                    "set training.cuda_graph to auto to run it eagerly"
                ) from None
            self._fall_back(reason)
            log.warning("the training step cannot be captured as a CUDA graph (%s): running it eagerly", reason)
            self._step(inputs)
            return
        self._graph.replay()  # capturing ran nothing: this replay is the step of `inputs`

    def _record(self, inputs: Sequence[torch.Tensor]) -> torch.cuda.CUDAGraph:
        """One step captured on static copies of `inputs`, on a stream of the trial's device."""
        self._static_inputs = [x.clone() for x in inputs]
        # Gradients allocated inside the capture belong to the graph's memory pool; every replay
        # writes them afresh, as backward does into a None gradient.
        self._zero_grad()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's prefetch thread may allocate pinned memory meanwhile, which the
        # default (global) mode would count against this capture. The stream is the trial's device's:
        # torch.cuda.graph's default one is made once per process, on whichever device was current.
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
            self._step(self._static_inputs, zero_grad=False)
        return graph


class TrainingStep(GraphedStep):
    """One optimiser step of one trial per call, on `loss_of(*inputs)`; see the module docstring and
    `GraphedStep` for `graphed`, `graph_required` and `full_rows`.
    """

    def __init__(
        self,
        loss_of: LossFunction,
        optimizer: torch.optim.SGD,
        device: torch.device,
        graphed: bool = False,
        *,
        graph_required: bool = False,
        full_rows: int | None = None,
    ):
        super().__init__(device, graphed, graph_required=graph_required, full_rows=full_rows)
        self.loss_of = loss_of
        self.optimizer = optimizer
        self.learning_rates = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        # Read by `end_epoch` only: the steps of this epoch, their loss sum, the first non-finite one.
        self._steps = torch.zeros((), dtype=torch.int64, device=device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._first_bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def set_learning_rates(self, values: Sequence[float]) -> None:
        """Each group's learning rate from now on; written to the device without waiting for it."""
        for group, tensor, value in zip(self.optimizer.param_groups, self.learning_rates, values, strict=True):
            group["lr"] = value  # what the optimiser's state_dict reports
            tensor.fill_(value)

    def end_epoch(self, epoch: int) -> float:
        """The mean loss of this epoch's steps (the one host sync of an epoch); raises FloatingPointError
        if a loss was not finite, naming the epoch (0-based here) and its first such step."""
        steps, first_bad, total, bad_loss = torch.stack(
            [self._steps.double(), self._first_bad_step.double(), self._loss_sum, self._first_bad_loss.double()]
        ).tolist()
        self._steps.zero_()
        self._loss_sum.zero_()
        self._first_bad_step.fill_(-1)
        if first_bad >= 0:
            raise FloatingPointError(
                f"training loss is {bad_loss} at epoch {epoch + 1}, step {int(first_bad) + 1}: "
                "the learning rate or loss settings diverge"
            )
        return total / max(steps, 1)

    # -- the step ------------------------------------------------------------------------------

    def _step(self, inputs: Sequence[torch.Tensor], zero_grad: bool = True) -> None:
        if zero_grad:
            self._zero_grad()
        loss = self.loss_of(*inputs)
        loss.backward()
        sgd_update(self.optimizer, self.learning_rates)
        with torch.no_grad():
            loss = loss.detach()
            first_bad = torch.logical_and(~torch.isfinite(loss), self._first_bad_step < 0)
            self._first_bad_step.copy_(torch.where(first_bad, self._steps, self._first_bad_step))
            self._first_bad_loss.copy_(torch.where(first_bad, loss.float(), self._first_bad_loss))
            self._loss_sum.add_(loss.double())
            self._steps.add_(1)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


class GroupStep(GraphedStep):
    """The steps of a fused group's members as one call on (the batch's features, its training-set
    rows): every member's own step on its own targets, and on CUDA one graph for all of them. Each
    member keeps its optimiser, learning rates and loss counters in its own `TrainingStep`, which
    this runs through its `_step` (the member's step never captures a graph of its own)."""

    def __init__(
        self, members: Sequence[tuple[TrainingStep, torch.Tensor]], device: torch.device, graphed: bool = False,
        *, graph_required: bool = False, full_rows: int | None = None,
    ):  # fmt: skip
        """`members`: each member's step and its targets of every training row (a batch's are gathered inside the step)."""
        super().__init__(device, graphed, graph_required=graph_required, full_rows=full_rows)
        self.members = list(members)

    def _step(self, inputs: Sequence[torch.Tensor], zero_grad: bool = True) -> None:
        features, rows = inputs
        for step, targets in self.members:
            step._step((features, targets.index_select(0, rows)), zero_grad)

    def _zero_grad(self) -> None:
        for step, _ in self.members:
            step._zero_grad()

    def _fall_back(self, reason: str) -> None:
        super()._fall_back(reason)
        for step, _ in self.members:  # each member's run carries the warning
            step.fallback = reason
