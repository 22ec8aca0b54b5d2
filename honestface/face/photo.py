"""Restore every face (or chosen faces) of a whole photo with any face-restoration function.

detect -> 68 landmarks -> FFHQ-aligned crop -> ``restore_fn`` -> paste back with a
feathered mask. Generic over ``restore_fn`` so it does not depend on a particular model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import HonestFaceError, ImageError
from ..image_io import check_image_batch
from ..progress import ProgressCallback, report
from .align import align_face, paste_back, transform_points
from .base import FaceDetector, LandmarkBackend

#: A landmark backend sees the detection box enlarged by this factor (square, clipped).
LANDMARK_REGION_SCALE = 2.0


@dataclass
class PhotoFace:
    """What happened to one detected face of a photo."""

    index: int  # position in the detector's list (largest face first)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    score: float
    landmarks: np.ndarray | None  # (68|5, 2) photo pixels used for the alignment
    affine: np.ndarray | None = None  # (2, 3) photo -> crop pixels
    crop: torch.Tensor | None = None  # (3, S, S) aligned input crop
    restored: torch.Tensor | None = None  # (3, S, S) restore_fn output
    skipped: str = ""  # why the face was not restored ("" when it was)
    extra: dict = field(default_factory=dict)

    @property
    def crop_landmarks(self) -> np.ndarray | None:
        """Landmarks in crop pixels."""
        if self.landmarks is None or self.affine is None:
            return None
        return transform_points(torch.from_numpy(self.landmarks).float(),
                                torch.from_numpy(self.affine).float()).numpy()


def _region(box, height: int, width: int, scale: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * scale / 2
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(width, int(np.ceil(cx + half))), min(height, int(np.ceil(cy + half)))
    return left, top, right, bottom


def face_landmarks(image: torch.Tensor, box, landmark_backend: LandmarkBackend) -> np.ndarray | None:
    """68 landmarks of the face in ``box`` from ``landmark_backend``.

    Backends with ``landmarks_in_boxes`` (dlib, FAN) fit the points in the box itself;
    others run on the box enlarged by :data:`LANDMARK_REGION_SCALE`. Points whose centre
    falls outside the box (the backend picked a neighbouring face) are rejected.
    """
    height, width = image.shape[-2:]
    if hasattr(landmark_backend, "landmarks_in_boxes"):
        points = landmark_backend.landmarks_in_boxes(image, torch.tensor([list(box)], dtype=torch.float32))[0]
        points = points.detach().float().cpu()
    else:
        left, top, right, bottom = _region(box, height, width, LANDMARK_REGION_SCALE)
        if right - left < 8 or bottom - top < 8:
            return None
        points = landmark_backend.landmarks(image[None, :, top:bottom, left:right])[0].detach().float().cpu()
        points = points + torch.tensor([left, top], dtype=torch.float32)
    if not torch.isfinite(points).all():
        return None
    x0, y0, x1, y1 = box
    cx, cy = points.mean(dim=0).tolist()
    if not (x0 <= cx <= x1 and y0 <= cy <= y1):
        return None
    return points.numpy()


def restore_faces_in_photo(image: torch.Tensor,
                           restore_fn: Callable[[torch.Tensor], torch.Tensor],
                           detector: FaceDetector,
                           landmark_backend: LandmarkBackend | None = None,
                           size: int = 512,
                           indices: Sequence[int] | None = None,
                           blend: float = 1.0,
                           progress: ProgressCallback | None = None) -> tuple[torch.Tensor, list[PhotoFace]]:
    """Restore the faces of one photo.

    Args:
        image: (3, H, W) photo in [0, 1].
        restore_fn: (B, 3, size, size) aligned faces in [0, 1] -> same shape, restored.
            Called once per face (B = 1).
        detector: finds the faces (largest first).
        landmark_backend: refines the landmarks of each face (run on its enlarged box);
            None uses the detector's own landmarks. Falls back to the detector's
            landmarks where the backend finds none.
        size: aligned crop side.
        indices: which detected faces to restore (positions in the detector's list);
            None restores all.
        blend: 0 keeps the photo, 1 uses the restored faces fully.
        progress: called as ``progress(done, total)`` after each face.

    Returns:
        ``(result, faces)``: the (3, H, W) photo with the restored faces pasted back, and
        one :class:`PhotoFace` per detected face (``skipped`` says why a face was left
        alone). A photo without faces comes back unchanged with an empty list.

    Raises:
        ImageError: bad image, or ``restore_fn`` returned a wrong shape.
        HonestFaceError: an index outside the detected faces.
    """
    if not torch.is_tensor(image) or image.dim() != 3:
        raise ImageError(f"restore_faces_in_photo takes one (3, H, W) photo, got {getattr(image, 'shape', type(image))}")
    check_image_batch(image, "image")
    detections = detector.detect(image)
    if indices is None:
        chosen = list(range(len(detections)))
    else:
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < len(detections)]
        if bad:
            raise HonestFaceError(f"face index {bad} out of range: {len(detections)} face(s) detected")
    faces = [PhotoFace(index=i, box=tuple(float(v) for v in d.box), score=float(d.score),
                       landmarks=None if d.landmarks is None else np.asarray(d.landmarks, dtype=np.float32),
                       extra=dict(d.extra))
             for i, d in enumerate(detections)]
    result = image
    for done, i in enumerate(chosen, start=1):
        face = faces[i]
        if landmark_backend is not None:
            refined = face_landmarks(image, face.box, landmark_backend)
            if refined is not None:
                face.landmarks = refined
                face.extra["landmarks_from"] = getattr(landmark_backend, "name", "backend")
        if face.landmarks is None or not np.isfinite(face.landmarks).all():
            face.skipped = "no landmarks"
            report(progress, done, len(chosen))
            continue
        crop, affine = align_face(image, torch.from_numpy(face.landmarks), size)
        restored = restore_fn(crop[None])
        if not torch.is_tensor(restored) or tuple(restored.shape) != (1, 3, size, size):
            raise ImageError(f"restore_fn must return a (1, 3, {size}, {size}) tensor, "
                             f"got {getattr(restored, 'shape', type(restored))}")
        restored = restored.detach().to(image.device, torch.float32)
        face.affine, face.crop, face.restored = affine.cpu().numpy(), crop, restored[0]
        result = paste_back(result, restored, affine[None], blend=blend)
        report(progress, done, len(chosen))
    for i, face in enumerate(faces):
        if i not in chosen:
            face.skipped = "not selected"
    return result, faces
