"""Evaluation metrics: landmark distances (A-LD, L2-LD), identity angle, image quality."""

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

__all__ = [
    "ALD_ALL",
    "ALD_EYES",
    "ALD_MOUTH",
    "AffineLandmarkDistance",
    "DegenerateLandmarksError",
    "LandmarkError",
    "affine_landmark_distance",
    "ald_eyes",
    "ald_mouth",
    "fit_affine",
    "l2_landmark_distance",
]
