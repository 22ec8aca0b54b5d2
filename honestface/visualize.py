"""Drawing helpers for previews, reports and the nodes' preview images (no model logic)."""

from __future__ import annotations

from typing import Sequence

import torch

GREEN = (0.1, 0.95, 0.2)
RED = (1.0, 0.2, 0.15)


def draw_points(images: torch.Tensor, points: torch.Tensor, color: tuple[float, float, float],
                radius: int | None = None) -> torch.Tensor:
    """Mark points as filled squares.

    Args:
        images: (B, 3, H, W) in [0, 1].
        points: (B, N, 2) pixel coordinates (x, y); NaN points are skipped.
        radius: half side of each square in pixels (default: 1/256 of the image side, >= 1).
    Returns:
        (B, 3, H, W) copy with the marks drawn.
    """
    out = images.clone()
    height, width = images.shape[-2:]
    if radius is None:
        radius = max(1, round(max(height, width) / 256))
    ys = torch.arange(height, device=images.device).view(1, 1, height, 1)
    xs = torch.arange(width, device=images.device).view(1, 1, 1, width)
    pts = points.to(images.device, torch.float32)
    finite = torch.isfinite(pts).all(dim=-1)  # (B, N)
    far = torch.full_like(pts[..., 0], -1e6)  # NaN points land outside the image
    px = torch.where(finite, pts[..., 0], far).round().view(*pts.shape[:2], 1, 1)
    py = torch.where(finite, pts[..., 1], far).round().view(*pts.shape[:2], 1, 1)
    hit = ((xs - px).abs() <= radius) & ((ys - py).abs() <= radius)  # (B, N, H, W)
    mask = hit.any(dim=1, keepdim=True)  # (B, 1, H, W)
    tint = torch.tensor(color, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
    return torch.where(mask, tint.expand_as(out), out)


def contact_sheet(rows: Sequence[Sequence[torch.Tensor]], size: int, gap: int = 4,
                  background: float = 1.0) -> torch.Tensor:
    """Tile images into a grid.

    Args:
        rows: rows of (3, H, W) images in [0, 1]; each is resized to ``size`` x ``size``.
        size: side of every tile in pixels. gap: pixels between tiles.
    Returns:
        (3, H_total, W_total) image in [0, 1].
    """
    from .image_io import resize_to

    columns = max(len(row) for row in rows)
    height = len(rows) * size + (len(rows) + 1) * gap
    width = columns * size + (columns + 1) * gap
    sheet = torch.full((3, height, width), float(background))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = resize_to(tile.float().unsqueeze(0).clamp(0, 1), size)[0]
            y, x = gap + r * (size + gap), gap + c * (size + gap)
            sheet[:, y:y + size, x:x + size] = tile
    return sheet
