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

A degraded aligned crop (blurred, shrunk, noisy, JPEG) often has no face the detector finds,
or one whose landmarks it fits badly, and would pass through as "photo (no face found)" or
be restored as a photo. For a square image without a detected face, and for one whose
detected face is off the template by at most :data:`CLASSIFIED_ERROR`, a second look asks a
small network whether the image is framed like an aligned face crop
(:mod:`honestface.face.crop_classifier`: a 32 px grey thumbnail, trained on CelebA crops and
LFW photos of people the benchmark below never uses, degraded by the training degradation).
At a probability of at least :data:`CROP_PROBABILITY` it is an aligned crop. A photo whose
face is further off than :data:`CLASSIFIED_ERROR` (95 % of LFW photos are more than 0.24
off) is decided by the first rule alone. Of the 300 LFW photos above the classifier takes
one more for a crop (a tight close-up 0.11 off the template), and 4 more of the 300 CelebA
crops and the 1 real crop the first rule missed.

The two constants were chosen with ``benchmarks/measure_photo_thresholds.py crops --split
tune``: 40 CelebA identities (even-numbered), their first crop degraded at two levels at
128, 256 and 512 px by a degradation written in the benchmark (240 crops that should be
taken), and 1117 square images that are not aligned crops, made from 40 LFW people
(even-numbered): the photos degraded the same way at 128, 250 and 512 px, squares around
their face at other scales (face 90, 30, 20 % of what it fills in an aligned crop) or
shifted by 25 % of the side, clean and degraded, 100 px background corners of the photos
enlarged, and flat, gradient and noise squares. Held out (``--split report``, the
odd-numbered identities and people), the rule takes 223 / 240 crops (92.9 %) and
1 / 1117 non-crops (0.1 %); tune: 236 / 240 (98.3 %) and 2 / 1117. The earlier second look,
dlib's HOG detector run at a lowered threshold on the aligned face box, took 209 / 240
(87.1 %) and 14 / 1117 (1.3 %) there: a HOG "face" at a low score turns up in background
texture and degraded photos, and a 16 px face gives HOG nothing at all. A photo restored
as if it were an aligned face is the worse mistake (a crop missed passes through unchanged,
or is restored as a photo), which is why the threshold is high.
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
from .crop_classifier import LoadedCropClassifier, shipped_crop_classifier

#: Largest alignment error (fraction of the side, see the module doc) of an aligned crop.
ALIGNED_TOLERANCE = 0.10

#: Least probability of the aligned-crop classifier (:mod:`.crop_classifier`) for a square
#: image to be taken for an aligned crop without the first rule (module doc).
CROP_PROBABILITY = 0.95
#: A detected face whose alignment error exceeds ALIGNED_TOLERANCE but not this is still an
#: aligned crop when the classifier says so. Both chosen on the tune split (module doc).
CLASSIFIED_ERROR = 0.2


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
                   tolerance: float = ALIGNED_TOLERANCE,
                   crop_classifier: LoadedCropClassifier | None = None) -> InputKind:
    """Aligned crop or photo, for one (3, H, W) image in [0, 1] (or uint8).

    Aligned iff the image is square and the landmarks of its largest detected face fit the
    FFHQ alignment template within ``tolerance`` (:func:`alignment_error`), or, for a square
    image without a detected face or whose face fits within :data:`CLASSIFIED_ERROR`, the
    aligned-crop classifier (default: the shipped one) gives at least
    :data:`CROP_PROBABILITY` (see the module doc). ``landmark_backend`` refines the
    detector's landmarks (as in whole-photo restoration).
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
    error = alignment_error(faces[0].landmarks, width) if faces else None
    if error is not None and error <= tolerance:
        return InputKind("aligned", f"square, landmarks fit the FFHQ template (error {error:.2f})", error)
    if error is None or error <= CLASSIFIED_ERROR:
        probability = float((crop_classifier or shipped_crop_classifier()).probability(image))
        if probability >= CROP_PROBABILITY:
            seen = "no face detected" if error is None else f"landmarks {error:.2f} off the template"
            return InputKind("aligned", f"square, {seen}, but framed like an aligned crop "
                                        f"(crop classifier {probability:.2f})", error)
    if error is None:
        return InputKind("photo", "no face found", None)
    return InputKind("photo", f"landmarks off the FFHQ template (error {error:.2f})", error)
