"""dlib backends on real faces: landmarks, descriptors, detection and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import (
    HonestFaceError,
    ImageError,
    MissingModelFileError,
    NoFaceError,
)
from honestface.face import (
    load_face_detector,
    load_identity_backend,
    load_landmark_backend,
    require_landmarks,
)
from honestface.face.dlib_backend import dlib_model_file, packaged_models_folder
from honestface.image_io import load_image, load_images

pytest.importorskip("dlib")
if packaged_models_folder() is None:
    pytest.skip("face_recognition_models is not installed", allow_module_level=True)

LEFT_EYE, RIGHT_EYE, MOUTH = slice(36, 42), slice(42, 48), slice(48, 68)


@pytest.fixture(scope="module")
def landmarks():
    return load_landmark_backend("dlib")


@pytest.fixture(scope="module")
def obama(shared_data):
    folder = shared_data / "real_lq" / "reference_sets" / "obama"
    files = sorted((folder / "refs").glob("*.png"))[:4]
    images = load_images(files)
    reference = np.stack([np.loadtxt(folder / "refs_landmarks" / f"{f.name}.txt") for f in files])
    return images, torch.from_numpy(reference).float()


def test_landmarks_agree_with_obama_reference_landmarks(landmarks, obama):
    images, reference = obama
    points = landmarks.landmarks(images)
    assert points.shape == (4, 68, 2)
    error = (points - reference).norm(dim=-1)  # (B, 68) pixels on 512x512 crops
    # Jaw-line points are placed differently by different annotators; the inner face
    # (eyes, nose, mouth) must agree within a few pixels.
    inner = torch.cat([error[:, 27:48], error[:, 48:68]], dim=1)
    assert inner.mean() < 8.0, f"inner-face mean error {inner.mean():.2f} px"
    assert error.mean() < 15.0, f"mean error {error.mean():.2f} px"


def test_landmarks_on_lfw_photos_are_sane(landmarks, shared_data):
    files = [sorted((shared_data / "lfw" / name).glob("*.jpg"))[0] for name in ("Al_Gore", "Adrien_Brody")]
    points = landmarks.landmarks(load_images(files))
    require_landmarks(points)
    for face in points:
        left, right, mouth = face[LEFT_EYE].mean(0), face[RIGHT_EYE].mean(0), face[MOUTH].mean(0)
        assert left[0] < right[0]  # image-left eye first (iBUG order)
        assert mouth[1] > max(left[1], right[1]) + 10  # mouth below the eyes
        interocular = (right - left).norm()
        assert 20 < interocular < 120  # 250x250 news photos, face in the middle
        assert ((face > 40) & (face < 210)).all()


def test_heatmaps_peak_at_landmarks(landmarks, obama):
    images, _ = obama
    images = images[:1]
    points = landmarks.landmarks(images)
    maps = landmarks.heatmaps(images)
    assert maps.shape == (1, 68, 512, 512)
    peak = maps.flatten(2).argmax(-1)
    peak_xy = torch.stack([peak % 512, peak // 512], dim=-1).float()
    assert torch.allclose(peak_xy, points, atol=1.0)


def test_same_identity_descriptors_are_closer(shared_data):
    identity = load_identity_backend("dlib")
    people = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[:4]
    files, labels = [], []
    for label, person in enumerate(people):
        for f in sorted(person.glob("*.jpg"))[:3]:
            files.append(f)
            labels.append(label)
    embeddings = identity.embed(load_images(files))
    assert embeddings.shape == (len(files), 128) and torch.isfinite(embeddings).all()
    distances = torch.cdist(embeddings, embeddings)
    labels = torch.tensor(labels)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(files), dtype=torch.bool)
    same_mean = distances[same & off_diagonal].mean()
    different_mean = distances[~same].mean()
    assert same_mean < different_mean - 0.1, (same_mean, different_mean)


def test_no_face_in_flat_grey_image(landmarks):
    grey = torch.full((1, 3, 200, 200), 0.5)
    points = landmarks.landmarks(grey)
    assert torch.isnan(points).all()
    assert landmarks.heatmaps(grey).abs().sum() == 0
    with pytest.raises(NoFaceError):
        require_landmarks(points)
    assert load_face_detector("dlib").detect(grey[0]) == []


def test_landmarks_in_the_aligned_box_without_detection(landmarks, obama):
    """``detect=False`` (aligned crops): the points are fitted in the aligned face box; on
    aligned faces they agree with the detected ones."""
    images, _ = obama
    undetected = load_landmark_backend("dlib", detect=False)
    points = undetected.landmarks(images[:2])
    require_landmarks(points)
    inner = (points - landmarks.landmarks(images[:2])).norm(dim=-1)[:, 27:68]
    assert inner.mean() < 6.0, f"{inner.mean():.1f} px on 512 px crops"
    # a flat image has no face, but the aligned box is fitted all the same
    assert torch.isfinite(undetected.landmarks(torch.full((1, 3, 128, 128), 0.5))).all()


def test_tiny_face_is_found_and_consistent(landmarks, obama):
    images, _ = obama
    full = landmarks.landmarks(images[:1])
    small = torch.nn.functional.interpolate(images[:1], size=(64, 64), mode="area")
    points = landmarks.landmarks(small)
    require_landmarks(points)
    scaled_back = points * (512 / 64)
    error = (scaled_back - full).norm(dim=-1)[:, 27:68].mean()
    assert error < 20.0, f"{error:.1f} px at 512 scale"


def test_grayscale_photo(landmarks, shared_data):
    files = sorted((shared_data / "real_lq" / "gray").glob("*.png"))[:2]
    # Old grey photos stored as RGB; make them exactly grey (equal channels).
    images = load_images(files, size=512).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    require_landmarks(landmarks.landmarks(images))


def test_detector_finds_both_faces_in_a_montage(shared_data):
    left = load_image(sorted((shared_data / "lfw" / "Al_Gore").glob("*.jpg"))[0])
    right = load_image(sorted((shared_data / "lfw" / "Adrien_Brody").glob("*.jpg"))[0])
    montage = torch.cat([left, right], dim=2)  # (3, 250, 500)
    faces = load_face_detector("dlib").detect(montage)
    assert len(faces) == 2
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in faces)
    assert centres[0] < 250 < centres[1]
    for face in faces:
        assert face.landmarks.shape == (68, 2)
        x0, y0, x1, y1 = face.box
        inside = (face.landmarks[:, 0] > x0 - 20) & (face.landmarks[:, 0] < x1 + 20)
        assert inside.all()
    # Landmarks fitted in given boxes are the detector's own.
    fitted = load_landmark_backend("dlib").landmarks_in_boxes(montage, torch.tensor([f.box for f in faces]))
    assert np.allclose(fitted.numpy(), np.stack([f.landmarks for f in faces]))
    # Large photos are detected on a downscaled copy; boxes and landmarks come back at full size.
    small = load_face_detector("dlib", max_side=300).detect(montage)
    assert len(small) == 2
    for face in small:
        match = min(faces, key=lambda f: abs(f.box[0] - face.box[0]))
        centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        assert np.linalg.norm(centre(face.box) - centre(match.box)) < 15
        assert np.linalg.norm(face.landmarks - match.landmarks, axis=1).mean() < 4


def test_unreadable_file_and_bad_tensor(landmarks, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError):
        load_image(broken)
    with pytest.raises(ImageError):
        landmarks.landmarks(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ImageError):
        landmarks.landmarks(torch.full((1, 3, 32, 32), float("nan")))


def test_missing_model_file_names_file_and_folder(tmp_path):
    with pytest.raises(MissingModelFileError) as info:
        dlib_model_file("no_such_predictor.dat", models_dir=tmp_path)
    message = info.value.args[0]
    assert info.value.filename == "no_such_predictor.dat" and "no_such_predictor.dat" in message
    assert str(tmp_path / "dlib") in message and "facerestore_models" not in message


def test_unknown_backend_names():
    with pytest.raises(HonestFaceError, match="dlib"):
        load_landmark_backend("nope")
    with pytest.raises(HonestFaceError, match="arcface-onnx"):
        load_identity_backend("nope")
    with pytest.raises(HonestFaceError):
        load_face_detector("nope")
