"""What the CPU computes natively, for choosing the precision of a model run on it.

A CPU without bfloat16 instructions runs bf16 convolutions and matrix products through
float32 with conversions on every load and store: slower than float32 itself. With
AVX512-BF16 (``avx512_bf16``: bf16 dot products, Cooper Lake and later, AMD Zen 4) or AMX
(``amx_bf16``: bf16 tile matrix multiply, Sapphire Rapids and later) oneDNN runs them
natively, 2-4x faster than float32 on the same cores.

The flags come from Linux's ``/proc/cpuinfo``; where that file does not exist (macOS,
Windows) nothing is claimed and float32 is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch

#: CPU flags (``/proc/cpuinfo`` spelling) that give native bfloat16 arithmetic.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO_PATH = Path("/proc/cpuinfo")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text (empty if none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where ``/proc/cpuinfo`` cannot be read)."""
    try:
        return parse_cpu_flags(CPUINFO_PATH.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 (``flags``: default this machine's)."""
    present = cpu_flags() if flags is None else frozenset(flags)
    return bool(present & NATIVE_BF16_FLAGS)


def auto_dtype(device: str | torch.device | None = None, flags: Iterable[str] | None = None) -> torch.dtype:
    """The precision ``dtype="auto"`` means on ``device`` (default CPU).

    - CPU: bfloat16 where it is native (:func:`cpu_has_native_bf16`), else float32;
    - CUDA: bfloat16 where the GPU supports it (Ampere and later), else float16;
    - anything else (MPS, XPU, ...): float32.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16(flags) else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


__all__ = ["NATIVE_BF16_FLAGS", "auto_dtype", "cpu_flags", "cpu_has_native_bf16", "parse_cpu_flags"]
