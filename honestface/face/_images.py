"""Small conversions between the library's image tensors and what face libraries take."""

from __future__ import annotations

import numpy as np
import torch

from ..image_io import check_image_batch


def to_uint8_hwc(images: torch.Tensor, name: str = "images") -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) in [0, 1] (or uint8, taken as it is) -> (B, H, W, 3) uint8
    RGB numpy array (contiguous)."""
    images = check_image_batch(images, name)
    if images.dtype == torch.uint8:
        return np.ascontiguousarray(images.detach().permute(0, 2, 3, 1).cpu().numpy())
    array = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(0, 2, 3, 1).cpu().numpy())


def upscale_factor(height: int, width: int, min_side: int) -> float:
    """Factor (>= 1) that brings the longer side of a small image up to ``min_side``."""
    longer = max(height, width)
    return max(1.0, float(min_side) / float(longer)) if min_side else 1.0
