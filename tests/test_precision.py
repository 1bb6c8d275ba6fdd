"""Which precision `auto` picks: bf16 only where the device computes it natively."""

from __future__ import annotations

import logging

import pytest
import torch

from trainables.backbone import precision

CPU = torch.device("cpu")


@pytest.fixture
def cpu_features(monkeypatch):
    """`cpu_features(amx=..., avx512_bf16=...)`: pretend the CPU has (or lacks) these instructions."""

    def set_features(amx: bool, avx512_bf16: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    return set_features


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")])
def test_auto_picks_bf16_only_on_cpus_with_native_bf16(cpu_features, amx, avx512_bf16, expected):
    cpu_features(amx, avx512_bf16)
    chosen, reason = precision.resolve("auto", CPU)
    assert chosen == expected
    assert reason.startswith(f"precision auto -> {expected} on cpu: ")
    assert ("emulated" in reason) == (expected == "fp32")


def test_explicit_bf16_without_native_support_runs_with_a_warning(cpu_features, caplog):
    cpu_features(False, False)
    with caplog.at_level(logging.WARNING, logger="trainables.backbone.precision"):
        assert precision.resolve("bf16", CPU)[0] == "bf16"
    (record,) = caplog.records
    assert "slow here" in record.getMessage() and "emulated" in record.getMessage()


def test_explicit_fp32_is_kept_silently(cpu_features, caplog):
    cpu_features(True, True)
    with caplog.at_level(logging.WARNING, logger="trainables.backbone.precision"):
        assert precision.resolve("fp32", CPU)[0] == "fp32"
    assert not caplog.records


def test_this_machine_reports_its_own_capability():
    native, reason = precision.native_bf16(CPU)
    assert torch.backends.cpu.get_cpu_capability() in reason
    assert native == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
