"""FFHQ alignment, paste-back and whole-photo restoration."""

from __future__ import annotations

import math

import pytest
import torch

from honestface.errors import HonestFaceError, ImageError, NoFaceError
from honestface.face.align import (
    align_face,
    alignment_affine,
    feathered_mask,
    ffhq_quad,
    invert_affine,
    paste_back,
    transform_points,
)
from honestface.face.photo import restore_faces_in_photo
from honestface.image_io import load_image

# 5 points (left eye, right eye, nose, mouth left, mouth right) of an upright face.
FIVE = torch.tensor([[200.0, 200.0], [300.0, 200.0], [250.0, 250.0], [220.0, 300.0], [280.0, 300.0]])


def rotate(points: torch.Tensor, degrees: float, centre=(250.0, 250.0)) -> torch.Tensor:
    angle = math.radians(degrees)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    c = torch.tensor(centre)
    return (points - c) @ rotation.T + c


def test_ffhq_quad_matches_hand_computation():
    # eye_avg (250, 200), eye_to_eye (100, 0), eye_to_mouth (0, 100):
    # x = (100, 0) - rot90(0, 100) = (200, 0), |x| = max(200, 180); c = (250, 210).
    quad = ffhq_quad(FIVE)
    expected = torch.tensor([[50.0, 10.0], [50.0, 410.0], [450.0, 410.0], [450.0, 10.0]])
    assert torch.allclose(quad, expected, atol=1e-4)
    # The crop's corner pixels sit half a crop-pixel inside the quad's corners.
    matrix = alignment_affine(FIVE, 400)
    corners = transform_points(expected, matrix)
    assert torch.allclose(corners, torch.tensor([[-0.5, -0.5], [-0.5, 399.5], [399.5, 399.5], [399.5, -0.5]]), atol=1e-3)


def test_68_and_5_point_alignment_agree():
    points68 = torch.zeros(68, 2)
    points68[36:42] = FIVE[0]
    points68[42:48] = FIVE[1]
    points68[48], points68[54] = FIVE[3], FIVE[4]
    assert torch.allclose(ffhq_quad(points68), ffhq_quad(FIVE))


def test_rotated_face_gives_rotated_quad():
    quad = ffhq_quad(rotate(FIVE, 30.0))
    top_edge = quad[3] - quad[0]
    assert math.isclose(math.degrees(math.atan2(top_edge[1], top_edge[0])), 30.0, abs_tol=1e-3)


def test_nan_landmarks_and_bad_shapes():
    with pytest.raises(NoFaceError):
        align_face(torch.rand(3, 64, 64), torch.full((68, 2), float("nan")), 64)
    with pytest.raises(ImageError):
        align_face(torch.rand(3, 64, 64), torch.zeros(7, 2), 64)
    with pytest.raises(ImageError):
        paste_back(torch.rand(3, 64, 64), torch.rand(2, 3, 32, 32), torch.zeros(1, 2, 3))


def test_feathered_mask_fades_to_zero_smoothly():
    mask = feathered_mask(256)
    assert mask[128, 128] == 1 and mask[0].abs().max() == 0 and mask[:, -1].abs().max() == 0
    assert mask.diff(dim=0).abs().max() < 0.06 and mask.diff(dim=1).abs().max() < 0.06


@pytest.mark.parametrize("degrees,offset", [(0.0, (0.0, 0.0)), (35.0, (0.0, 0.0)), (0.0, (-190.0, -150.0))])
def test_paste_back_has_no_visible_rectangle(degrees, offset):
    """Flat photo, flat restored crop: the blend must ramp, never step (also rotated / at the border)."""
    photo = torch.full((3, 500, 500), 0.2)
    points = rotate(FIVE, degrees) + torch.tensor(offset)
    crop, affine = align_face(photo, points, 128)
    result = paste_back(photo, torch.full_like(crop, 0.8), affine)
    change = (result - photo)[0]
    assert change.max() > 0.55  # the face centre is replaced
    steps = torch.maximum(change.diff(dim=0).abs().max(), change.diff(dim=1).abs().max())
    assert steps < 0.05, f"largest jump between neighbouring pixels {steps:.3f}"
    # Far from the face nothing changes.
    corner = 499
    far = transform_points(torch.tensor([[float(corner), float(corner)]]), affine)
    assert ((far < 0) | (far > 127)).any() and change[corner, corner] == 0


def test_round_trip_on_a_real_photo_keeps_photo_and_face(shared_data):
    from honestface.face import load_landmark_backend

    photo = load_image(sorted((shared_data / "lfw" / "Al_Gore").glob("*.jpg"))[0])
    backend = load_landmark_backend("dlib")
    points = backend.landmarks(photo[None])[0]
    crop, affine = align_face(photo, points, 512)
    assert crop.shape == (3, 512, 512) and affine.shape == (2, 3)
    result = paste_back(photo, crop, affine)
    # Outside the (warped) mask the photo is untouched, bit for bit.
    height, width = photo.shape[-2:]
    ones = torch.ones(1, 1, 512, 512)
    from honestface.face.align import warp
    support = warp(ones, invert_affine(affine)[None], (height, width), padding_mode="zeros")[0, 0]
    assert torch.equal(result[:, support == 0], photo[:, support == 0])
    assert (support == 0).any()
    # Inside, the resampled face equals the photo up to interpolation error.
    assert (result - photo).abs().mean() < 0.01
    # The face stays where it was: landmarks on the result match.
    again = backend.landmarks(result[None])[0]
    assert (again - points).norm(dim=-1).mean() < 1.5
    # Crop landmarks land where the FFHQ layout puts the eyes.
    in_crop = transform_points(points, affine)
    eyes_y = in_crop[36:48, 1].mean()
    assert 0.35 * 512 < eyes_y < 0.5 * 512


