"""References as people have them: ordinary photos of the person, or aligned crops.

:func:`align_reference_photos` turns each input into an FFHQ-aligned crop of the model's
size: an aligned crop (by :func:`~honestface.face.input_kind.classify_input`) is resized, a
photo gets its largest face detected and aligned; an input without a face is dropped with
a note. The result feeds :meth:`honestface.pipeline.HonestFacePipeline.encode_references`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import ImageError
from ..image_io import MIN_IMAGE_SIDE, resize_to, to_rgb
from .align import align_face
from .base import FaceDetector, LandmarkBackend
from .input_kind import ALIGNED_TOLERANCE, classify_input
from .photo import FaceSelection, detect_photo_faces


@dataclass
class ReferencePhotos:
    """Aligned references and what became of each input."""

    images: torch.Tensor  # (N, 3, size, size) in [0, 1]; N = 0 when no input had a face
    kept: list[int] = field(default_factory=list)  # input positions of the N images, in order
    notes: list[str] = field(default_factory=list)  # one line per dropped or converted input


def align_reference_photos(images: Sequence[torch.Tensor], size: int, detector: FaceDetector,
                           landmark_backend: LandmarkBackend | None = None,
                           names: Sequence[str] | None = None,
                           tolerance: float = ALIGNED_TOLERANCE) -> ReferencePhotos:
    """Aligned ``size`` x ``size`` references from photos and/or aligned crops.

    Args:
        images: (3, H, W) images in [0, 1] (1 or 4 channels are converted), any size; a
            (N, 3, H, W) batch is taken as N images.
        size: the model's crop side.
        detector / landmark_backend: find the faces and their landmarks.
        names: one name per input for the notes (default "reference <i>").
        tolerance: :func:`classify_input`'s alignment tolerance.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = [images]
    names = list(names) if names is not None else [f"reference {i}" for i in range(len(images))]
    if len(names) != len(images):
        raise ImageError(f"{len(images)} references but {len(names)} names")
    crops, kept, notes = [], [], []
    for position, (image, name) in enumerate(zip(images, names)):
        image = to_rgb(image, name)[0].float().cpu().clamp(0, 1)
        if min(image.shape[-2:]) < MIN_IMAGE_SIDE:
            notes.append(f"{name}: {image.shape[-1]}x{image.shape[-2]} px, too small (under {MIN_IMAGE_SIDE} px), dropped")
            continue
        kind = classify_input(image, detector, landmark_backend, tolerance)
        if kind.kind == "aligned":
            crops.append(resize_to(image[None], size)[0])
            kept.append(position)
            continue
        faces = [f for f in detect_photo_faces(image, detector, landmark_backend, FaceSelection(order="size"))
                 if f.selected]
        if not faces:
            notes.append(f"{name}: no face found, dropped")
            continue
        crop, _ = align_face(image, torch.from_numpy(np.asarray(faces[0].landmarks, np.float32)), size)
        crops.append(crop.clamp(0, 1))
        kept.append(position)
        others = f" (largest of {len(faces)} faces)" if len(faces) > 1 else ""
        notes.append(f"{name}: photo, face aligned{others}")
    stacked = torch.stack(crops) if crops else torch.zeros(0, 3, size, size)
    return ReferencePhotos(stacked, kept, notes)
