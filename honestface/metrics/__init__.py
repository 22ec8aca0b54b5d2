"""Evaluation metrics: landmark distances (A-LD, L2-LD), identity angle, image quality.

- :mod:`.landmark`: A-LD (Eq. 14-15), ALD-e / ALD-m, L2-LD (numpy and torch, batched).
- :mod:`.identity`: Deg., the angle between identity embeddings.
- :mod:`.pixel`: PSNR, SSIM. :mod:`.color`: MS-SWD colour distance.
- :mod:`.iqa`: LPIPS, DISTS, CLIP-IQA, MANIQA, MUSIQ, FID through pyiqa, offline only.
- :mod:`.registry`: names, table columns and directions.

Pure functions on tensors and arrays: this package imports nothing of ``honestface`` but
``errors`` and ``paths``. Scoring folders and test sets with the face backends and the
pipeline lives above it, in :mod:`honestface.evaluation`.
"""

from .color import ms_swd
from .identity import identity_angle_degrees
from .landmark import (
    ALD_ALL,
    ALD_EYES,
    ALD_MOUTH,
    AffineLandmarkDistance,
    DegenerateLandmarksError,
    LandmarkError,
    affine_landmark_distance,
    ald_eyes,
    ald_mouth,
    fit_affine,
    l2_landmark_distance,
)
from .pixel import psnr, ssim
from .registry import EVALUATE_METRICS, METRICS, SCORE_METRICS, TABLE1_METRICS, MetricSpec, MetricStatus

__all__ = [
    "ALD_ALL",
    "ALD_EYES",
    "ALD_MOUTH",
    "EVALUATE_METRICS",
    "METRICS",
    "SCORE_METRICS",
    "TABLE1_METRICS",
    "AffineLandmarkDistance",
    "DegenerateLandmarksError",
    "LandmarkError",
    "MetricSpec",
    "MetricStatus",
    "affine_landmark_distance",
    "ald_eyes",
    "ald_mouth",
    "fit_affine",
    "identity_angle_degrees",
    "l2_landmark_distance",
    "ms_swd",
    "psnr",
    "ssim",
]
