"""Faces of a whole photo: detection, selection, paste masks.

detect -> 68 landmarks -> FFHQ-aligned crop -> restore -> paste back with a mask. Two steps
for the model-driven path (:mod:`honestface.whole_photo`): :func:`detect_photo_faces` finds
and selects the faces (a video can smooth their landmarks before the next step),
:func:`align_selected_faces` crops them, :func:`paste_restored_faces` blends the restored
crops back through :func:`paste_mask` (each face's mask from its landmarks in crop space).
:func:`restore_faces_in_photo` is the one-photo form of the same steps, generic over a
``restore_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, HonestFaceError, ImageError
from ..image_io import check_image_batch
from ..progress import ProgressCallback, report
from .align import DEFAULT_FEATHER, align_face, alignment_affine, feathered_mask, paste_faces, transform_points
from .base import FaceDetector, LandmarkBackend

#: A landmark backend sees the detection box enlarged by this factor (square, clipped).
LANDMARK_REGION_SCALE = 2.0


@dataclass
class PhotoFace:
    """What happened to one detected face of a photo."""

    index: int  # position in the selection order (detect_photo_faces) or the detector's list
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    score: float
    landmarks: np.ndarray | None  # (68|5, 2) photo pixels used for the alignment
    affine: np.ndarray | None = None  # (2, 3) photo -> crop pixels
    crop: torch.Tensor | None = None  # (3, S, S) aligned input crop
    restored: torch.Tensor | None = None  # (3, S, S) restore_fn output
    skipped: str = ""  # why the face was not restored ("" when it was)
    extra: dict = field(default_factory=dict)
    selected: bool = True  # chosen by the FaceSelection (and has landmarks)
    with_references: bool = False  # restored with the photo's references
    identity_distance: float | None = None  # degrees to the references' mean identity, when measured
    #: restored with references but no landmarks found in its aligned crop: the reference
    #: choice (Eq. 6) used the aligned-box landmarks (:class:`~honestface.pipeline.RestoreInfo`)
    landmarks_missed: bool = False

    @property
    def crop_landmarks(self) -> np.ndarray | None:
        """Landmarks in crop pixels."""
        if self.landmarks is None or self.affine is None:
            return None
        return transform_points(torch.from_numpy(self.landmarks).float(),
                                torch.from_numpy(self.affine).float()).numpy()


ORDERS = ("size", "left-to-right", "confidence")
MASK_SHAPES = ("hull", "ellipse", "square")


@dataclass
class FaceSelection:
    """Which detected faces of a photo are restored.

    Faces are first put in ``order`` ("size": largest box first; "left-to-right": by box
    centre x; "confidence": detector score, highest first); ``indices`` are positions in
    that order (one beyond the faces found selects nothing). Then faces whose box side (the longer one, photo pixels) is below
    ``min_face_size`` are skipped, ``center_only`` keeps the face whose box centre is
    nearest the photo centre, and ``max_faces`` (0 = all) keeps the first ones left.
    """

    order: Literal["size", "left-to-right", "confidence"] = "size"
    min_face_size: float = 0.0
    max_faces: int = 0
    indices: list[int] | None = None
    center_only: bool = False

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"face order must be one of {', '.join(ORDERS)}, got '{self.order}'")
        if self.min_face_size < 0 or self.max_faces < 0:
            raise ConfigError("min_face_size and max_faces must be >= 0")
        if self.indices is not None:
            self.indices = [int(i) for i in self.indices]
            if any(i < 0 for i in self.indices):
                raise ConfigError(f"face indices must be >= 0, got {self.indices}")


@dataclass
class PasteMask:
    """How a restored crop is blended back into its photo.

    ``shape``: "hull" (convex hull of the 68 landmarks, brows raised by a forehead's height),
    "ellipse" (the ellipse fitted to that hull) or "square" (the whole crop, feathered at its
    border). ``dilate`` grows the shape and ``feather`` is the width of its soft edge, both
    as fractions of the crop side (0.05 at 512 px = 25.6 px). Faces with 5 landmarks only get
    a template ellipse for "hull"/"ellipse". Every mask is 0 along the crop border, so no
    square edge can show.
    """

    shape: Literal["hull", "ellipse", "square"] = "hull"
    dilate: float = 0.03
    feather: float = 0.08

    def __post_init__(self) -> None:
        if self.shape not in MASK_SHAPES:
            raise ConfigError(f"paste mask shape must be one of {', '.join(MASK_SHAPES)}, got '{self.shape}'")
        if not -0.5 < self.dilate < 0.5 or not 0.0 <= self.feather <= 0.5:
            raise ConfigError(f"paste mask dilate must be in (-0.5, 0.5) and feather in [0, 0.5], "
                              f"got {self.dilate}, {self.feather}")


def _face_outline(points: np.ndarray) -> np.ndarray:
    """(68, 2) crop-space landmarks -> outline points: the landmarks plus the brows raised
    by 0.6 x the brow-to-nose-tip distance (the forehead the landmarks do not cover)."""
    brows = points[17:27]
    up = points[27] - points[8]  # chin -> nose bridge: the face's up direction
    up = up / max(float(np.linalg.norm(up)), 1e-6)
    height = float(np.linalg.norm(points[30] - brows.mean(axis=0)))
    return np.concatenate([points, brows + up * 0.6 * height]).astype(np.float32)


def paste_mask(crop_landmarks: np.ndarray | None, size: int, mask: PasteMask | None = None) -> torch.Tensor:
    """(size, size) float mask in crop space for one face (see :class:`PasteMask`).

    Args:
        crop_landmarks: (68, 2) or (5, 2) landmarks in crop pixels, or None (template ellipse).
        size: crop side in pixels.
    """
    import cv2

    mask = mask or PasteMask()
    # Where the shape reaches the crop's edge (a chin low in the crop) it fades out there too.
    border = feathered_mask(size, feather=max(mask.feather, DEFAULT_FEATHER / 2), margin=0.01)
    if mask.shape == "square":
        return feathered_mask(size, feather=max(mask.feather, 1e-3), margin=max(0.01, -mask.dilate))
    scale = 4 if size <= 256 else 2  # polygon drawn at a finer grid, for a smooth edge
    canvas = np.zeros((size * scale, size * scale), np.uint8)
    shift = 4
    if crop_landmarks is not None and np.asarray(crop_landmarks).shape[0] == 68 and np.isfinite(crop_landmarks).all():
        outline = _face_outline(np.asarray(crop_landmarks, np.float32))
        hull = cv2.convexHull(((outline + 0.5) * scale).astype(np.float32))
        if mask.shape == "hull":
            cv2.fillConvexPoly(canvas, np.round(hull * (1 << shift)).astype(np.int32), 1, cv2.LINE_AA, shift)
        else:
            (cx, cy), (w, h), angle = cv2.fitEllipse(hull)
            cv2.ellipse(canvas, ((cx, cy), (w, h), angle), 1, -1, cv2.LINE_AA)
    else:  # where a face sits in an FFHQ-aligned crop
        centre, axes = (0.5 * size * scale, 0.56 * size * scale), (0.62 * size * scale, 0.8 * size * scale)
        cv2.ellipse(canvas, (centre, axes, 0.0), 1, -1, cv2.LINE_AA)
    inside = canvas > 0
    # Signed distance to the shape's edge (crop pixels), positive outside.
    outside_distance = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
    inside_distance = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    signed = cv2.resize((outside_distance - inside_distance) / scale, (size, size), interpolation=cv2.INTER_AREA)
    grow, soft = mask.dilate * size, max(mask.feather * size, 1.0)
    t = np.clip((grow - signed) / soft + 0.5, 0.0, 1.0)  # the soft edge is centred on the dilated outline
    smooth = torch.from_numpy((t * t * (3 - 2 * t)).astype(np.float32))
    return smooth * border


def order_faces(detections, order: str) -> list[int]:
    """Positions of ``detections`` in the selection order (see :class:`FaceSelection`)."""
    def area(d):
        return (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])
    positions = list(range(len(detections)))
    if order == "size":
        return sorted(positions, key=lambda i: -area(detections[i]))
    if order == "left-to-right":
        return sorted(positions, key=lambda i: (detections[i].box[0] + detections[i].box[2]) / 2)
    if order == "confidence":
        return sorted(positions, key=lambda i: -float(detections[i].score))
    raise ConfigError(f"face order must be one of {', '.join(ORDERS)}, got '{order}'")


def select_faces(faces: list[PhotoFace], height: int, width: int, selection: FaceSelection) -> list[PhotoFace]:
    """Mark ``faces`` (already in selection order) ``selected`` or ``skipped`` with a reason."""
    for face in faces:
        if face.skipped:
            face.selected = False
    if selection.indices is not None:
        for face in faces:
            if face.index not in selection.indices and face.selected:
                face.selected, face.skipped = False, "not in the chosen indices"
    if selection.min_face_size > 0:
        for face in faces:
            side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
            if face.selected and side < selection.min_face_size:
                face.selected, face.skipped = False, f"smaller than {selection.min_face_size:g} px ({side:.0f} px)"
    if selection.center_only:
        left = [f for f in faces if f.selected]
        if left:
            def off_centre(f):
                return math.hypot((f.box[0] + f.box[2]) / 2 - width / 2, (f.box[1] + f.box[3]) / 2 - height / 2)
            centre = min(left, key=off_centre)
            for face in left:
                if face is not centre:
                    face.selected, face.skipped = False, "not the centre face"
    if selection.max_faces > 0:
        for face in [f for f in faces if f.selected][selection.max_faces:]:
            face.selected, face.skipped = False, f"beyond max_faces={selection.max_faces}"
    return faces


def detect_photo_faces(photo: torch.Tensor, detector: FaceDetector, landmark_backend: LandmarkBackend | None = None,
                       selection: FaceSelection | None = None) -> list[PhotoFace]:
    """Every face of one photo, in selection order, with landmarks in photo pixels.

    Args:
        photo: (3, H, W) in [0, 1], or uint8 (the dlib backends read it as it is; others
            get it in float).
        detector: finds the faces (and usually their landmarks).
        landmark_backend: refines each face's landmarks in its box. Skipped when the
            detector already gives 68 points from the same family (dlib detector + dlib
            landmarks fit the same predictor in the same box).
        selection: which faces to restore (default: all).

    Returns:
        One :class:`PhotoFace` per detected face, ``index`` = position in the selection
        order; ``selected`` False with a ``skipped`` reason for the others ("no landmarks",
        "not in the chosen indices", ...). ``affine`` is not set here (it depends on the crop size).
    """
    if not torch.is_tensor(photo) or photo.dim() != 3:
        raise ImageError(f"detect_photo_faces takes one (3, H, W) photo, got {getattr(photo, 'shape', type(photo))}")
    check_image_batch(photo, "photo")
    selection = selection or FaceSelection()
    detections = detector.detect(photo if _takes_uint8(detector) else _float_photo(photo))
    faces = []
    for index, position in enumerate(order_faces(detections, selection.order)):
        detection = detections[position]
        landmarks = None if detection.landmarks is None else np.asarray(detection.landmarks, dtype=np.float32)
        face = PhotoFace(index=index, box=tuple(float(v) for v in detection.box), score=float(detection.score),
                         landmarks=landmarks, extra=dict(detection.extra))
        same_family = (landmarks is not None and landmarks.shape[0] == 68
                       and getattr(landmark_backend, "name", None) == getattr(detector, "name", ""))
        if landmark_backend is not None and not same_family:
            refined = face_landmarks(photo, face.box, landmark_backend)
            if refined is not None:
                face.landmarks = refined
                face.extra["landmarks_from"] = getattr(landmark_backend, "name", "backend")
        if face.landmarks is None or not np.isfinite(face.landmarks).all():
            face.skipped = "no landmarks"
        faces.append(face)
    return select_faces(faces, photo.shape[-2], photo.shape[-1], selection)


def _takes_uint8(backend) -> bool:
    """The dlib backends read 8-bit photos as they are (they work on uint8 arrays)."""
    return getattr(backend, "name", "") == "dlib"


def _float_photo(photo: torch.Tensor) -> torch.Tensor:
    return photo.float() / 255.0 if photo.dtype == torch.uint8 else photo


def face_affine(face: PhotoFace, size: int) -> np.ndarray:
    """(2, 3) photo -> ``size`` crop matrix of a face with landmarks (FFHQ alignment)."""
    return alignment_affine(torch.from_numpy(np.asarray(face.landmarks, np.float32)), size).numpy()


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
    if hasattr(landmark_backend, "landmarks_in_boxes") and (image.dtype != torch.uint8 or _takes_uint8(landmark_backend)):
        points = landmark_backend.landmarks_in_boxes(image, torch.tensor([list(box)], dtype=torch.float32))[0]
        points = points.detach().float().cpu()
    elif hasattr(landmark_backend, "landmarks_in_boxes"):  # an 8-bit photo: the box's region in float
        left, top, right, bottom = _region(box, height, width, LANDMARK_REGION_SCALE)
        if right - left < 8 or bottom - top < 8:
            return None
        shifted = torch.tensor([[box[0] - left, box[1] - top, box[2] - left, box[3] - top]], dtype=torch.float32)
        points = landmark_backend.landmarks_in_boxes(_float_photo(image[:, top:bottom, left:right]), shifted)[0]
        points = points.detach().float().cpu() + torch.tensor([left, top], dtype=torch.float32)
    else:
        left, top, right, bottom = _region(box, height, width, LANDMARK_REGION_SCALE)
        if right - left < 8 or bottom - top < 8:
            return None
        points = landmark_backend.landmarks(_float_photo(image[None, :, top:bottom, left:right]))[0].detach().float().cpu()
        points = points + torch.tensor([left, top], dtype=torch.float32)
    if not torch.isfinite(points).all():
        return None
    x0, y0, x1, y1 = box
    cx, cy = points.mean(dim=0).tolist()
    if not (x0 <= cx <= x1 and y0 <= cy <= y1):
        return None
    return points.numpy()


def align_selected_faces(photo: torch.Tensor, faces: Sequence[PhotoFace], size: int) -> list[PhotoFace]:
    """Aligned crops of the selected faces of one photo (FFHQ alignment, all in one call).

    Sets ``crop`` (3, size, size) in [0, 1] and ``affine`` (2, 3) photo -> crop of every face
    that is ``selected`` and has landmarks, and returns those faces in order.
    """
    chosen = [f for f in faces if f.selected and f.landmarks is not None]
    if not chosen:
        return []
    points = torch.from_numpy(np.stack([np.asarray(f.landmarks, np.float32) for f in chosen]))
    crops, affines = align_face(photo, points, size)
    crops, affines = crops.reshape(-1, 3, size, size).clamp(0, 1), affines.reshape(-1, 2, 3)
    for face, crop, affine in zip(chosen, crops, affines):
        face.crop, face.affine = crop, affine.numpy()
    return chosen


#: How restored faces go back into a photo: "change" adds what the restorer changed in the
#: aligned crop (the photo keeps its detail finer than the model's size: a 512 px face
#: restored by a 128 px model stays sharp), "replace" puts the restored crop in its place.
PASTE_MODES = ("change", "replace")


def paste_restored_faces(photo: torch.Tensor, faces: Sequence[PhotoFace], size: int, mask: PasteMask | None = None,
                         strength: float = 1.0, limit: torch.Tensor | None = None,
                         name: str = "photo", mode: str = "change") -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the ``restored`` crops of ``faces`` back into their (3, H, W) photo.

    Each face is pasted through its :func:`paste_mask` (from its landmarks in crop space)
    times ``strength``; ``limit`` (H, W) in [0, 1] keeps the photo where it is 0. ``mode``:
    one of :data:`PASTE_MODES`.

    Returns:
        (3, H, W) image in the photo's dtype (float in [0, 1], or uint8: only the faces'
        regions are computed in float) and the (H, W) weight of the pasted faces.
    """
    if mode not in PASTE_MODES:
        raise ConfigError(f"paste mode must be one of {', '.join(PASTE_MODES)}, got '{mode}'")
    done = [f for f in faces if f.restored is not None]
    height, width = photo.shape[-2:]
    if not done:
        return photo.clone(), torch.zeros(height, width)
    masks = torch.stack([paste_mask(f.crop_landmarks, size, mask) for f in done])
    image, alpha = paste_faces(photo, torch.stack([f.restored for f in done]),
                               torch.from_numpy(np.stack([f.affine for f in done])).float(), masks,
                               blend=float(strength),
                               inputs=torch.stack([f.crop for f in done]) if mode == "change" else None)
    if limit is not None:
        limit = torch.as_tensor(limit).float().cpu().squeeze()
        if tuple(limit.shape) != (height, width):
            raise ImageError(f"limit mask of {name} is {tuple(limit.shape)}, the photo is {(height, width)}")
        limit = limit.clamp(0, 1)
        if image.dtype == torch.uint8:
            image = (photo.float() + (image.float() - photo.float()) * limit).round().clamp(0, 255).to(torch.uint8)
        else:
            image = photo + (image - photo) * limit
        alpha = alpha * limit
    return (image if image.dtype == torch.uint8 else image.clamp(0, 1)), alpha


def restore_faces_in_photo(image: torch.Tensor,
                           restore_fn: Callable[[torch.Tensor], torch.Tensor],
                           detector: FaceDetector,
                           landmark_backend: LandmarkBackend | None = None,
                           size: int = 512,
                           indices: Sequence[int] | None = None,
                           blend: float = 1.0,
                           progress: ProgressCallback | None = None,
                           mask: PasteMask | None = None) -> tuple[torch.Tensor, list[PhotoFace]]:
    """Restore the faces of one photo with any restore function, through the same steps as
    :func:`honestface.whole_photo.restore_whole_photos` (detection and selection, FFHQ
    alignment, landmark paste mask).

    Args:
        image: (3, H, W) photo in [0, 1].
        restore_fn: (B, 3, size, size) aligned faces in [0, 1] -> same shape, restored.
            Called once per face (B = 1).
        detector: finds the faces.
        landmark_backend: refines the landmarks of each face (run on its enlarged box);
            None uses the detector's own landmarks.
        size: aligned crop side.
        indices: which faces to restore (positions in the largest-first order); None: all.
        blend: 0 keeps the photo, 1 uses the restored faces fully.
        progress: called as ``progress(done, total)`` after each face.
        mask: the paste mask (default :class:`PasteMask`'s).

    Returns:
        ``(result, faces)``: the (3, H, W) photo with the restored faces pasted back, and
        one :class:`PhotoFace` per detected face (``skipped`` says why a face was left
        alone). A photo without faces comes back unchanged with an empty list.

    Raises:
        ImageError: bad image, or ``restore_fn`` returned a wrong shape.
        HonestFaceError: an index outside the detected faces.
    """
    faces = detect_photo_faces(image, detector, landmark_backend, FaceSelection(indices=indices))
    bad = [i for i in (indices or []) if not 0 <= int(i) < len(faces)]
    if bad:
        raise HonestFaceError(f"face index {bad} out of range: {len(faces)} face(s) detected")
    chosen = align_selected_faces(image, faces, size)
    for done, face in enumerate(chosen, start=1):
        restored = restore_fn(face.crop[None])
        if not torch.is_tensor(restored) or tuple(restored.shape) != (1, 3, size, size):
            raise ImageError(f"restore_fn must return a (1, 3, {size}, {size}) tensor, "
                             f"got {getattr(restored, 'shape', type(restored))}")
        face.restored = restored.detach()[0].to(image.device, torch.float32)
        report(progress, done, len(chosen))
    result, _ = paste_restored_faces(image, faces, size, mask, strength=blend)
    return result, faces
