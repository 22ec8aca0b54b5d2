"""Face analysis: landmarks and heatmaps, identity embeddings, detection and alignment.

Backends are picked by name through three factories; heavy optional libraries (dlib,
insightface, face_alignment) are imported only when a backend that needs them is built.
Model files are found in the ComfyUI-style models folder (:mod:`honestface.paths`);
a missing file raises :class:`~honestface.errors.MissingModelFileError`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HonestFaceError
from .align import align_face, paste_back
from .base import (
    FaceDetection,
    FaceDetector,
    IdentityBackend,
    LandmarkBackend,
    require_landmarks,
)
from .crop_classifier import AlignedCropClassifier, load_crop_classifier
from .input_kind import ALIGNED_TOLERANCE, CROP_PROBABILITY, InputKind, classify_input
from .photo import (
    FaceSelection,
    PasteMask,
    PhotoFace,
    detect_photo_faces,
    paste_mask,
    restore_faces_in_photo,
)
from .references import ReferencePhotos, align_reference_photos

LANDMARK_BACKENDS = ("dlib", "fan")
IDENTITY_BACKENDS = ("dlib", "dlib-torch", "arcface-onnx", "arcface-torch", "adaface")
FACE_DETECTORS = ("dlib", "insightface")


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> HonestFaceError:
    return HonestFaceError(f"unknown {kind} backend '{name}'; choose one of: {', '.join(known)}")


def load_landmark_backend(name: str = "dlib", models_dir: str | Path | None = None,
                          device: str = "cpu", **kw) -> LandmarkBackend:
    """A 68-point landmark backend.

    Names:
        "dlib": dlib's predictor (offline, weights from the ``face_recognition_models``
            package); keywords of :class:`~honestface.face.dlib_backend.DlibLandmarks`.
        "fan": face-alignment's 2D FAN from ``<models>/face_alignment/``; keywords of
            :func:`~honestface.face.fan.load_fan_landmarks`.
    """
    if name == "dlib":
        from .dlib_backend import DlibLandmarks
        return DlibLandmarks(models_dir=models_dir, **kw)
    if name == "fan":
        from .fan import load_fan_landmarks
        return load_fan_landmarks(models_dir=models_dir, device=device, **kw)
    raise _unknown("landmark", name, LANDMARK_BACKENDS)


def load_identity_backend(name: str = "dlib", models_dir: str | Path | None = None,
                          device: str = "cpu", **kw) -> IdentityBackend:
    """A face-recognition backend: aligned faces -> identity embeddings.

    Names:
        "dlib": dlib's 128-d descriptor (offline), run by dlib with its own alignment.
        "dlib-torch": the same network in PyTorch (offline, batched, differentiable);
            FFHQ-aligned crops are cut to dlib's chip with one fixed transform.
        "arcface-onnx": an ArcFace ONNX file (``<models>/insightface/models/<pack>/``)
            run by insightface's ``ArcFaceONNX``.
        "arcface-torch": the same network in PyTorch (differentiable), from an insightface
            ONNX file or an arcface_torch ``.pth``.
        "adaface": AdaFace IR-50/IR-101 from its ``.ckpt`` (differentiable).
    """
    if name == "dlib":
        from .dlib_backend import DlibIdentity
        return DlibIdentity(models_dir=models_dir, **kw)
    if name == "dlib-torch":
        from .dlib_resnet import load_dlib_identity_torch
        return load_dlib_identity_torch(models_dir=models_dir, device=device, **kw)
    if name == "arcface-onnx":
        from .insightface_models import load_arcface_onnx
        return load_arcface_onnx(models_dir=models_dir, device=device, **kw)
    if name == "arcface-torch":
        from .arcface import load_arcface_torch
        return load_arcface_torch(models_dir=models_dir, device=device, **kw)
    if name == "adaface":
        from .adaface import load_adaface
        return load_adaface(models_dir=models_dir, device=device, **kw)
    raise _unknown("identity", name, IDENTITY_BACKENDS)


def load_face_detector(name: str = "dlib", models_dir: str | Path | None = None,
                       device: str = "cpu", **kw) -> FaceDetector:
    """A whole-photo face detector that also returns 68 landmarks per face.

    Names:
        "dlib": HOG (``model="hog"``, default) or MMOD CNN (``model="mmod"``); 68 landmarks.
        "insightface": insightface's SCRFD/RetinaFace on an ONNX file from
            ``<models>/insightface/models/`` (``model="buffalo_l/det_10g.onnx"`` by default);
            5 landmarks.
    """
    if name == "dlib":
        from .dlib_backend import DlibFaceDetector
        if not kw.get("model"):
            kw.pop("model", None)
        return DlibFaceDetector(models_dir=models_dir, **kw)
    if name == "insightface":
        from .insightface_models import load_insightface_detector
        return load_insightface_detector(models_dir=models_dir, device=device, **kw)
    raise _unknown("face detector", name, FACE_DETECTORS)


__all__ = [
    "ALIGNED_TOLERANCE",
    "CROP_PROBABILITY",
    "FACE_DETECTORS",
    "IDENTITY_BACKENDS",
    "LANDMARK_BACKENDS",
    "AlignedCropClassifier",
    "FaceDetection",
    "FaceDetector",
    "FaceSelection",
    "IdentityBackend",
    "InputKind",
    "LandmarkBackend",
    "PasteMask",
    "PhotoFace",
    "ReferencePhotos",
    "align_face",
    "align_reference_photos",
    "classify_input",
    "detect_photo_faces",
    "load_crop_classifier",
    "load_face_detector",
    "load_identity_backend",
    "load_landmark_backend",
    "paste_back",
    "paste_mask",
    "require_landmarks",
    "restore_faces_in_photo",
]
