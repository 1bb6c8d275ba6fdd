"""Where a trial computes: `auto` on the GPUs the scheduler gave it (none: the CPU, even where GPUs
are visible), a GPU it was given but cannot use as a one-line error naming the driver and torch's
CUDA, and the CPUs a container's quota allows. The scheduler is stood in for here (a fake
`ray.get_gpu_ids()`, a CUDA that says it is there); tests/test_gpu.py runs the real thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from trainables import devices, tasks, trainable
from trainables.errors import UserInputError


@pytest.fixture
def cuda_visible(monkeypatch):
    """This process sees a GPU (as every trial on a GPU node does, Ray 2.60 hiding none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def cuda_unusable(monkeypatch):
    """A node with an NVIDIA driver too old for this torch build's CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: "535.129.03")


def test_auto_is_the_cpu_for_a_trial_given_no_gpu_even_where_gpus_are_visible(cuda_visible):
    assert devices.trial_device("auto", 0) == torch.device("cpu")
    assert devices.trial_device("auto", 1) == torch.device("cuda")
    assert devices.trial_device("auto", None) == torch.device("cuda")  # no scheduler: a notebook takes the GPU
    assert devices.trial_device("cuda:1", 0) == torch.device("cuda:1")  # named explicitly: as named


def test_a_trial_given_a_gpu_it_cannot_use_fails_in_one_line_naming_the_driver(cuda_unusable):
    with pytest.raises(UserInputError) as raised:
        devices.trial_device("auto", 1)
    assert str(raised.value) == (
        f"this trial was given 1 GPU(s) but torch cannot use CUDA: torch {torch.__version__} is built for CUDA 13.0, "
        "which needs NVIDIA driver >= 580, and this node's NVIDIA driver is 535.129.03; install a torch build for "
        "the driver's CUDA (README: Picking the torch build for a driver)"
    )
    assert devices.trial_device("auto", 0) == torch.device("cpu")  # given none, the CPU is what it asked for


def test_the_message_says_so_for_a_cpu_only_torch_and_a_node_without_a_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(devices, "nvidia_driver_version", lambda: None)
    with pytest.raises(UserInputError, match=r"is a CPU-only build, and this node shows no NVIDIA driver;"):
        devices.trial_device("auto", 2)


def test_the_driver_version_is_read_from_the_kernel_module(tmp_path):
    proc = tmp_path / "version"
    proc.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert devices.nvidia_driver_version(proc) == "535.129.03"


class _ProbeConfig(BaseModel):
    device: str = "auto"


def _run_probe_trial(monkeypatch, gpu_ids: list[int]) -> list[str]:
    """`run_trial` of a family that records the device its config reaches the loop with."""
    seen = []

    def run(config, state):
        seen.append(config.device)
        return iter(())

    monkeypatch.setitem(tasks.TASKS, "probe", tasks.TaskFamily("probe", _ProbeConfig, run, "score"))
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: gpu_ids)
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    trainable.run_trial({"family": "probe", "trial_config": {"device": "auto"}})
    return seen


def test_a_ray_trial_asking_for_no_gpu_runs_on_the_cpu(monkeypatch, cuda_visible):
    assert _run_probe_trial(monkeypatch, []) == ["cpu"]
    assert _run_probe_trial(monkeypatch, [3]) == ["cuda"]  # Ray's CUDA_VISIBLE_DEVICES makes its GPU cuda:0


def test_a_ray_trial_given_a_gpu_without_cuda_fails_before_it_starts(monkeypatch, cuda_unusable):
    with pytest.raises(UserInputError, match="given 1 GPU"):
        _run_probe_trial(monkeypatch, [0])


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "800000 100000\n"}, 8.0),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_containers_cpu_quota_bounds_the_decoding_workers(tmp_path, monkeypatch, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(128)))
    assert devices.cpu_quota(Path(tmp_path)) == quota
    expected = 128 if quota is None else max(1, min(128, -(-quota // 1)))
    assert devices.default_workers(Path(tmp_path)) == expected


def test_a_device_named_outright_is_used_as_named(cuda_unusable):
    """`resources.device: cpu` on a node whose GPUs torch cannot use (or that declares GPUs it has not)."""
    assert devices.trial_device("cpu", 1) == torch.device("cpu")
