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
fitted in that box must fit the FFHQ template within :data:`EVIDENCE_TOLERANCE`. Only
images without a detected face take this path, so every photo with a face is decided by
the first rule alone (the 2 of 300 LFW photos above).

The three constants were chosen with ``benchmarks/measure_photo_thresholds.py crops
--split tune``: 40 CelebA identities (even-numbered), their first crop degraded at two
levels at 128, 256 and 512 px (240 crops that should be taken), and 1117 square images
that are not aligned crops, made from 40 LFW people (even-numbered): the photos degraded
the same way at 128, 250 and 512 px, squares around their face at other scales (face 90,
30, 20 % of what it fills in an aligned crop) or shifted by 25 % of the side, clean and
degraded, 100 px background corners of the photos enlarged, and flat, gradient and noise
squares. The earlier second look (IoU 0.3, score -2.0, fitted error 0.10) took 211 / 240
crops there, but also 99 / 1117 of those squares: HOG "faces" at a score of -2 turn up in
background texture (46 of 320 corners) and in degraded photos, an IoU of 0.3 still lets a
face shifted by a quarter of the side through, and the 68 points fitted in a box of
background keep about the predictor's mean shape, so their error says little there.
Asking for the weak face on the aligned box (IoU 0.5) removes most of them (94 -> 14 at
score -1.5); at that IoU the score -1.5 and the fitted error 0.12 are where the sweep
stops buying crops cheaply (tune: score -2.0 +2 crops / +11 squares, error 0.15 +1 / +4).
Tune: 200 / 240 crops (83.3 %), 14 / 1117 squares (1.3 %). Held out (``--split report``, the odd-numbered identities and people):
209 / 240 crops (87.1 %; the earlier rule 216, 90.0 %) and 14 / 1117 squares (1.3 %; the
earlier rule 80, 7.2 %). A photo restored as if it were an aligned face is the worse
mistake (a crop missed passes through unchanged), so a few crops were traded for about
five times fewer such photos. The 98 % aimed at is not reached: most crops still missed
are heavy 128 px faces (about 16 px of detail) on which HOG finds nothing on the aligned
box, and crops whose detected face gets landmarks 0.10 - 0.20 off the template. Two
other looks were measured and left out: accepting a detected face whose box sits on the
aligned box (IoU >= 0.55) with an error up to 0.15 / 0.20 took 4 / 7 more tune crops but
also 2 / 3 more of the 300 LFW photos of the first rule (tight close-ups); correlating the
image at 16 px grey (the aligned face box) with a mean aligned face (from CelebA identities
of neither split; measured once on the tune split, not kept) does not separate them: 5 %
of the degraded crops correlate below -0.1, while the top 0.5 % of the squares reach 0.69,
above the crops' median (0.66).
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
#: Least overlap (IoU) of that face's box with the aligned-crop face box. Largest alignment
#: error of the 68 points fitted in the aligned face box. All three chosen on the tune split
#: of ``benchmarks/measure_photo_thresholds.py crops`` against square non-crops (module doc).
WEAK_FACE_SCORE = -1.5
EVIDENCE_IOU = 0.5
EVIDENCE_TOLERANCE = 0.12


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
    FFHQ alignment template within ``tolerance`` (:func:`alignment_error`); a square image
    without a detected face is aligned when it looks like a degraded aligned crop
    (:func:`aligned_face_evidence`, see the module doc; the points fitted in the aligned
    face box must fit within :data:`EVIDENCE_TOLERANCE`, which scales with ``tolerance``: it
    is stated for :data:`ALIGNED_TOLERANCE`).
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
    return InputKind("photo", f"landmarks off the FFHQ template (error {error:.2f})", error)
