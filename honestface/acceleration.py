"""Inference layout choices that make the same computation faster on a given device.

Measured with ``benchmarks/bench_restore.py`` (numbers in the README, "Benchmarks"):

- **channels-last on CPUs in bfloat16.** oneDNN's bf16 convolutions (AVX512-BF16 / AMX)
  work in NHWC; with NCHW tensors every convolution reorders its input and output, which
  ate the whole bf16 gain (the nano model: 0.84x of the float32 baseline in NCHW, 3.5x in
  NHWC). In float32 channels-last did not help on CPUs, so it is used in reduced precision
  only. On CUDA it is left to ``bench_gpu.sh`` to decide (not measured yet).

Results are unchanged up to the rounding of a different summation order.
"""

from __future__ import annotations

import torch
from torch import nn

#: Precisions in which CPUs gain from channels-last (oneDNN's native bf16/fp16 layouts).
_CPU_CHANNELS_LAST_DTYPES = (torch.bfloat16, torch.float16)


def prefers_channels_last(device: str | torch.device, dtype: torch.dtype) -> bool:
    """True where channels-last measurably speeds up the UNet/VAE convolutions."""
    return torch.device(device).type == "cpu" and dtype in _CPU_CHANNELS_LAST_DTYPES


def apply_inference_layout(model: nn.Module, device: str | torch.device, dtype: torch.dtype) -> nn.Module:
    """Put ``model``'s 4-D weights in the memory format that is fastest for ``device``/``dtype``.

    Convolutions follow their weights' format, so the activations become channels-last
    too without touching the inputs. Returns ``model`` (changed in place).
    """
    if prefers_channels_last(device, dtype):
        model.to(memory_format=torch.channels_last)
    return model


__all__ = ["apply_inference_layout", "prefers_channels_last"]
