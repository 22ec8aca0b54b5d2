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

A degraded aligned crop (blurred, shrunk, noisy, JPEG) often has no face the detector finds
at its usual threshold, and would pass through as "photo (no face found)". For a square
image without a detected face a second look asks whether it *looks like* an aligned crop
(:func:`aligned_face_evidence`): dlib's HOG detector, run with a lowered threshold on a
copy brought to :data:`EVIDENCE_SIDE` px, must find a (weak) face whose box overlaps the
box where faces sit in aligned crops (``ALIGNED_FACE_BOX``) by an IoU of at least
:data:`EVIDENCE_IOU` with a score of at least :data:`WEAK_FACE_SCORE`, and the 68 points
fitted in that box must fit the FFHQ template within the tolerance. Only images without a
detected face take this path, so the photo decisions above stay as they were for every
photo with a face. ``WEAK_FACE_SCORE`` was chosen on 12 CelebA identities and 12 LFW
people (``benchmarks/measure_photo_thresholds.py crops --split tune``); on 40 other
identities and 40 other LFW people (``--split report``), degraded crops at 128, 256 and
512 px (moderate and heavy) are taken for crops 216 / 240 times (90.0 %; 121 / 240 by the
detector alone), no LFW photo is (README, "Face analysis").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..errors import ImageError
from ..image_io import MIN_IMAGE_SIDE
from .align import alignment_affine, transform_points
from .base import FaceDetector, LandmarkBackend

#: Largest alignment error (fraction of the side, see the module doc) of an aligned crop.
ALIGNED_TOLERANCE = 0.10

#: Side (px) of the copy a square image without a detected face is searched again at.
EVIDENCE_SIDE = 320
#: Lowest HOG score (dlib's detection threshold is 0) of the weak face of a degraded crop.
WEAK_FACE_SCORE = -1.5
#: Least overlap (IoU) of that face's box with the aligned-crop face box.
EVIDENCE_IOU = 0.5
#: Largest alignment error of the 68 points fitted in the aligned face box (second look).
EVIDENCE_TOLERANCE = 0.12
#: A detected face whose landmarks are a little off the template (error up to
#: DETECTED_TOLERANCE) still makes an aligned crop when its box overlaps the aligned-crop
#: face box by at least DETECTED_BOX_IOU: the face is where and as large as in an aligned
#: crop, only its landmarks (fitted on a blurred face) are imprecise.
DETECTED_BOX_IOU = 0.55
DETECTED_TOLERANCE = 0.15


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


@dataclass
class AlignedFaceEvidence:
    """What :func:`aligned_face_evidence` saw in a square image."""

    score: float  # best HOG score of a box overlapping the aligned face box (-inf: none)
    iou: float  # that box's IoU with the aligned face box (0: none)
    error: float  # alignment error of the 68 points fitted in the aligned face box
    candidates: list[tuple[float, float]] = field(default_factory=list)  # (score, IoU) of every weak face


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def aligned_box_iou(box, side: int) -> float:
    """IoU of a face box (x0, y0, x1, y1, pixels of a ``side`` px square image) with the box
    where faces sit in aligned crops (:data:`~honestface.face.dlib_backend.ALIGNED_FACE_BOX`)."""
    from .dlib_backend import _aligned_box

    return _iou(tuple(float(v) for v in box), _aligned_box(side, side))


def aligned_face_evidence(image: torch.Tensor, floor: float = -2.5,
                          min_iou: float | None = None) -> AlignedFaceEvidence:
    """Does a square (3, H, W) image (float in [0, 1] or uint8) look like an aligned face crop?

    dlib's HOG detector runs on a copy brought to :data:`EVIDENCE_SIDE` px with its
    threshold lowered to ``floor``; of the boxes it returns, those overlapping the aligned
    face box (:data:`~honestface.face.dlib_backend.ALIGNED_FACE_BOX`) by IoU >= ``min_iou``
    (default :data:`EVIDENCE_IOU`) count, and the best score among them is reported
    (``candidates`` lists the score and IoU of every box returned). The 68 points are fitted
    in the aligned face box (as training does for its aligned crops) and their
    :func:`alignment_error` is reported too.
    """
    import cv2

    from ._images import to_uint8_hwc
    from .dlib_backend import LANDMARKS_68_FILE, _aligned_box, _load, dlib_model_file, fit_shape

    min_iou = EVIDENCE_IOU if min_iou is None else min_iou
    array = to_uint8_hwc(image, "image")[0]
    side = array.shape[0]
    work = array if side == EVIDENCE_SIDE else cv2.resize(
        array, (EVIDENCE_SIDE, EVIDENCE_SIDE), interpolation=cv2.INTER_AREA if side > EVIDENCE_SIDE else cv2.INTER_CUBIC)
    rects, scores, _ = _load("hog", "").run(work, 1, float(floor))
    target = _aligned_box(EVIDENCE_SIDE, EVIDENCE_SIDE)
    candidates = [(float(score), _iou((rect.left(), rect.top(), rect.right(), rect.bottom()), target))
                  for rect, score in zip(rects, scores)]
    best, best_iou = float("-inf"), 0.0
    for score, overlap in candidates:
        if overlap >= min_iou and score > best:
            best, best_iou = score, overlap
    points = fit_shape(_load("shape", str(dlib_model_file(LANDMARKS_68_FILE))), array, _aligned_box(side, side))
    return AlignedFaceEvidence(best, best_iou, alignment_error(points, side), candidates)


def classify_input(image: torch.Tensor, detector: FaceDetector, landmark_backend: LandmarkBackend | None = None,
                   tolerance: float = ALIGNED_TOLERANCE) -> InputKind:
    """Aligned crop or photo, for one (3, H, W) image in [0, 1].

    Aligned iff the image is square and the landmarks of its largest detected face fit the
    FFHQ alignment template within ``tolerance`` (:func:`alignment_error`), or within
    :data:`DETECTED_TOLERANCE` when that face's box is where aligned crops have it
    (IoU >= :data:`DETECTED_BOX_IOU`); a square image without a detected face is aligned
    when it looks like a degraded aligned crop (:func:`aligned_face_evidence`, see the
    module doc; its error must be within :data:`EVIDENCE_TOLERANCE`). Both looser
    tolerances scale with ``tolerance`` (they are stated for :data:`ALIGNED_TOLERANCE`).
    ``image`` may be uint8. ``landmark_backend`` refines the detector's landmarks (as in
    whole-photo restoration).
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
        evidence = aligned_face_evidence(image)
        fits = evidence.error <= tolerance * EVIDENCE_TOLERANCE / ALIGNED_TOLERANCE
        if evidence.score >= WEAK_FACE_SCORE and fits:
            return InputKind("aligned", f"square, no sharp face but a weak one where aligned crops have it "
                                        f"(score {evidence.score:.2f}, error {evidence.error:.2f})", evidence.error)
        return InputKind("photo", "no face found", None)
    error = alignment_error(faces[0].landmarks, width)
    if error <= tolerance:
        return InputKind("aligned", f"square, landmarks fit the FFHQ template (error {error:.2f})", error)
    near = error <= tolerance * DETECTED_TOLERANCE / ALIGNED_TOLERANCE
    if near and aligned_box_iou(faces[0].box, width) >= DETECTED_BOX_IOU:
        return InputKind("aligned", f"square, the face box is the aligned one and its landmarks nearly fit "
                                    f"the FFHQ template (error {error:.2f})", error)
    return InputKind("photo", f"landmarks off the FFHQ template (error {error:.2f})", error)
