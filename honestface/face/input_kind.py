"""Is an image an aligned face crop or a photo? Decided by looking at the face.

An FFHQ-aligned crop is exactly the image the FFHQ alignment would cut from itself: the
alignment transform computed from its own landmarks, for its own size, is close to the
identity. Anything else (not square, no face, a face elsewhere or at another scale) is a
photo, restored by finding its faces. The shape of the image alone says nothing: a 250 x 250
news photo is square too.

The error is the largest distance, over the four image corners, between a corner and where
the alignment transform sends it, as a fraction of the image side. Measured with dlib
(HOG + 68 points) on 300 random LFW 250 x 250 photos, 300 random CelebA 256 aligned crops
and the 35 real low-quality 512 crops (README, "Face analysis"): aligned crops have a median
error of 0.011 (95th percentile 0.043 / 0.073), LFW photos 0.41 (1st percentile 0.15).
At the tolerance 0.10: 2 of 300 LFW photos (0.7 %, tight close-ups) are taken for aligned
crops; 6 of 300 CelebA crops (2.0 %: one without a detected face, two where dlib fits
another face or a profile) and 1 of 35 real crops (2.9 %) are taken for photos. That
error is the cheap one: a crop taken for a photo still has its face found, aligned and
restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import ImageError
from ..image_io import MIN_IMAGE_SIDE
from .align import alignment_affine, transform_points
from .base import FaceDetector, LandmarkBackend

#: Largest alignment error (fraction of the side, see the module doc) of an aligned crop.
ALIGNED_TOLERANCE = 0.10


@dataclass
class InputKind:
    """What :func:`classify_input` decided, and why."""

    kind: Literal["aligned", "photo"]
    reason: str  # a short phrase for the user
    error: float | None  # alignment error (fraction of the side); None when not measured


def alignment_error(landmarks, size: int) -> float:
    """How far the FFHQ alignment of a ``size`` x ``size`` image with these (68|5, 2)
    landmarks is from the identity: largest corner displacement / size."""
    matrix = alignment_affine(torch.as_tensor(np.asarray(landmarks, np.float32)), size)
    corners = torch.tensor([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0], [size - 1.0, size - 1.0]])
    moved = transform_points(corners, matrix)
    return float((moved - corners).norm(dim=-1).max()) / size


def classify_input(image: torch.Tensor, detector: FaceDetector, landmark_backend: LandmarkBackend | None = None,
                   tolerance: float = ALIGNED_TOLERANCE) -> InputKind:
    """Aligned crop or photo, for one (3, H, W) image in [0, 1].

    Aligned iff the image is square and the landmarks of its largest detected face fit the
    FFHQ alignment template within ``tolerance`` (:func:`alignment_error`).
    ``landmark_backend`` refines the detector's landmarks (as in whole-photo restoration).
    """
    from .photo import detect_photo_faces

    if not torch.is_tensor(image) or image.dim() != 3:
        raise ImageError(f"classify_input takes one (3, H, W) image, got {getattr(image, 'shape', type(image))}")
    height, width = image.shape[-2:]
    if min(height, width) < MIN_IMAGE_SIDE:
        return InputKind("photo", f"too small to hold a face ({width}x{height})", None)
    if height != width:
        return InputKind("photo", f"not square ({width}x{height})", None)
    faces = [f for f in detect_photo_faces(image, detector, landmark_backend) if f.landmarks is not None]
    if not faces:
        return InputKind("photo", "no face found", None)
    error = alignment_error(faces[0].landmarks, width)
    if error <= tolerance:
        return InputKind("aligned", f"square, landmarks fit the FFHQ template (error {error:.2f})", error)
    return InputKind("photo", f"landmarks off the FFHQ template (error {error:.2f})", error)
