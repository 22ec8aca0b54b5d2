"""Face analysis: landmarks and heatmaps, identity embeddings, detection and alignment."""

from .base import FaceDetection, FaceDetector, IdentityBackend, LandmarkBackend, require_landmarks

__all__ = ["FaceDetection", "FaceDetector", "IdentityBackend", "LandmarkBackend", "require_landmarks"]
