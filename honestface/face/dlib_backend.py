"""dlib backends: HOG / MMOD face detection, 68-point landmarks, 128-d face descriptors.

The model files come with the ``face_recognition_models`` package (pip), so these
backends work offline without anything the user has to place. That package imports
``pkg_resources`` at import time, which recent setuptools no longer provides, so its
folder is located with :func:`importlib.util.find_spec` and never imported. The same
files may also be put in ``<models>/dlib/`` (where cubiq's FaceAnalysis and LivePortrait
keep them).

dlib works on uint8 RGB arrays; coordinates are dlib's integer pixel positions.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import HonestFaceError, MissingModelFileError
from ..paths import find_model_file
from ._images import to_uint8_hwc, upscale_factor
from .base import FaceDetection
from .heatmaps import render_gaussian_heatmaps

LANDMARKS_68_FILE = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_5_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MMOD_DETECTOR_FILE = "mmod_human_face_detector.dat"

#: Where dlib's HOG detector puts the face box in an FFHQ-style aligned crop, as
#: fractions of the crop size (x0, y0, x1, y1), measured on real aligned faces. Used to
#: fit landmarks on aligned crops where the detector fails (heavy degradation).
ALIGNED_FACE_BOX = (0.20, 0.29, 0.79, 0.87)

#: Images whose longer side is below this are upscaled before detection so that small
#: faces (down to about 20 pixels) are still found; landmarks are scaled back.
MIN_DETECTION_SIDE = 320
#: Larger photos are downscaled to this longer side for detection only (HOG time grows
#: with the pixel count); landmarks are still fitted at full resolution.
MAX_DETECTION_SIDE = 2000


def _import_dlib():
    try:
        import dlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise HonestFaceError("the dlib face backends need the 'dlib-bin' package (pip install dlib-bin)") from error
    return dlib


def packaged_models_folder() -> Path | None:
    """``face_recognition_models/models`` inside site-packages, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_model_file(filename: str, models_dir: str | Path | None = None) -> Path:
    """Path of one dlib model file: the models folder first, then the pip package.

    Raises:
        MissingModelFileError: naming the file and where it belongs.
    """
    packaged = packaged_models_folder()
    extra = [packaged] if packaged is not None else []
    try:
        return find_model_file("dlib", filename, models_dir=models_dir, extra=extra,
                               what="dlib face model")
    except MissingModelFileError as error:
        raise MissingModelFileError(
            filename, error.folder, "dlib face model",
            "Install the 'face_recognition_models' package (pip) or put the file there.") from None


@functools.lru_cache(maxsize=8)
def _load(kind: str, path: str):
    """Load a dlib model once per process (the 68-point predictor is ~100 MB)."""
    dlib = _import_dlib()
    try:
        if kind == "shape":
            return dlib.shape_predictor(path)
        if kind == "descriptor":
            return dlib.face_recognition_model_v1(path)
        if kind == "mmod":
            return dlib.cnn_face_detection_model_v1(path)
        if kind == "hog":
            return dlib.get_frontal_face_detector()
    except RuntimeError as error:
        from ..errors import CheckpointError
        raise CheckpointError(path, f"dlib cannot read this model file: {error}") from error
    raise ValueError(kind)