def test_align_face_is_differentiable():
    photo = torch.rand(3, 300, 300, requires_grad=True)
    crop, _ = align_face(photo, FIVE * 0.6, 64)
    crop.sum().backward()
    assert photo.grad is not None and photo.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def montage(shared_data):
    left = load_image(sorted((shared_data / "lfw" / "Al_Gore").glob("*.jpg"))[0])
    right = load_image(sorted((shared_data / "lfw" / "Adrien_Brody").glob("*.jpg"))[0])
    return torch.cat([left, right], dim=2)  # (3, 250, 500), one face in each half


def invert(crops: torch.Tensor) -> torch.Tensor:
    return 1.0 - crops


def test_restore_every_face_in_a_photo(montage, detector):
    calls = []
    result, faces = restore_faces_in_photo(montage, invert, detector, size=256,
                                           progress=lambda done, total: calls.append((done, total)))
    assert result.shape == montage.shape
    assert len(faces) == 2 and all(f.skipped == "" for f in faces)
    assert calls == [(1, 2), (2, 2)]
    for face in faces:
        x0, y0, x1, y1 = (int(v) for v in face.box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        # The face centre is replaced by the inverted crop (nearly 1 - photo).
        centre = (result[:, cy, cx] - (1 - montage[:, cy, cx])).abs().max()
        assert centre < 0.1
        assert face.crop.shape == (3, 256, 256) and face.affine.shape == (2, 3)
        assert torch.allclose(face.restored, 1 - face.crop)
        eyes_y = face.crop_landmarks[36:48, 1].mean()
        assert 0.35 * 256 < eyes_y < 0.5 * 256  # the FFHQ layout inside the crop
    # The photo corners (far from both faces) are untouched.
    assert torch.equal(result[:, :5, :5], montage[:, :5, :5])
    assert torch.equal(result[:, -5:, -5:], montage[:, -5:, -5:])


def test_restore_chosen_face_blend_and_landmark_backend(montage, detector):
    from honestface.face import load_landmark_backend

    result, faces = restore_faces_in_photo(montage, invert, detector, load_landmark_backend("dlib"),
                                           size=256, indices=[1])
    assert faces[0].skipped == "not in the chosen indices" and faces[1].skipped == ""
    # dlib's detector already fits dlib's 68 points in the same box: not fitted twice
    assert faces[1].landmarks.shape == (68, 2) and "landmarks_from" not in faces[1].extra
    x0, y0, x1, y1 = (int(v) for v in faces[0].box)
    assert torch.equal(result[:, y0:y1, x0:x1], montage[:, y0:y1, x0:x1])
    unchanged, _ = restore_faces_in_photo(montage, invert, detector, size=256, blend=0.0)
    assert (unchanged - montage).abs().max() < 1e-6
    with pytest.raises(HonestFaceError, match="out of range"):
        restore_faces_in_photo(montage, invert, detector, size=256, indices=[5])
    with pytest.raises(ImageError, match="restore_fn"):
        restore_faces_in_photo(montage, lambda x: x[:, :, :10], detector, size=256)


def test_photo_without_faces_is_returned_unchanged(detector):
    grey = torch.full((3, 120, 160), 0.5)
    result, faces = restore_faces_in_photo(grey, invert, detector, size=128)
    assert faces == [] and torch.equal(result, grey)


def test_paste_of_the_change_keeps_what_the_restorer_left_alone():
    """paste_faces(inputs=...): an unchanged crop leaves the photo exactly as it was (a big
    face keeps its detail), a changed one adds the warped change under the mask."""
    from honestface.face.align import align_face, paste_faces

    generator = torch.Generator().manual_seed(0)
    photo = torch.rand(3, 300, 260, generator=generator)  # detail finer than any crop can hold
    points = torch.tensor([[130.0 + 60 * math.cos(a), 150.0 + 70 * math.sin(a)]
                           for a in torch.linspace(0, 2 * math.pi, 69)[:68].tolist()])
    crops, affines = align_face(photo, points, 64)
    crops, affines = crops.reshape(1, 3, 64, 64), affines.reshape(1, 2, 3)
    mask = torch.ones(64, 64)
    same, alpha = paste_faces(photo, crops, affines, mask, inputs=crops)
    assert torch.equal(same, photo.clamp(0, 1)) and float(alpha.max()) > 0.99
    replaced, _ = paste_faces(photo, crops, affines, mask)
    assert float((replaced - photo).abs().max()) > 0.2  # the 64 px crop cannot carry the photo's detail
    brighter, alpha = paste_faces(photo * 0.5, crops * 0.5 + 0.1, affines, mask, inputs=crops * 0.5)
    inside = alpha > 0.999  # at the crop's border the change and the mask both fade
    torch.testing.assert_close(brighter[:, inside], (photo * 0.5 + 0.1)[:, inside], atol=2e-4, rtol=0)
    assert torch.equal(brighter[:, alpha == 0], (photo * 0.5)[:, alpha == 0])
    eight = (photo * 255).round().to(torch.uint8)
    kept, _ = paste_faces(eight, crops, affines, mask, inputs=crops)
    assert kept.dtype == torch.uint8 and torch.equal(kept, eight)
