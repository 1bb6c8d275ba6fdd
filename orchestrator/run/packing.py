"""`tune-packing SPEC`: how many trials should share one GPU, measured on the GPU it runs on.

K = 1, 2, 4, 8 processes each run a real trial of the spec's costliest cell, as its family picks
it and steps it (`Family.heaviest_trial`, `Family.training_steps`), built with the share of the device that
`resources.gpus_per_trial = 1/K` gives it (so each keeps on the device the features such a trial
would), start together and train for a while; the total training images/s of each K and the peak
memory of its processes are printed, with the `gpus_per_trial` to use: the K with the most images/s
that still gains `MIN_GAIN` over half as many processes and whose processes fit in the device's
memory. On a CPU the same measurement says how many trials one machine runs best at once.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import time
from dataclasses import dataclass

import torch
from tabulate import tabulate

from orchestrator.specs import LoadedSpec, grid

MIN_GAIN = 1.1
"""Doubling the processes must add at least this factor of images/s to be worth its memory."""

MEMORY_HEADROOM = 0.9
"""The share of the device's memory that the packed processes may use at their peaks."""


@dataclass(frozen=True)
class Packed:
    processes: int
    images_per_second: float
    peak_bytes: int
    """The largest peak of one process: on a GPU what its caching allocator held (resident features
    included) plus what the process holds beside it (its CUDA context, `context_bytes`), on a CPU its
    resident set."""


def _train_for(family_name: str, config_json: str, seconds: float, start, results) -> None:
    """One of K processes: build the trial, wait for the others, train until `seconds` have passed;
    report (images trained, peak bytes)."""
    from orchestrator.family import named

    try:
        family = named(family_name)
        device, steps = family.training_steps(family.task.config.model_validate_json(config_json))
        start.wait()
        deadline, images = time.monotonic() + seconds, 0
        for trained in steps:
            images += trained
            if time.monotonic() >= deadline:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_reserved(device) + context_bytes(device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        results.put((images, peak))
    except BaseException as error:
        results.put(error)
        raise


CONTEXT_ESTIMATE = 600 * 2**20
"""What a process holds on a GPU beyond its allocator's pool where nvidia-smi cannot say: a CUDA
context with cuBLAS and cuDNN loaded takes about 0.5 GB."""


def context_bytes(device: torch.device) -> int:
    """What this process holds on its GPU beyond the caching allocator's pool (its CUDA context, the
    libraries' workspaces): nvidia-smi's memory of this process less the pool; `CONTEXT_ESTIMATE`
    where nvidia-smi does not list it (absent, or in a container's own PID namespace)."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return CONTEXT_ESTIMATE
    mine = [line.split(",") for line in answer.stdout.splitlines() if line.split(",")[0].strip() == str(os.getpid())]
    if answer.returncode != 0 or not mine:
        return CONTEXT_ESTIMATE
    used = sum(int(fields[1]) for fields in mine) * 2**20  # MiB
    return max(used - torch.cuda.memory_reserved(device), 0)


def measure(family, config, processes: int, seconds: float) -> Packed:
    """Total training images/s of `processes` trials of `config` (a trial config of `family`, with a
    `gpu_share`) sharing the device."""
    config = config.model_copy(update={"gpu_share": 1.0 / processes})
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=_train_for, args=(family.name, config.model_dump_json(), seconds, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    start.wait(timeout=1800)
    reports = [results.get(timeout=seconds + 1800) for _ in workers]
    for worker in workers:
        worker.join()
    failed = [r for r in reports if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    return Packed(processes, sum(images for images, _ in reports) / seconds, max(peak for _, peak in reports))


def recommend(measured: list[Packed], device_bytes: int) -> Packed:
    """The packing to use: the most images/s among those that fit in memory and gained enough over
    half as many processes."""
    fitting = [m for m in measured if m.processes * m.peak_bytes <= MEMORY_HEADROOM * device_bytes]
    chosen = min(fitting or measured, key=lambda m: m.processes)
    for packed in sorted(fitting, key=lambda m: m.processes):
        if packed.images_per_second >= MIN_GAIN * chosen.images_per_second:
            chosen = packed
    return chosen


def device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    from trainables.features.rows import available_host_memory

    return available_host_memory()


def heaviest_trial(loaded: LoadedSpec):
    """The family and trial config of the spec's costliest cell, as its task family picks it (`Family.heaviest_trial`)."""
    from trainables.errors import UserInputError

    from orchestrator.family import in_spec

    spec = loaded.spec
    plan = grid.Plan.of(spec)
    for family in in_spec(spec):
        config = family.heaviest_trial(plan)
        if config is not None:
            return family, config
    raise UserInputError(f"spec {spec.name} has no trials tune-packing can measure (no family of its setups measures its trials)")


def run(loaded: LoadedSpec, processes: list[int], seconds: float) -> str:
    """Measure each packing and say which to use."""
    from trainables.devices import device_name, trial_device

    from orchestrator.run import fill

    fill.fill_locally(grid.Plan.of(loaded.spec))  # the trials read the cache; encode it first if needed
    family, config = heaviest_trial(loaded)
    device = trial_device(config.device)
    measured = []
    for count in processes:
        measured.append(measure(family, config, count, seconds))
        print(f"  {count} at once: {measured[-1].images_per_second:.0f} training images/s", flush=True)
    one = measured[0].images_per_second
    table = tabulate(
        [[m.processes, f"{m.images_per_second:.0f}", f"{m.images_per_second / one:.2f}x", f"{m.peak_bytes / 2**30:.2f}",
          f"{m.processes * m.peak_bytes / 2**30:.1f}"] for m in measured],
        headers=["trials at once", "images/s", "vs 1", "GiB peak each", "GiB all"],
    )  # fmt: skip
    capacity = device_memory(device)
    chosen = recommend(measured, capacity)
    where = f"{device_name(device)}, {capacity / 2**30:.0f} GiB"
    if device.type == "cuda":
        advice = f"resources.gpus_per_trial: {1 / chosen.processes:g}   # {chosen.processes} trials per GPU like this one"
    else:
        advice = (f"{chosen.processes} trials at once on this machine (no GPU here: set resources.cpus_per_trial so that "
                  f"{chosen.processes} fit; on a GPU, run tune-packing there)")  # fmt: skip
    return "\n".join([
        f"Packing {family.trial_label(config)} on {where}, {seconds:g} s of training each:",
        table,
        f"Use: {advice}",
    ])  # fmt: skip
