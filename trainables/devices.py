"""Where a trial (or a fill actor) computes: its device, given what the scheduler gave it, and the
CPUs it may use.

Ray sets `CUDA_VISIBLE_DEVICES` for a task that asks for GPUs, but no longer hides the GPUs from
one that asks for none, so `device: auto` cannot just mean "CUDA if the process sees it": a trial
given no GPU would open GPU 0 uncounted. And a torch build whose CUDA is newer than the node's
NVIDIA driver sees no GPU at all, so a trial that Ray gave a GPU would train on the CPU, silently,
at a fraction of the speed. `trial_device` settles both; the scheduler side (`trainables.trainable`,
the fill's actors) passes how many GPUs it was given.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import torch

from trainables.errors import UserInputError

MINIMUM_DRIVER = {13: "580", 12: "525.60", 11: "450.80"}
"""The oldest NVIDIA Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility
tables; 12 and 11 through minor-version compatibility)."""


def trial_device(requested: str, assigned_gpus: int | None = None, who: str = "trial") -> torch.device:
    """The device for `requested` (`auto`, `cpu`, `cuda:1`, ...). `assigned_gpus`: how many GPUs the
    scheduler gave this process (None: no scheduler, as in a notebook). `auto` is the CPU when the
    scheduler gave no GPU, else CUDA where torch can use it; a process given a GPU that torch cannot
    use fails in one line naming the driver and torch's CUDA. A device named outright is that device."""
    if requested != "auto":
        return torch.device(requested)
    if assigned_gpus and not torch.cuda.is_available():
        raise UserInputError(unusable_gpu_message(assigned_gpus, who))
    if assigned_gpus == 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def unusable_gpu_message(assigned_gpus: int, who: str = "trial") -> str:
    driver = nvidia_driver_version()
    built = torch.version.cuda
    if built is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        major = int(built.split(".")[0])
        needs = MINIMUM_DRIVER.get(major)
        why = f"torch {torch.__version__} is built for CUDA {built}" + (f", which needs NVIDIA driver >= {needs}" if needs else "")
    seen = f"this node's NVIDIA driver is {driver}" if driver else "this node shows no NVIDIA driver"
    return (
        f"this {who} was given {assigned_gpus} GPU(s) but torch cannot use CUDA: {why}, and {seen}; "
        "install a torch build for the driver's CUDA (README: Picking the torch build for a driver)"
    )


def nvidia_driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The loaded NVIDIA kernel module's version (`535.129.03`), or what `nvidia-smi` reports; None without either."""
    try:
        found = re.search(r"Kernel Module\s+([0-9][0-9.]*)", proc_file.read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        answer = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = answer.stdout.split()
    return lines[0] if answer.returncode == 0 and lines else None


def device_name(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H200)` or `cpu`: what a trial ran on, for its run."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def default_workers(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Image-decoding workers (of a fill, of an online trial outside Ray): the CPUs this process may run on, within its container's CPU
    quota (a pod limited to 8 CPUs on a 128-core node sees all 128 in its affinity mask)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the container may use (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None: no limit."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
