"""Peak tensor memory of one trial, measured by running its steps once: what `describe` prints so
that several trials can be packed on one GPU (`resources.gpus_per_trial` below 1).

The count is of tensor storages on the trial's device: the frozen backbone, the setup's parameters
and buffers, gradients, optimiser state and every activation alive at the worst moment of a
training step or an evaluation batch. A CUDA process adds its context and the caching allocator's
slack on top, which no tensor count can see.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainables.backbone.precision import autocast
from trainables.backbone.runtime import FrozenCLIP
from trainables.mlr.losses import AsymmetricLoss
from trainables.mlr.setups.base import MLRSetup


class TensorMemory(TorchDispatchMode):
    """Within the mode: the bytes of live tensor storages on one device type, and their peak.

    Every operator's outputs are counted (the backward pass's too: autograd runs them under the
    mode); a storage stops counting when Python frees it. Tensors made before the mode count only
    once passed to `hold`.
    """

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type
        self.current = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._count(tensor)

    def _count(self, tensor: object) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device_type:
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes:
            return
        self._sizes[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            self._count(tensor)
        return out


def peak_bytes(resident: Iterable[torch.Tensor], steps: Callable[[], None], device: torch.device) -> int:
    """Peak bytes while `steps()` runs, counting the `resident` tensors (weights, data) from the start."""
    with TensorMemory(device.type) as memory:
        memory.hold(resident)
        steps()
    return memory.peak


def _module_tensors(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


def module_bytes(module: torch.nn.Module) -> int:
    """The bytes of a module's weights and buffers (each storage once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _module_tensors(module)}
    return sum(storages.values())


def mlr_trial_bytes(setup: MLRSetup, clip: FrozenCLIP, batch_size: int, eval_batch_size: int, chosen_precision: str) -> int:
    """Peak bytes of an MLR trial of `setup` (built on `clip`) on `clip`'s device: two SGD steps on
    cached features (the second with momentum buffers), then the evaluation's class embeddings and
    one test batch. The steps change the setup's weights: measure a copy you do not need."""
    device = clip.device
    setup = setup.to(device)
    optimizer = torch.optim.SGD(setup.parameters(), lr=1e-6, momentum=0.9)
    loss_fn = AsymmetricLoss()
    length, dim = clip.dense_shape
    targets = torch.ones(batch_size, setup.num_classes, dtype=torch.int8, device=device)

    def steps() -> None:
        for _ in range(2):
            with autocast(chosen_precision, device):
                logits = setup(torch.zeros(batch_size, length, dim, device=device))
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            del logits, loss
        with torch.no_grad(), autocast(chosen_precision, device):
            class_embeddings = setup.class_embeddings()
            setup.logits_from_features(torch.zeros(eval_batch_size, length, dim, device=device), class_embeddings)

    return peak_bytes(_module_tensors(clip, setup), steps, device)

