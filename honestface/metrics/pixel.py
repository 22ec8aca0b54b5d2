"""Pixel fidelity: PSNR and SSIM, batched over images, one value per image.

Inputs are (B, 3, H, W) float RGB in [0, 1] (the library convention). With
``y_channel=True`` both are computed on the BT.601 luma Y (the "Y channel" convention
of many face-restoration papers) instead of on the three RGB channels.
"""

from __future__ import annotations

import torch

from ..errors import ImageError


def _check_pair(restored: torch.Tensor, reference: torch.Tensor) -> None:
    for name, image in (("restored", restored), ("reference", reference)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ImageError(f"{name} must be a (B, 3, H, W) tensor, got {shape}")
    if restored.shape != reference.shape:
        raise ImageError(f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ in shape")


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16/255, 235/255]."""
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.0
    return (images * weights).sum(1, keepdim=True) + 16.0 / 255.0


def _prepare(restored, reference, y_channel):
    _check_pair(restored, reference)
    restored = restored.to(torch.float64)
    reference = reference.to(device=restored.device, dtype=torch.float64)
    if y_channel and restored.shape[1] == 3:
        restored, reference = rgb_to_y(restored), rgb_to_y(reference)
    return restored, reference


def psnr(restored: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, y_channel: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, (B,) float64; ``inf`` for identical images."""
    restored, reference = _prepare(restored, reference, y_channel)
    mse = (restored - reference).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(
    restored: torch.Tensor,
    reference: torch.Tensor,
    data_range: float = 1.0,
    y_channel: bool = False,
    window_size: int = 11,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), (B,) float64.

    Gaussian window ``window_size`` x ``window_size`` with sigma 1.5, constants
    K1 = 0.01, K2 = 0.03, computed on the valid region (no padding) and averaged over
    pixels and channels, through :func:`kornia.metrics.ssim`.
    """
    import kornia

    restored, reference = _prepare(restored, reference, y_channel)
    if min(restored.shape[-2:]) < window_size:
        raise ImageError(f"SSIM needs images of at least {window_size}x{window_size} pixels, got {tuple(restored.shape[-2:])}")
    ssim_map = kornia.metrics.ssim(restored, reference, window_size, max_val=data_range, padding="valid")
    return ssim_map.flatten(1).mean(1)


def correct_mean_var(restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give every channel of ``restored`` the mean and standard deviation of ``reference``'s.

    VQFR's ``calculate_psnr_ssim.py`` does this (always: its ``--correct_mean_var`` is on by
    default and cannot be turned off) before PSNR and SSIM: per channel, shift to the
    reference's mean, scale to its (population) standard deviation, and the same once more.
    No clipping. A channel of zero deviation is only shifted (the script would divide by 0).

    Args:
        restored, reference: (B, C, H, W), same shape.

    Returns:
        (B, C, H, W) float64.
    """
    _check_pair(restored, reference)
    x = restored.to(torch.float64)
    ref = reference.to(device=x.device, dtype=torch.float64)
    target_mean = ref.mean(dim=(-2, -1), keepdim=True)
    target_std = ref.std(dim=(-2, -1), unbiased=False, keepdim=True)
    for _ in range(2):
        x = x - x.mean(dim=(-2, -1), keepdim=True) + target_mean
        std = x.std(dim=(-2, -1), unbiased=False, keepdim=True)
        x = torch.where(std > 0, x / torch.where(std > 0, std, torch.ones_like(std)) * target_std, x)
    return x


__all__ = ["correct_mean_var", "psnr", "rgb_to_y", "ssim"]