class DlibFaceDetector:
    """Every face in a photo with dlib's HOG (default) or MMOD CNN detector, plus 68 points.

    Args:
        models_dir: models root (ComfyUI layout); the pip package is used otherwise.
        model: "hog" (fast, frontal faces) or "mmod" (CNN, slower, more poses).
        upsample: how many times dlib upsamples the image before detecting.
        min_side: small images are first upscaled so their longer side is this long.
        max_side: large images are downscaled to this longer side for detection.
        with_landmarks: fit the 68-point predictor to every detected box.
    """

    name = "dlib"

    def __init__(self, models_dir: str | Path | None = None, model: str = "hog", upsample: int = 1,
                 min_side: int = MIN_DETECTION_SIDE, with_landmarks: bool = True,
                 max_side: int = MAX_DETECTION_SIDE) -> None:
        if model not in ("hog", "mmod"):
            raise HonestFaceError(f"unknown dlib detector '{model}'; use 'hog' or 'mmod'")
        self.model = model
        self.upsample = int(upsample)
        self.min_side = int(min_side)
        self.max_side = int(max_side)
        self.with_landmarks = with_landmarks
        path = "" if model == "hog" else str(dlib_model_file(MMOD_DETECTOR_FILE, models_dir))
        self._detector = _load(model, path)
        self._predictor = _load("shape", str(dlib_model_file(LANDMARKS_68_FILE, models_dir))) if with_landmarks else None

    def _boxes(self, array: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes (x0, y0, x1, y1) and scores in ``array``'s pixel coordinates."""
        import cv2

        height, width = array.shape[:2]
        factor = upscale_factor(height, width, self.min_side)
        if self.max_side and max(height, width) > self.max_side:
            factor = self.max_side / max(height, width)
        work = array
        if factor > 1.0:
            work = cv2.resize(array, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_CUBIC)
        elif factor < 1.0:
            work = cv2.resize(array, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
        found = []
        if self.model == "hog":
            rects, scores, _ = self._detector.run(work, self.upsample, 0.0)
            for rect, score in zip(rects, scores):
                found.append(((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score)))
        else:
            for det in self._detector(work, self.upsample):
                rect = det.rect
                found.append(((rect.left(), rect.top(), rect.right(), rect.bottom()), float(det.confidence)))
        return [(tuple(float(v) / factor for v in box), score) for box, score in found]

    def fit_landmarks(self, array: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 points (x, y) fitted inside ``box`` of a (H, W, 3) uint8 image."""
        if self._predictor is None:
            self._predictor = _load("shape", str(dlib_model_file(LANDMARKS_68_FILE)))
        return fit_shape(self._predictor, array, box)

    def detect_array(self, array: np.ndarray) -> list[FaceDetection]:
        """Like :meth:`detect` on a (H, W, 3) uint8 RGB array."""
        faces = []
        for box, score in self._boxes(array):
            points = self.fit_landmarks(array, box) if self.with_landmarks else None
            faces.append(FaceDetection(box=box, score=score, landmarks=points, extra={"detector": f"dlib-{self.model}"}))
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces

    def detect(self, image: torch.Tensor) -> list[FaceDetection]:
        """(3, H, W) in [0, 1] -> every face, largest first, each with 68 landmarks."""
        return self.detect_array(to_uint8_hwc(image, "image")[0])


def fit_shape(predictor, array: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Run a dlib shape predictor in ``box``; returns (P, 2) float32 (x, y)."""
    dlib = _import_dlib()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(array, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float32)


def _aligned_box(height: int, width: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = ALIGNED_FACE_BOX
    return (x0 * width, y0 * height, x1 * width, y1 * height)


class DlibLandmarks:
    """68-point landmarks from dlib's predictor on the largest detected face.

    Heatmaps are Gaussians rendered at the points (see :func:`render_gaussian_heatmaps`):
    sigma = ``heatmap_sigma`` pixels, default ``max(H, W) / 64`` (8 px at 512).

    Args:
        aligned_fallback: when no face is detected, fit the points in the box where a face
            sits in an FFHQ-style aligned crop (for degraded aligned faces) instead of
            returning NaN. Leave it off for arbitrary photos.
        detect: run the face detector (default). ``False`` fits the points in the aligned
            face box directly: only for FFHQ-style aligned crops, where it skips the HOG
            detector (most of the time per face; training uses it on its aligned crops).
    """

    name = "dlib"

    def __init__(self, models_dir: str | Path | None = None, upsample: int = 1,
                 aligned_fallback: bool = False, heatmap_sigma: float | None = None,
                 detector: DlibFaceDetector | None = None, detect: bool = True) -> None:
        self.detector = detector or DlibFaceDetector(models_dir=models_dir, upsample=upsample, with_landmarks=False)
        self._predictor = _load("shape", str(dlib_model_file(LANDMARKS_68_FILE, models_dir)))
        self.aligned_fallback = aligned_fallback
        self.heatmap_sigma = heatmap_sigma
        self.detect = detect

    def landmarks_array(self, array: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (68, 2) float32 points of the largest face, NaN if none."""
        if not self.detect:
            return fit_shape(self._predictor, array, _aligned_box(*array.shape[:2]))
        boxes = self.detector._boxes(array)
        if boxes:
            box = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
        elif self.aligned_fallback:
            box = _aligned_box(*array.shape[:2])
        else:
            return np.full((68, 2), np.nan, dtype=np.float32)
        return fit_shape(self._predictor, array, box)

    def landmarks_in_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(3, H, W) photo and (K, 4) face boxes (x0, y0, x1, y1) -> (K, 68, 2) points."""
        array = to_uint8_hwc(image)[0]
        points = [fit_shape(self._predictor, array, tuple(float(v) for v in box)) for box in boxes.tolist()]
        return torch.from_numpy(np.stack(points)) if points else torch.zeros(0, 68, 2)

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 68, 2) pixel (x, y); NaN rows where no face."""
        arrays = to_uint8_hwc(images)
        points = np.stack([self.landmarks_array(a) for a in arrays])
        return torch.from_numpy(points).to(images.device)

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 68, H, W) Gaussians at the landmarks (zeros where no face)."""
        points = self.landmarks(images)
        height, width = images.shape[-2:]
        return render_gaussian_heatmaps(points.float(), height, width, self.heatmap_sigma)


class DlibIdentity:
    """dlib's 128-d face descriptor (ResNet, trained for Euclidean distance 0.6 = same person).

    Faces are found with the HOG detector; when none is found and ``aligned_fallback`` is
    on (default: inputs are aligned crops by contract) the FFHQ face box is used. The
    68 points fitted in the box drive dlib's own 150x150 chip alignment. Not differentiable.
    Rows are NaN only for images without a face when ``aligned_fallback`` is off.
    """

    name = "dlib"
    embedding_dim = 128

    def __init__(self, models_dir: str | Path | None = None, num_jitters: int = 0,
                 aligned_fallback: bool = True, landmarks: DlibLandmarks | None = None) -> None:
        self._landmarks = landmarks or DlibLandmarks(models_dir=models_dir, aligned_fallback=aligned_fallback)
        self._descriptor = _load("descriptor", str(dlib_model_file(DESCRIPTOR_FILE, models_dir)))
        self.num_jitters = int(num_jitters)
        self.aligned_fallback = aligned_fallback

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) aligned faces in [0, 1] -> (B, 128) descriptors."""
        dlib = _import_dlib()
        arrays = to_uint8_hwc(images)
        rows = []
        for array in arrays:
            boxes = self._landmarks.detector._boxes(array)
            if boxes:
                box = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
            elif self.aligned_fallback:
                box = _aligned_box(*array.shape[:2])
            else:
                rows.append(np.full(128, np.nan, dtype=np.float32))
                continue
            shape = self._landmarks._predictor(array, dlib.rectangle(*(int(round(v)) for v in box)))
            descriptor = self._descriptor.compute_face_descriptor(array, shape, self.num_jitters)
            rows.append(np.asarray(descriptor, dtype=np.float32))
        return torch.from_numpy(np.stack(rows)).to(images.device)
