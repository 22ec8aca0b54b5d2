"""Whole photos with the shipped nano model and dlib on real LFW faces: a group photo whose
references belong to one person, faces of several photos batched together, a photo
without a face, selection, paste masks without a square seam, limit masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import ConfigError, ImageTooSmallError, NoFaceError
from honestface.face import FaceSelection, PasteMask, align_reference_photos, detect_photo_faces, paste_mask
from honestface.image_io import load_image
from honestface.whole_photo import restore_whole_photos

from nano_helpers import nano_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lfw_people(shared_data):
    """Two different people (file lists); person A has at least 4 photos."""
    people = sorted(p for p in (shared_data / "lfw").iterdir() if p.is_dir())
    return sorted(people[0].glob("*.jpg")), sorted(people[5].glob("*.jpg"))


@pytest.fixture(scope="module")
def pipeline():
    return nano_pipeline(batch_size=3)


@pytest.fixture(scope="module")
def group(lfw_people):
    """Person A on the left, person B on the right of one 500 x 250 canvas."""
    person_a, person_b = lfw_people
    return torch.cat([load_image(person_a[0]), load_image(person_b[0])], dim=2)


@pytest.fixture(scope="module")
def no_face_photo(lfw_people):
    """A real photo region without a face: the bottom of a news photo (suit and tie)."""
    return load_image(lfw_people[0][0])[:, 180:, :]


@pytest.fixture(scope="module")
def references_of_a(pipeline, detector, lfw_people):
    photos = [load_image(p) for p in lfw_people[0][1:4]]  # raw 250 x 250 photos, not crops
    aligned = align_reference_photos(photos, pipeline.image_size, detector, names=["a1", "a2", "a3"])
    assert aligned.kept == [0, 1, 2]
    return pipeline.encode_references(aligned.images)


def test_group_photo_references_change_only_the_matching_face(pipeline, detector, group, references_of_a):
    # the full restoration (no automatic fidelity), where the references' effect shows
    plain, = restore_whole_photos(pipeline, [group], detector, fidelity=False)
    matched, = restore_whole_photos(pipeline, [group], detector, references=references_of_a, fidelity=False)
    left, right = sorted(matched.faces, key=lambda f: f.box[0])
    assert [f.with_references for f in (left, right)] == [True, False]
    assert left.identity_distance < pipeline.match_threshold < right.identity_distance
    change = (matched.image - plain.image).abs().amax(dim=0)  # (H, W)
    assert change[:, :250].max() > 1e-3  # person A's face changed with references
    assert change[:, 250:].max() < 1e-4  # person B's face is restored exactly as without them
    everyone, = restore_whole_photos(pipeline, [group], detector, references=references_of_a, ref_match="all",
                                     fidelity=False)
    assert all(f.with_references for f in everyone.faces)
    assert (everyone.image - plain.image)[:, :, 250:].abs().max() > 1e-3


def test_faces_of_all_photos_go_through_the_model_together(pipeline, detector, group, no_face_photo, lfw_people,
                                                         monkeypatch):
    single = load_image(lfw_people[1][1])
    chunks = []
    forward = pipeline._forward_chunk

    def counting(lq, *args, **kwargs):
        chunks.append(lq.shape[0])
        return forward(lq, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_forward_chunk", counting)
    progress = []
    results = restore_whole_photos(pipeline, [group, no_face_photo, single, group], detector,
                                   progress=lambda done, total: progress.append((done, total)))
    assert chunks == [3, 2]  # 5 faces from 3 photos in chunks of batch_size = 3
    assert progress[-1] == (5, 5)
    assert [r.status for r in results] == ["restored", "no face", "restored", "restored"]
    assert torch.equal(results[1].image, no_face_photo) and results[1].mask.max() == 0
    assert torch.allclose(results[0].image, results[3].image, atol=1e-5)  # batch position does not matter
    for result in (results[0], results[2]):
        assert result.mask.shape == result.image.shape[1:] and 0.0 <= result.mask.min() <= result.mask.max() <= 1.0
        assert result.mask.max() > 0.99
        # the photo is kept exactly where the mask is 0
        assert result.mask.min() == 0.0


def test_photo_without_face_passes_or_raises(pipeline, detector, no_face_photo):
    passed, = restore_whole_photos(pipeline, [no_face_photo], detector)
    assert passed.status == "no face" and passed.faces == [] and torch.equal(passed.image, no_face_photo)
    with pytest.raises(NoFaceError, match="frame_7.png: no face detected"):
        restore_whole_photos(pipeline, [no_face_photo], detector, on_no_face="error", names=["frame_7.png"])
    tiny = torch.rand(3, 1, 1)
    assert restore_whole_photos(pipeline, [tiny], detector)[0].status == "no face"
    with pytest.raises(ImageTooSmallError, match="dot.png is 1x1 px"):
        restore_whole_photos(pipeline, [tiny], detector, on_no_face="error", names=["dot.png"])


def test_limit_mask_and_strength(pipeline, detector, group):
    limit = torch.ones(group.shape[1:])
    limit[:, :250] = 0  # no pasting on the left person
    limited, = restore_whole_photos(pipeline, [group], detector, limit_masks=[limit])
    assert torch.equal(limited.image[:, :, :250], group[:, :, :250])
    assert limited.mask[:, :250].max() == 0 and limited.mask[:, 250:].max() > 0.99
    kept, = restore_whole_photos(pipeline, [group], detector, strength=0.0)
    assert (kept.image - group).abs().max() < 1e-5 and kept.mask.max() == 0


def test_identity_matching_without_an_identity_backend_says_what_to_do(pipeline, detector, group, references_of_a,
                                                                     monkeypatch):
    monkeypatch.setattr(pipeline, "identity_backend", None)
    with pytest.raises(ConfigError, match="ref_match='all'"):
        restore_whole_photos(pipeline, [group], detector, references=references_of_a)


def test_face_selection(detector, group):
    def chosen(selection):
        return [f.index for f in detect_photo_faces(group, detector, None, selection) if f.selected]

    faces = detect_photo_faces(group, detector, None, FaceSelection(order="left-to-right"))
    assert len(faces) == 2 and faces[0].box[0] < 250 <= faces[1].box[0]
    assert chosen(FaceSelection(order="left-to-right", indices=[1])) == [1]
    assert chosen(FaceSelection(max_faces=1)) == [0]
    sizes = [max(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in faces]
    big = detect_photo_faces(group, detector, None, FaceSelection(min_face_size=max(sizes) + 1))
    assert not any(f.selected for f in big) and "smaller than" in big[0].skipped
    by_score = detect_photo_faces(group, detector, None, FaceSelection(order="confidence"))
    assert by_score[0].score >= by_score[1].score
    # Centre face: pad the canvas on the right so the right person sits in the middle.
    padded = torch.cat([group, torch.full((3, 250, 250), 0.5)], dim=2)
    centre = [f for f in detect_photo_faces(padded, detector, None, FaceSelection(center_only=True)) if f.selected]
    assert len(centre) == 1 and centre[0].box[0] > 250
    with pytest.raises(ConfigError):
        FaceSelection(order="random")


@pytest.mark.parametrize("shape", ["hull", "ellipse", "square"])
def test_paste_mask_has_no_square_seam(detector, group, shape):
    face = detect_photo_faces(group, detector)[0]
    from honestface.face.photo import face_affine

    face.affine = face_affine(face, 256)
    mask = paste_mask(face.crop_landmarks, 256, PasteMask(shape=shape)).numpy()
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert border.max() < 1e-3  # 0 along the crop's square edge, corners included
    assert mask.max() > 0.99 and mask[128, 128] > 0.99  # the face centre is fully pasted
    # Smooth: no step steeper than two overlapping feather ramps (the face edge and, where a
    # chin reaches the crop's edge, the border fade) allow: smoothstep slope 1.5 / width each.
    steepest = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steepest < 2 * 1.5 / (0.08 * 256)
    if shape != "square":  # the landmark masks follow the face: the crop's corners stay out
        assert mask[:40, :40].max() < 0.05 and mask[-40:, -40:].max() < 0.05
    with pytest.raises(ConfigError):
        PasteMask(shape="star")


def test_precomputed_faces_are_used_as_given(pipeline, detector, group):
    """The video path: detect, adjust the faces (here: drop one, shift the other's landmarks
    as smoothing would), then restore with exactly those faces."""
    faces = detect_photo_faces(group, detector, None, FaceSelection(order="left-to-right"))
    faces[0].selected, faces[0].skipped = False, "dropped by the caller"
    original = faces[1].landmarks.copy()
    faces[1].landmarks = original + np.float32([1.5, -1.0])
    result, = restore_whole_photos(pipeline, [group], None, faces=[faces])
    assert result.status == "restored" and result.mask[:, :250].max() == 0 and result.mask[:, 250:].max() > 0.99
    assert torch.equal(result.image[:, :, :250], group[:, :, :250])
    pasted = result.faces[1]
    assert np.allclose(pasted.landmarks, original + np.float32([1.5, -1.0])) and pasted.restored is not None
    assert np.allclose(faces[1].landmarks, original + np.float32([1.5, -1.0])) and faces[1].restored is None  # caller's list untouched
