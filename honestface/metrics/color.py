"""MS-SWD: multiscale sliced Wasserstein distance, a perceptual colour-difference measure.

Definition (He et al., "Multiscale Sliced Wasserstein Distances as Perceptual Color
Difference Measures", ECCV 2024), as used for the colour-shift study of the paper
(Table 3d):

1. Images whose shorter side exceeds ``resize_short_side`` (256) are resized so that it
   equals 256 (bilinear, antialiased).
2. A Gaussian pyramid of ``num_scales`` (5) levels: each level blurs the previous with
   the 5x5 binomial kernel ([1, 4, 6, 4, 1] outer product / 256, reflect border) and
   keeps every second pixel.
3. At every level both images are converted from sRGB to CIELAB (D65).
4. ``num_projections`` (128) random directions in the space of ``patch_size`` x
   ``patch_size`` (11 x 11) Lab patches (3 * 121 dimensions, drawn from a normal
   distribution and normalised to unit length; new directions per level) project
   every patch of both images (reflect padding, stride 1).
5. For each direction, the 1-D Wasserstein-1 distance between the two projected
   distributions is the mean absolute difference of the sorted projections.
6. MS-SWD = mean over directions, then mean over levels.

Because the projections are random, the value depends on them. Here they come from a
``torch.Generator`` seeded with ``seed`` (default 0), so the same inputs always give
the same number; compare methods with the same seed. The distance is symmetric, zero
for identical images and insensitive to where colours sit (it compares distributions
of patches, not aligned pixels), which makes it a measure of colour shift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ImageError

DEFAULT_NUM_SCALES = 5
DEFAULT_NUM_PROJECTIONS = 128
DEFAULT_PATCH_SIZE = 11
DEFAULT_SEED = 0


def _binomial_kernel(device, dtype) -> torch.Tensor:
    row = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=device, dtype=dtype)
    return (row[:, None] * row[None, :]) / 256.0


def _pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    # Reflect padding needs pad < size; the coarsest levels of small images fall back to replicate.
    mode = "reflect" if min(images.shape[-2:]) > pad else "replicate"
    return F.pad(images, (pad, pad, pad, pad), mode=mode)


def gaussian_pyramid(images: torch.Tensor, num_scales: int) -> list[torch.Tensor]:
    """[(B, C, H, W), (B, C, H/2, W/2), ...]: binomial blur then 2x decimation per level."""
    kernel = _binomial_kernel(images.device, images.dtype)
    kernel = kernel.expand(images.shape[1], 1, 5, 5)
    levels = [images]
    for _ in range(num_scales - 1):
        blurred = F.conv2d(_pad(levels[-1], 2), kernel, groups=images.shape[1])
        levels.append(blurred[..., ::2, ::2])
    return levels


def _sliced_wasserstein(x_lab: torch.Tensor, y_lab: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    pad = projections.shape[-1] // 2
    proj_x = F.conv2d(_pad(x_lab, pad), projections).flatten(2)  # (B, P, H*W)
    proj_y = F.conv2d(_pad(y_lab, pad), projections).flatten(2)
    proj_x, _ = torch.sort(proj_x, dim=2)
    proj_y, _ = torch.sort(proj_y, dim=2)
    return (proj_x - proj_y).abs().mean(dim=(1, 2))


def ms_swd(
    restored: torch.Tensor,
    reference: torch.Tensor,
    num_scales: int = DEFAULT_NUM_SCALES,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    patch_size: int = DEFAULT_PATCH_SIZE,
    seed: int = DEFAULT_SEED,
    resize_short_side: int | None = 256,
) -> torch.Tensor:
    """MS-SWD between two image batches (lower = closer colours).

    Args:
        restored, reference: (B, 3, H, W) sRGB in [0, 1], same shape.
        num_scales, num_projections, patch_size: see the module docstring.
        seed: seed of the random projections (same seed -> same projections).
        resize_short_side: shorter side to resize larger images to; None keeps the size.

    Returns:
        (B,) float32 distances (computed in float32; CIELAB units).
    """
    import kornia

    for name, image in (("restored", restored), ("reference", reference)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ImageError(f"MS-SWD needs (B, 3, H, W) RGB tensors; {name} has shape {shape}")
    if restored.shape != reference.shape:
        raise ImageError(f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ in shape")
    if num_scales < 1 or num_projections < 1 or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError("MS-SWD needs num_scales >= 1, num_projections >= 1 and an odd patch_size")
    x = restored.float().clamp(0, 1)
    y = reference.to(device=x.device, dtype=torch.float32).clamp(0, 1)
    if resize_short_side is not None and min(x.shape[-2:]) > resize_short_side:
        height, width = x.shape[-2:]
        factor = resize_short_side / min(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for level_x, level_y in zip(gaussian_pyramid(x, num_scales), gaussian_pyramid(y, num_scales)):
        directions = torch.randn(num_projections, 3 * patch_size * patch_size, generator=generator)
        directions = directions / directions.norm(dim=1, keepdim=True)
        directions = directions.view(num_projections, 3, patch_size, patch_size).to(x.device)
        lab_x = kornia.color.rgb_to_lab(level_x.clamp(0, 1))
        lab_y = kornia.color.rgb_to_lab(level_y.clamp(0, 1))
        total = total + _sliced_wasserstein(lab_x, lab_y, directions)
    return total / num_scales


__all__ = [
    "DEFAULT_NUM_PROJECTIONS",
    "DEFAULT_NUM_SCALES",
    "DEFAULT_PATCH_SIZE",
    "DEFAULT_SEED",
    "gaussian_pyramid",
    "ms_swd",
]
