"""Restore the faces of whole photos (or video frames) with a :class:`HonestFacePipeline`.

For a batch of photos: detect and select the faces of each (or take precomputed ones,
e.g. landmarks smoothed over a video), cut FFHQ-aligned crops, restore the faces of ALL
photos together through :meth:`~honestface.pipeline.HonestFacePipeline.restore` (chunks of
``pipeline.batch_size``), and paste each face back with a mask built from its landmarks.

References belong to one person. In a photo with several faces, ``ref_match="identity"``
gives them only to the face whose identity matches: the angle between the face's identity
embedding and the references' mean (Deg.) must be below the threshold
(:data:`~honestface.pipeline.IDENTITY_MATCH_THRESHOLD_DEG`), and of several such faces the
closest wins. A photo with a single selected face always gets its references (its distance
is still measured and reported). ``ref_match="all"`` gives them to every face.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from .errors import ConfigError, ImageError, NoFaceError
from .face.base import FaceDetector
from .face.photo import (FaceSelection, PasteMask, PhotoFace, align_selected_faces, detect_photo_faces,
                         paste_restored_faces)
from .image_io import MIN_IMAGE_SIDE, check_image_size, to_rgb
from .pipeline import HonestFacePipeline, ReferenceSet, RestoreInfo
from .progress import ProgressCallback


@dataclass
class PhotoResult:
    """One restored photo."""

    image: torch.Tensor  # (3, H, W) in [0, 1], or uint8 for an 8-bit photo
    mask: torch.Tensor  # (H, W) in [0, 1]: weight of the pasted faces (0 = the photo's own pixels)
    faces: list[PhotoFace] = field(default_factory=list)  # every detected face, in selection order
    status: Literal["restored", "no face"] = "restored"


def _as_photo(photo: torch.Tensor, name: str) -> torch.Tensor:
    """An 8-bit (3, H, W) photo stays 8-bit (a quarter of float32's memory); anything else
    becomes (3, H, W) float32 in [0, 1] (1 or 4 channels converted)."""
    if torch.is_tensor(photo) and photo.dtype == torch.uint8 and photo.dim() == 3 and photo.shape[0] == 3:
        return photo.cpu()
    return to_rgb(photo, name)[0].float().cpu().clamp(0, 1)


def _reference_sets(pipeline: HonestFacePipeline, references, count: int) -> list[ReferenceSet | None]:
    """``references`` (None, one set or tensor for all, or one entry per photo) -> one
    encoded set (or None) per photo; each distinct input is encoded once."""
    if references is None:
        return [None] * count
    if isinstance(references, (ReferenceSet, torch.Tensor)):
        entries = [references] * count
    else:
        entries = list(references)
        if len(entries) != count:
            raise ImageError(f"references must be one set for all photos or one entry per photo "
                             f"({count}), got {len(entries)}")
    encoded: dict[int, ReferenceSet | None] = {}
    sets = []
    for entry in entries:
        if id(entry) not in encoded:
            encoded[id(entry)] = None if entry is None else pipeline.encode_references(entry)
        found = encoded[id(entry)]
        sets.append(found if found is not None and len(found) else None)
    return sets


def restore_whole_photos(pipeline: HonestFacePipeline, photos: Sequence[torch.Tensor], detector: FaceDetector | None,
                         *, faces: list[list[PhotoFace]] | None = None,
                         references: ReferenceSet | torch.Tensor | Sequence[ReferenceSet | torch.Tensor | None] | None = None,
                         ref_match: Literal["identity", "all"] = "identity", match_threshold: float | None = None,
                         selection: FaceSelection | None = None, paste_mask: PasteMask | None = None,
                         strength: float = 1.0, on_no_face: Literal["pass", "error"] = "pass",
                         limit_masks: Sequence[torch.Tensor | None] | None = None,
                         color_correction: str | None = None, generator: torch.Generator | None = None,
                         progress: ProgressCallback | None = None, names: Sequence[str] | None = None,
                         landmark_backend=None, paste_mode: str = "change",
                         fidelity: bool | None = None) -> list[PhotoResult]:
    """Restore every selected face of every photo; faces of all photos are batched together.

    Args:
        pipeline: the restorer (its ``batch_size`` sets the chunk size; its landmark
            backend refines detected landmarks unless ``landmark_backend`` is given).
        photos: (3, H, W) images in [0, 1] (1 or 4 channels converted), any sizes; or
            (3, H, W) uint8, kept 8-bit: faces are cut and pasted in their regions only,
            so memory grows with the faces, not the megapixels (results are uint8).
        detector: finds faces; may be None when ``faces`` is given.
        faces: precomputed faces per photo (:func:`~honestface.face.photo.detect_photo_faces`,
            landmarks possibly smoothed); their ``selected`` flags are used as they are.
        references: one :class:`ReferenceSet` (or aligned (N, 3, H, W) tensor) for all
            photos, or one entry (set, tensor or None) per photo.
        ref_match: "identity" (see the module doc) or "all".
        match_threshold: degrees; default the identity backend's
            (:func:`~honestface.pipeline.identity_match_threshold`).
        selection / paste_mask: which faces, and how they are blended back.
        strength: 1 pastes the restored faces fully, 0 keeps the photo.
        on_no_face: "pass" returns a photo with no restorable face unchanged (status
            "no face"); "error" raises :class:`~honestface.errors.NoFaceError` naming it.
        limit_masks: per photo an optional (H, W) mask in [0, 1]: faces are pasted only
            where it is > 0 (the photo is kept where it is 0).
        color_correction, generator, progress: passed to ``pipeline.restore``.
        names: photo names for messages (default "photo <i>").
        paste_mode: "change" (default) adds what the restorer changed in each aligned crop,
            so faces larger than the model's size keep their detail; "replace" pastes the
            restored crops themselves (:data:`~honestface.face.photo.PASTE_MODES`).
        fidelity: passed to ``pipeline.restore`` (automatic fidelity of models that have it);
            each face's weight goes to ``face.extra["fidelity"]``.

    Returns:
        One :class:`PhotoResult` per photo, in order.
    """
    if ref_match not in ("identity", "all"):
        raise ConfigError(f"ref_match must be 'identity' or 'all', got '{ref_match}'")
    if on_no_face not in ("pass", "error"):
        raise ConfigError(f"on_no_face must be 'pass' or 'error', got '{on_no_face}'")
    if not 0.0 <= float(strength) <= 1.0:
        raise ImageError(f"strength must be in [0, 1], got {strength}")
    if isinstance(photos, torch.Tensor) and photos.dim() == 3:
        photos = [photos]
    photos = [_as_photo(p, f"photos[{i}]") for i, p in enumerate(photos)]
    count = len(photos)
    names = list(names) if names is not None else [f"photo {i}" for i in range(count)]
    if len(names) != count:
        raise ImageError(f"{count} photos but {len(names)} names")
    if limit_masks is not None and len(limit_masks) != count:
        raise ImageError(f"limit_masks needs one entry per photo ({count}), got {len(limit_masks)}")
    selection, paste_mask_config = selection or FaceSelection(), paste_mask or PasteMask()
    landmark_backend = landmark_backend if landmark_backend is not None else pipeline.landmark_backend
    size = pipeline.image_size

    # 1. Faces of every photo.
    if faces is None:
        if detector is None:
            raise ConfigError("restore_whole_photos needs a face detector or precomputed faces")
        # Too small to hold a face: nothing to detect (and "error" says why below).
        faces = [detect_photo_faces(photo, detector, landmark_backend, selection)
                 if min(photo.shape[-2:]) >= MIN_IMAGE_SIDE else [] for photo in photos]
    elif len(faces) != count:
        raise ImageError(f"faces needs one list per photo ({count}), got {len(faces)}")
    faces = [[dataclasses.replace(face, extra=dict(face.extra)) for face in photo_faces] for photo_faces in faces]

    # 2. Aligned crops of the selected faces, all photos in one list.
    owners = [(i, face) for i, (photo, photo_faces) in enumerate(zip(photos, faces))
              for face in align_selected_faces(photo, photo_faces, size)]  # (photo index, PhotoFace)
    crops = [face.crop for _, face in owners]
    for i, photo_faces in enumerate(faces):
        if on_no_face == "error" and not any(owner == i for owner, _ in owners):
            check_image_size(photos[i], names[i])
            why = "no face detected" if not photo_faces else "no face selected (" + "; ".join(
                sorted({f.skipped for f in photo_faces if f.skipped})) + ")"
            raise NoFaceError(f"{names[i]}: {why}")

    # 3. Who gets the references.
    sets = _reference_sets(pipeline, references, count)
    _assign_references(pipeline, sets, owners, ref_match, match_threshold)

    # 4. All faces through the model together (pipeline.restore chunks by batch_size).
    if crops:
        per_face = [sets[i] if face.with_references else None for i, face in owners]
        info = RestoreInfo()
        restored = pipeline.restore(torch.stack(crops), references=per_face if any(s is not None for s in per_face) else None,
                                    progress=progress, generator=generator, color_correction=color_correction,
                                    fidelity=fidelity, info=info)
        for index, ((_, face), image, missed) in enumerate(zip(owners, restored, info.landmarks_missed)):
            face.restored, face.landmarks_missed = image, missed
            if info.fidelity:
                face.extra["fidelity"] = info.fidelity[index]

    # 5. Paste back, photo by photo.
    results = []
    for i, (photo, photo_faces) in enumerate(zip(photos, faces)):
        if not any(f.restored is not None for f in photo_faces):
            results.append(PhotoResult(photo.clone(), torch.zeros(photo.shape[-2:]), photo_faces, "no face"))
            continue
        image, alpha = paste_restored_faces(photo, photo_faces, size, paste_mask_config, float(strength),
                                            None if limit_masks is None else limit_masks[i], names[i],
                                            mode=paste_mode)
        results.append(PhotoResult(image, alpha, photo_faces, "restored"))
    return results


def _assign_references(pipeline: HonestFacePipeline, sets: list[ReferenceSet | None],
                       owners: list[tuple[int, PhotoFace]], ref_match: str, match_threshold: float | None) -> None:
    """Set ``with_references`` and ``identity_distance`` of every face (see the module doc)."""
    by_photo: dict[int, list[PhotoFace]] = {}
    for i, face in owners:
        if sets[i] is not None:
            by_photo.setdefault(i, []).append(face)
    if not by_photo:
        return
    if ref_match == "all":
        for photo_faces in by_photo.values():
            for face in photo_faces:
                face.with_references = True
        return
    if pipeline.identity_backend is None:
        if any(len(v) > 1 for v in by_photo.values()):
            raise ConfigError("ref_match='identity' needs an identity backend in the pipeline to tell the faces "
                              "of a group photo apart; load one or use ref_match='all'")
        for photo_faces in by_photo.values():
            photo_faces[0].with_references = True
        return
    threshold = pipeline.match_threshold if match_threshold is None else float(match_threshold)
    # One identity_distance call per distinct reference set, over the faces of all its photos.
    groups: dict[int, list[PhotoFace]] = {}
    for i, photo_faces in by_photo.items():
        groups.setdefault(id(sets[i]), []).extend(photo_faces)
    set_of = {id(sets[i]): sets[i] for i in by_photo}
    for key, group in groups.items():
        distances = pipeline.identity_distance(torch.stack([f.crop for f in group]), set_of[key])
        for face, distance in zip(group, distances.tolist()):
            face.identity_distance = float(distance)
    for photo_faces in by_photo.values():
        if len(photo_faces) == 1:
            photo_faces[0].with_references = True
            continue
        matching = [f for f in photo_faces if f.identity_distance is not None and f.identity_distance < threshold]
        if matching:
            min(matching, key=lambda f: f.identity_distance).with_references = True
