"""Which floating-point precision is fast on a device: bf16 only where the hardware computes it natively.

On a CPU without AVX512-BF16 or AMX, PyTorch emulates bf16 arithmetic: measured on an AMD EPYC
with AVX2 only, a small bf16 convolution stack ran about 100x slower than in fp32 and a bf16
Linear 6.7x slower. So `auto` picks bf16 on CUDA devices that support it and on CPUs that report
AVX512-BF16 or AMX tiles, and fp32 everywhere else.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]

log = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, the reason in words)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"CUDA device {'supports' if supported else 'does not support'} bf16"
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if torch.cpu._is_amx_tile_supported():
            return True, f"CPU has AMX tiles ({capability})"
        if torch.cpu._is_avx512_bf16_supported():
            return True, f"CPU has AVX512-BF16 ({capability})"
        return False, f"CPU has no AVX512-BF16 or AMX ({capability}): bf16 is emulated, several times slower than fp32"
    return False, f"no native bf16 known for device type {device.type}"


def resolve(requested: Precision, device: torch.device) -> tuple[Literal["fp32", "bf16"], str]:
    """(the precision to compute in, a sentence saying why): `auto` chooses by `native_bf16`; an
    explicit `bf16` on a device without native bf16 runs, slowly, with a warning."""
    native, reason = native_bf16(device)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        return chosen, f"precision auto -> {chosen} on {device}: {reason}"
    if requested == "bf16" and not native:
        log.warning("precision bf16 on %s is slow here: %s", device, reason)
    return requested, f"precision {requested} on {device}, as the spec says"


def encoder_precision(device: torch.device) -> Literal["fp32", "bf16"]:
    """What the frozen image encoder computes in, filling the cache or encoding online: bf16 on a CUDA
    device that supports it (its features are stored in fp16 either way), fp32 everywhere else, so
    that a CPU's features stay what they were. The cache's keys tell the two apart."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(chosen: Literal["fp32", "bf16"], device: torch.device) -> AbstractContextManager:
    """The region where a setup computes in the chosen precision: bf16 autocast, or nothing for fp32.

    The cast cache is off: a CUDA graph cannot capture its lookups (`trainables.step`), and a
    training step uses each frozen weight once, so the cache would save nothing there.
    """
    if chosen == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()
