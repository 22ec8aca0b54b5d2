"""Colour correction of the restored face towards the LQ input (as in the OSDFace release).

Both take and return (B, 3, H, W) tensors (any value range; the same for both inputs):

- :func:`adain_color_fix`: per-channel mean and standard deviation of ``image`` are set to
  those of ``reference``.
- :func:`wavelet_color_fix`: the high frequencies of ``image`` are kept and its low
  frequencies (the colour) replaced by those of ``reference``; the split is an à-trous
  wavelet decomposition (3x3 binomial blur, dilation 1, 2, 4, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _channel_stats(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(2)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2, unbiased=False) + eps).sqrt()[..., None, None]


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) ``image`` with the channel statistics of ``reference`` (B, C, H', W')."""
    mean, std = _channel_stats(image)
    ref_mean, ref_std = _channel_stats(reference)
    return (image - mean) / std * ref_std + ref_mean


def _binomial_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(x.shape[1], 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with ``high + low == x``; ``low`` is the blur after ``levels`` steps."""
    low = x
    for level in range(levels):
        low = _binomial_blur(low, 2 ** level)
    return x - low, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of ``image`` + low frequencies of ``reference`` (resized to match)."""
    if reference.shape[-2:] != image.shape[-2:]:
        reference = F.interpolate(reference, size=image.shape[-2:], mode="bilinear", align_corners=False)
    high, _ = wavelet_decompose(image, levels)
    _, low = wavelet_decompose(reference, levels)
    return high + low


def color_correct(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Dispatch on ``method``: "none", "adain" or "wavelet"."""
    if method == "none":
        return image
    if method == "adain":
        return adain_color_fix(image, reference)
    if method == "wavelet":
        return wavelet_color_fix(image, reference)
    from ..errors import ConfigError

    raise ConfigError(f"unknown colour correction '{method}'; choose none, adain or wavelet")
