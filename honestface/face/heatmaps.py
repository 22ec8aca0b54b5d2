"""Landmark heatmaps rendered as Gaussians at points (the dlib backend's heatmaps).

Batched, vectorised torch code (no Python loop over points): it runs on any device and is
differentiable with respect to the points. Reading points back from FAN's heatmaps is
face-alignment's own decoding (:mod:`~honestface.face.fan`).
"""

from __future__ import annotations

import torch

#: Default Gaussian width as a fraction of the heatmap's longer side. 1/64 is one pixel of
#: a 64x64 heatmap, the resolution FAN predicts at.
DEFAULT_SIGMA_FRACTION = 1.0 / 64.0


def render_gaussian_heatmaps(points: torch.Tensor, height: int, width: int,
                             sigma: float | None = None) -> torch.Tensor:
    """Render one unnormalised Gaussian per point.

    Args:
        points: (B, N, 2) pixel coordinates (x, y) on a ``height`` x ``width`` grid
            (pixel centres at integer coordinates). NaN points give all-zero maps.
        height, width: heatmap size in pixels.
        sigma: standard deviation in pixels; default ``max(height, width) / 64``.

    Returns:
        (B, N, height, width) maps with peak value 1 at each point:
        ``exp(-((x - px)^2 + (y - py)^2) / (2 sigma^2))``.
    """
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (B, N, 2), got {tuple(points.shape)}")
    if sigma is None:
        sigma = max(height, width) * DEFAULT_SIGMA_FRACTION
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    dtype = points.dtype if points.is_floating_point() else torch.float32
    valid = torch.isfinite(points).all(dim=-1)  # (B, N)
    safe = torch.where(valid[..., None], points.to(dtype), torch.zeros((), dtype=dtype, device=points.device))
    xs = torch.arange(width, dtype=dtype, device=points.device)
    ys = torch.arange(height, dtype=dtype, device=points.device)
    # Separable Gaussian: exp(-dx^2) (row) times exp(-dy^2) (column).
    gx = torch.exp(-((xs - safe[..., 0:1]) ** 2) / (2.0 * sigma**2))  # (B, N, W)
    gy = torch.exp(-((ys - safe[..., 1:2]) ** 2) / (2.0 * sigma**2))  # (B, N, H)
    maps = gy[..., :, None] * gx[..., None, :]
    return maps * valid[..., None, None].to(dtype)
