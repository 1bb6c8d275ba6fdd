"""A trial's cached features on its device: resident when they fit its memory budget, else streamed.

Resident: a split's features are uploaded once per trial (fp16, as cached) and every batch is
gathered on the device, so a training step copies nothing from the host. Streamed: a background
thread gathers the coming batches' rows from the memory map into pinned memory (on CUDA) while
the device computes, and each batch is copied without blocking. Either way a batch comes out as
float32 [B, L, d] on the device, in the order given, with the device index of its rows (to
gather targets kept on the device), and the epoch's order is uploaded once, not per batch.

Both task families read the cache here: the MLR loop batch by batch (`FeatureRows`), the OOD
loop whole splits of CLIP's global embeddings (`read_all`), which are small.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

DEVICE_FRACTION = 0.8
"""Default budget on CUDA: this share of the device memory that is free at the trial's start and
that the trial's share of the GPU (`gpus_per_trial`) leaves it; the rest is for the step's work."""

HOST_FRACTION = 0.25
"""Default budget on a CPU: this share of the host memory available at the trial's start."""

PREFETCH_BATCHES = 4
"""Batches a streaming thread gathers ahead of the one the device computes on."""

UPLOAD_CHUNK_BYTES = 256 * 2**20


def memory_budget(device: torch.device, requested_gib: float | None, gpu_share: float = 1.0) -> int:
    """Bytes of cached features a trial keeps on `device` (`features.device_memory`; None: the default)."""
    if requested_gib is not None:
        return int(requested_gib * 2**30)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(DEVICE_FRACTION * min(free, total * gpu_share))
    return int(HOST_FRACTION * available_host_memory())


def work_memory(device: torch.device, gpu_share: float = 1.0, sharing: int = 1) -> int:
    """Bytes a trial's weights and steps may use on `device` beside its resident features: the part
    of the device (its `gpu_share` of a GPU's memory) the feature budget leaves; on a CPU, the host
    memory available now, split among the `sharing` trials that run on the host at once."""
    if device.type == "cuda":
        return int((1 - DEVICE_FRACTION) * torch.cuda.get_device_properties(device).total_memory * gpu_share)
    return int((1 - HOST_FRACTION) * available_host_memory() / max(sharing, 1))


def available_host_memory() -> int:
    """MemAvailable of /proc/meminfo (free memory plus what the page cache would give back), or the
    free pages where that file does not exist."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def batch_rows(rows: np.ndarray, batch_size: int, generator: torch.Generator | None = None) -> list[np.ndarray]:
    """`rows` cut into batches, shuffled by `generator` first when given; each batch's rows sorted,
    which reads a memory map sequentially (a batch is a set: its order changes no loss)."""
    order = rows[torch.randperm(len(rows), generator=generator).numpy()] if generator is not None else rows
    return [np.sort(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]


class FeatureRows:
    """One cached split [N, L, d] (fp16) as one trial reads it: resident on the device, or streamed."""

    def __init__(self, features: np.ndarray, device: torch.device, resident: bool):
        self.features = features
        self.device = device
        self.resident = resident
        self._table = _upload(features, device) if resident else None

    def batches(self, batches: Sequence[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(device index of the rows [B], features float32 [B, L, d] on the device) for each batch of rows."""
        if not batches:
            return
        offsets = np.cumsum([0] + [len(b) for b in batches])
        order = torch.from_numpy(np.concatenate(batches).astype(np.int64)).to(self.device)  # once per epoch
        indices = (order[offsets[i] : offsets[i + 1]] for i in range(len(batches)))
        if self._table is not None:
            for index in indices:
                yield index, self._table.index_select(0, index).float()
            return
        for index, host in zip(indices, _prefetched(self.features, batches, pin=self.device.type == "cuda")):
            yield index, host.to(self.device, non_blocking=True).float()



def read_all(features: np.ndarray) -> torch.Tensor:
    """A whole cached split as float32 host memory, read at once: what a loop that needs every row
    together (the OOD family's small global embeddings) takes from the cache."""
    return torch.from_numpy(np.asarray(features, dtype=np.float32))


def place(splits: Sequence[np.ndarray], device: torch.device, budget: int) -> list[FeatureRows]:
    """`FeatureRows` of each split, resident while the budget lasts, in the order given (put first
    what is read most: the test split, read after every epoch)."""
    placed = []
    for features in splits:
        resident = features.nbytes <= budget
        budget -= features.nbytes if resident else 0
        placed.append(FeatureRows(features, device, resident))
    return placed


def _upload(features: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole array on `device` (fp16), copied in chunks so that the host never holds a second copy."""
    table = torch.empty(features.shape, dtype=torch.float16, device=device)
    row_bytes = max(int(np.prod(features.shape[1:])) * 2, 1)
    step = max(UPLOAD_CHUNK_BYTES // row_bytes, 1)
    with warnings.catch_warnings():
        # The chunks are views of a read-only memory map, which torch warns about; they are only read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for start in range(0, len(features), step):
            table[start : start + step].copy_(torch.from_numpy(np.ascontiguousarray(features[start : start + step])))
    return table


def _prefetched(features: np.ndarray, batches: Sequence[np.ndarray], pin: bool) -> Iterator[torch.Tensor]:
    """The rows of each batch as fp16 host tensors (pinned if `pin`), gathered by a background thread
    up to PREFETCH_BATCHES ahead; an error in the thread is raised here."""
    ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        """Queue `item` unless the consumer has gone; whether it was queued."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def gather() -> None:
        try:
            for rows in batches:
                host = torch.empty((len(rows), *features.shape[1:]), dtype=torch.float16, pin_memory=pin)
                np.take(features, rows, axis=0, out=host.numpy())
                if not offer(host):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer, which raises it
            offer(error)

    thread = threading.Thread(target=gather, name="feature-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
