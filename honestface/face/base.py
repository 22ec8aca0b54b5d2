"""The small interfaces every face-analysis backend implements.

Images follow the library convention: (B, 3, H, W) float RGB in [0, 1]. Landmarks are
(B, 68, 2) float pixel coordinates (x, y) in the 68-point iBUG order. A backend that
finds no face in an image returns NaN landmarks for that batch element (callers decide
whether that is an error: see :func:`require_landmarks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import NoFaceError


@dataclass
class FaceDetection:
    """One face found in a whole photo."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float
    landmarks: np.ndarray | None = None  # (68, 2) or (5, 2) pixel coordinates (x, y)
    extra: dict = field(default_factory=dict)


@runtime_checkable
class LandmarkBackend(Protocol):
    """68-point landmarks and their heatmaps."""

    name: str

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 68, 2) pixel coordinates; NaN where no face."""

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 68, H, W) non-negative heatmaps, one per landmark."""


@runtime_checkable
class IdentityBackend(Protocol):
    """A face recogniser: aligned faces -> identity embeddings."""

    name: str
    embedding_dim: int

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) aligned faces in [0, 1] -> (B, embedding_dim) embeddings."""


@runtime_checkable
class FaceDetector(Protocol):
    """Finds every face in a whole photo."""

    name: str

    def detect(self, image: torch.Tensor) -> list[FaceDetection]:
        """(3, H, W) in [0, 1] -> faces, largest first."""


def require_landmarks(landmarks: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Raise :class:`NoFaceError` naming the batch elements whose landmarks are NaN."""
    missing = torch.isnan(landmarks).flatten(1).any(dim=1)
    if missing.any():
        indices = missing.nonzero().flatten().tolist()
        raise NoFaceError(f"no face landmarks found in {what} at batch index {indices}")
    return landmarks
