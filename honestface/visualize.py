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


def text_image(lines: Sequence[str], width: int, height: int, font_size: int,
               color: tuple[int, int, int] = (20, 20, 20), background: float = 1.0,
               align: str = "center") -> torch.Tensor:
    """Lines of text rendered on a plain (3, height, width) tile in [0, 1] (Pillow's own font).

    Each line is centred (``align="center"``) or left-aligned, top to bottom; lines that do
    not fit in ``height`` are left out.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    shade = round(255 * background)
    canvas = Image.new("RGB", (width, height), (shade, shade, shade))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_size)
    line_height = round(font_size * 1.25)
    for index, line in enumerate(lines):
        top = index * line_height + 2
        if top + line_height > height + 2:
            break
        left = (width - font.getlength(line)) / 2 if align == "center" else 4
        draw.text((max(0.0, left), top), line, fill=color, font=font)
    array = np.asarray(canvas, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def wrap_text(text: str, width: int, font_size: int, max_lines: int = 2) -> list[str]:
    """Break ``text`` into lines of at most ``width`` pixels in Pillow's own font.

    Words go to the next line as needed; a word wider than the line stays whole, and text
    beyond ``max_lines`` lines is shortened with an ellipsis.
    """
    from PIL import ImageFont

    font = ImageFont.load_default(size=font_size)
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        last = " ".join(lines[max_lines - 1:])
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last.rstrip() + "…"]
    return lines


def contact_sheet(rows: Sequence[Sequence[torch.Tensor]], size: int, gap: int = 4,
                  background: float = 1.0, labels: Sequence[Sequence[str]] | None = None,
                  row_titles: Sequence[str] | None = None, font_size: int | None = None) -> torch.Tensor:
    """Tile images into a grid, optionally with a caption under every tile and a title over every row.

    Args:
        rows: rows of (3, H, W) images in [0, 1]; each is resized to ``size`` x ``size``.
        size: side of every tile in pixels. gap: pixels between tiles.
        labels: one caption per tile (same shape as ``rows``), wrapped to two lines under it.
        row_titles: one line of text above each row (left-aligned).
        font_size: text height in pixels (default ``size // 14``, at least 10).
    Returns:
        (3, H_total, W_total) image in [0, 1].
    """
    from .image_io import resize_to

    font_size = font_size or max(10, size // 14)
    line_height = round(font_size * 1.25)
    caption_height = 2 * line_height + 6 if labels is not None else 0
    title_height = line_height + 6 if row_titles is not None else 0
    row_height = title_height + size + caption_height
    columns = max(len(row) for row in rows)
    height = len(rows) * row_height + (len(rows) + 1) * gap
    width = columns * size + (columns + 1) * gap
    sheet = torch.full((3, height, width), float(background))
    for r, row in enumerate(rows):
        top = gap + r * (row_height + gap)
        if row_titles is not None:
            title = text_image([row_titles[r]], width - 2 * gap, title_height, font_size, background=background,
                               align="left")
            sheet[:, top:top + title_height, gap:width - gap] = title
        for c, tile in enumerate(row):
            tile = resize_to(tile.float().unsqueeze(0).clamp(0, 1), size)[0]
            y, x = top + title_height, gap + c * (size + gap)
            sheet[:, y:y + size, x:x + size] = tile
            if labels is not None:
                caption = text_image(wrap_text(labels[r][c], size - 4, font_size), size, caption_height, font_size,
                                     background=background)
                sheet[:, y + size:y + size + caption_height, x:x + size] = caption
    return sheet
