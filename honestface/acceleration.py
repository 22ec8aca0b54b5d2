"""How the model is placed on a device for inference: precision per part and memory layout.

Measured with ``benchmarks/bench_restore.py`` (numbers in the README, "Benchmarks"):

- **channels-last on CPUs in bfloat16.** oneDNN's bf16 convolutions (AVX512-BF16 / AMX)
  work in NHWC; with NCHW tensors every convolution reorders its input and output, which
  ate the whole bf16 gain (the nano model: 0.84x of the float32 baseline in NCHW, 3.5x in
  NHWC). In float32 channels-last did not help on CPUs, so it is used in reduced precision
  only. On CUDA it is left to ``bench_gpu.sh`` to decide (not measured yet).
- **the UNet and the VAE encoder in float32 with bf16 math on CPUs in bfloat16.** With
  every part in bf16 the SD 2.1-size model (random weights, 512 px) gave 38.3 dB PSNR
  against float32. The loss is spread over the whole UNet (measured at 256 px): keeping
  any one kind of layer in float32 (norms, attention, time embedding, conv_in/conv_out,
  ResNet blocks) gained at most 0.3 dB, all down or all up blocks 0.7-0.8 dB, the whole
  UNet 2.4 dB. Rounding the activations to bf16 after every layer is what costs; the
  multiplications themselves can stay bf16. So these parts keep float32 weights and
  activations and oneDNN runs their convolutions and matrix products with bf16 inputs,
  float32 accumulation and float32 outputs (``fp32_precision = "bf16"``, set only during
  their forward). The UNet alone so gave 40.0-40.1 dB on two faces (39.96 dB min), at the
  line; with the VAE encoder too (its rounding reaches the UNet's input) 41.9 dB min,
  42.3 mean, for about 1.46x the CPU time of an all-bf16 model; the weights of these
  parts take float32 memory. On the nano model the PSNR is 56 dB either way, so there it
  only costs.

Channels-last leaves results unchanged up to the rounding of a different summation order.
"""

from __future__ import annotations

import torch
from torch import nn

#: Sub-modules (names in :class:`~honestface.models.HonestFaceModel`) that keep float32
#: weights and activations when the model runs in bfloat16 on a CPU, computed with the
#: CPU's bf16 units through oneDNN's bf16 math mode (:func:`keep_float32_with_bf16_math`).
CPU_BF16_FLOAT32_PARTS: tuple[str, ...] = ("restorer.unet", "restorer.vae.encoder", "restorer.vae.quant_conv")

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


def cpu_bf16_math_available() -> bool:
    """True when this torch lets oneDNN compute float32 convolutions/matmuls in bf16 (torch >= 2.9)."""
    return all(hasattr(backend, "fp32_precision")
               for backend in (torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul))


def float32_parts(device: str | torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """Names of the sub-modules kept in float32 (with bf16 math) for ``device``/``dtype``.

    Only bfloat16 on CPUs, where this torch can switch oneDNN's math mode; elsewhere the
    whole model runs in ``dtype``.
    """
    on_cpu = torch.device(device).type == "cpu"
    return CPU_BF16_FLOAT32_PARTS if on_cpu and dtype == torch.bfloat16 and cpu_bf16_math_available() else ()


class _CpuBf16Math:
    """Forward hooks that switch oneDNN's float32 convolutions and matmuls to bf16 math for
    one module's forward (bf16 inputs, float32 accumulation and float32 outputs) and
    restore the previous setting afterwards, also when the forward raises."""

    def __init__(self) -> None:
        self.backends = (torch.backends.mkldnn.conv, torch.backends.mkldnn.matmul)
        self.previous: list[list[str]] = []

    def enter(self, module: nn.Module, args: tuple) -> None:
        self.previous.append([backend.fp32_precision for backend in self.backends])
        for backend in self.backends:
            backend.fp32_precision = "bf16"

    def leave(self, module: nn.Module, args: tuple, output) -> None:
        if self.previous:
            for backend, value in zip(self.backends, self.previous.pop()):
                backend.fp32_precision = value


def keep_float32_with_bf16_math(module: nn.Module) -> nn.Module:
    """Run ``module`` in float32 with the CPU's bf16 math (see :data:`CPU_BF16_FLOAT32_PARTS`).

    The caller keeps ``module``'s weights in float32 and gives it float32 inputs (the
    restorer casts the UNet's inputs to its parameters' dtype). Returns ``module``.
    """
    if getattr(module, "_bf16_math_hooks", None) is not None:
        return module  # placed before (hooks run in registration order: a second pair would not nest)
    hooks = _CpuBf16Math()
    module._bf16_math_hooks = (module.register_forward_pre_hook(hooks.enter),
                               module.register_forward_hook(hooks.leave, always_call=True))
    return module


def drop_bf16_math(module: nn.Module) -> None:
    """Undo :func:`keep_float32_with_bf16_math` on ``module`` and all its sub-modules."""
    for part in module.modules():
        handles = getattr(part, "_bf16_math_hooks", None)
        if handles is not None:
            for handle in handles:
                handle.remove()
            del part._bf16_math_hooks


def place_model(model: nn.Module, device: str | torch.device, dtype: torch.dtype,
                keep_float32: tuple[str, ...] | None = None) -> nn.Module:
    """Move ``model`` to ``device`` in ``dtype`` for inference, in its fastest layout.

    The sub-modules named in ``keep_float32`` (default :func:`float32_parts`) keep their
    float32 weights, never rounded to ``dtype``, and compute with bf16 math
    (:func:`keep_float32_with_bf16_math`). Then :func:`apply_inference_layout`. Returns
    ``model`` (changed in place).
    """
    names = float32_parts(device, dtype) if keep_float32 is None else tuple(keep_float32)
    kept = [model.get_submodule(name) for name in names]
    # a model placed before for another device or precision: its other parts lose the bf16 math
    for part in model.modules():
        if getattr(part, "_bf16_math_hooks", None) is not None and not any(part is k for k in kept):
            drop_bf16_math(part)
    _cast_except(model, device, dtype, kept)
    for part in kept:
        keep_float32_with_bf16_math(part)
    return apply_inference_layout(model, device, dtype)


def _cast_except(module: nn.Module, device, dtype: torch.dtype, kept: list[nn.Module]) -> None:
    # nn.Module.to: diffusers' override logs a spurious float32 warning on every cast
    if any(module is part for part in kept):
        nn.Module.to(module, device=device, dtype=torch.float32)
        return
    if not any(sub is part for sub in module.modules() for part in kept):
        nn.Module.to(module, device=device, dtype=dtype)
        return
    for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        tensor.data = tensor.data.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    for child in module.children():
        _cast_except(child, device, dtype, kept)


__all__ = ["CPU_BF16_FLOAT32_PARTS", "apply_inference_layout", "cpu_bf16_math_available", "drop_bf16_math",
           "float32_parts", "keep_float32_with_bf16_math", "place_model", "prefers_channels_last"]
