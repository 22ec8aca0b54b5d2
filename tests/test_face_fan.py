"""FAN landmarks: face-alignment's network and decoding on local files (no download), our
differentiable crop, heatmaps and points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import CheckpointError, MissingModelFileError
from honestface.face import load_landmark_backend
from honestface.face.align import warp
from honestface.face.fan import FanLandmarks, fan_crop_affine, read_fan
from honestface.testing.make_tiny_models import FAN_WEIGHTS, write_fan
from honestface.testing.offline import network_disabled
from honestface.testing.random_weights import randomize_batchnorm_statistics

fan_models = pytest.importorskip("face_alignment.models")
fan_utils = pytest.importorskip("face_alignment.utils")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with the tiny FAN make_tiny_models writes (face-alignment's download
    format: a plain state dict named 2DFAN4-11f355bf06.pth.tar)."""
    root = tmp_path_factory.mktemp("models")
    path = write_fan(root / FAN_WEIGHTS, seed=0)
    network = fan_models.FAN(1).eval()
    network.load_state_dict(torch.load(path, weights_only=True))  # face-alignment's own loading
    return root, network


def test_the_file_is_face_alignments_network(models):
    root, network = models
    with network_disabled():
        backend = load_landmark_backend("fan", models_dir=root)
    assert isinstance(backend, FanLandmarks) and isinstance(backend.network, fan_models.FAN)
    crop = torch.rand(1, 3, 64, 64)  # fully convolutional: a small input checks the same weights
    with torch.no_grad():
        assert torch.equal(backend.network(crop)[-1], network(crop)[-1])


def test_points_are_face_alignments_decoding_in_photo_coordinates(models):
    root, network = models
    backend = load_landmark_backend("fan", models_dir=root, flip_input=False)
    images = torch.rand(2, 3, 300, 240)
    boxes = torch.tensor([[60.0, 80.0, 180.0, 220.0], [20.0, 30.0, 120.0, 150.0]])
    points, heatmaps, affine = backend.predict(images, boxes)
    assert points.shape == (2, 68, 2) and heatmaps.shape == (2, 68, 64, 64)
    # face-alignment maps decoded points to the photo with its own transform (centre, scale =
    # box sum / 195), truncating to whole pixels; ours are the same points without the truncation.
    decoded = backend._decode(heatmaps.numpy())
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)])
        theirs = torch.stack([fan_utils.transform(p, centre, (x1 - x0 + y1 - y0) / 195, 64, invert=True)
                              for p in torch.from_numpy(decoded[i])]).float()
        assert (points[i] - theirs).abs().max() < 1.0 + 1e-3
    # Independent: the heatmap argmax moves at most a quarter heatmap pixel from the point.
    flat = heatmaps.flatten(2).argmax(-1)
    hx, hy = (flat % 64).float(), (flat // 64).float()
    x0, y0, x1, y1 = boxes.unbind(-1)
    side = 200 * ((x1 - x0) + (y1 - y0)) / 195
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)
    scale = side / 256
    tolerance = (0.25 * 4 * scale)[:, None] + 1e-3
    assert ((points[..., 0] - (cx[:, None] + (4 * hx + 1.5 - 127.5) * scale[:, None])).abs() <= tolerance).all()
    assert ((points[..., 1] - (cy[:, None] + (4 * hy + 1.5 - 127.5) * scale[:, None])).abs() <= tolerance).all()
    # Fitting in boxes of one photo is the same computation.
    assert torch.allclose(backend.landmarks_in_boxes(images[0], boxes)[0], points[0], atol=1e-4)
    # The crop really is the network input.
    with torch.no_grad():
        direct = network(warp(images, fan_crop_affine(boxes), (256, 256), padding_mode="zeros"))[-1]
    assert torch.allclose(direct, heatmaps, atol=1e-5)


def test_photo_frame_heatmaps_put_each_peak_at_its_point(models):
    from honestface.face.fan import heatmaps_to_photo
    from honestface.face.heatmaps import render_gaussian_heatmaps

    torch.manual_seed(3)
    boxes = torch.tensor([[40.0, 40.0, 160.0, 160.0]])
    affine = fan_crop_affine(boxes)
    heat_points = torch.rand(1, 68, 2) * 40 + 12  # inside the 64x64 grid
    maps64 = render_gaussian_heatmaps(heat_points, 64, 64, sigma=1.5)
    photo = heatmaps_to_photo(maps64, affine, 200, 200)
    assert photo.shape == (1, 68, 200, 200)
    # Where each peak must land: heatmap -> crop (4 p + 1.5) -> photo (inverse crop transform).
    # Bilinear upsampling peaks at a heatmap pixel centre, so use the nearest one.
    crop_points = heat_points.round() * 4 + 1.5
    expected = (crop_points - affine[:, None, :, 2]) / affine[0, 0, 0]
    peak = photo.flatten(2).argmax(-1)
    peak_xy = torch.stack([peak % 200, peak // 200], -1).float()
    assert (peak_xy - expected).norm(dim=-1).max() < 1.5  # photo pixels are integers


def test_flip_averaging_makes_points_mirror_symmetric(models):
    root, _ = models
    backend = load_landmark_backend("fan", models_dir=root)  # flip_input=True, as face-alignment
    assert backend.flip_input
    width = 220
    image = torch.rand(1, 3, 180, width)
    box = torch.tensor([[50.0, 30.0, 150.0, 140.0]])
    mirrored_box = torch.tensor([[width - 1 - 150.0, 30.0, width - 1 - 50.0, 140.0]])
    points, _, _ = backend.predict(image, box)
    mirrored_points, _, _ = backend.predict(image.flip(-1), mirrored_box)
    expected = fan_utils.shuffle_lr(points[..., None])[..., 0].clone()  # left <-> right point indices
    expected[..., 0] = width - 1 - expected[..., 0]
    assert torch.allclose(mirrored_points, expected, atol=1e-3)


def test_no_face_gives_nan_and_gradients_flow_with_a_box(models):
    root, _ = models
    backend = load_landmark_backend("fan", models_dir=root)
    grey = torch.full((1, 3, 160, 160), 0.5)
    assert torch.isnan(backend.landmarks(grey)).all()
    assert backend.heatmaps(grey).abs().sum() == 0
    images = torch.rand(1, 3, 128, 128, requires_grad=True)
    _, heatmaps, _ = backend.predict(images, torch.tensor([[20.0, 20.0, 100.0, 100.0]]))
    heatmaps.sum().backward()
    assert images.grad.abs().sum() > 0


def test_aligned_mode_uses_the_aligned_face_box_and_no_detector(models, shared_data):
    """``detect=False`` (training on aligned crops): every image gets the FFHQ face box,
    the detector is never run, and a heavily degraded face the detector misses still gets
    landmarks, the same as with that box given explicitly."""
    from honestface.degradation import DegradationConfig, degrade
    from honestface.face.dlib_backend import ALIGNED_FACE_BOX
    from honestface.image_io import load_image, resize_to

    class NoDetector:
        def detect(self, image):
            raise AssertionError("the detector must not run on aligned crops")

    root, _ = models
    face = resize_to(load_image(sorted((shared_data / "celeba").glob("*/*.jpg"))[0])[None], 256)
    heavy = DegradationConfig(kernel_size=41, blur_sigma=(15.0, 15.0), downsample_scale=(30.0, 30.0),
                              noise_sigma=(20.0, 20.0), jpeg_quality=(30, 30))
    lq = degrade(face, heavy, generator=0)
    detecting = load_landmark_backend("fan", models_dir=root)
    assert torch.isnan(detecting.landmarks(lq)).all()  # the HOG detector misses it
    aligned = load_landmark_backend("fan", models_dir=root, detect=False, detector=NoDetector())
    box = torch.tensor([[v * 256 for v in ALIGNED_FACE_BOX]])
    assert torch.equal(aligned.face_boxes(lq), box)
    points = aligned.landmarks(lq)
    assert torch.isfinite(points).all()
    assert torch.equal(points, detecting.predict(lq, box)[0])
    assert aligned.heatmaps(lq).abs().sum() > 0


def test_torch_hub_cache_and_torchscript_archive(tmp_path, models, monkeypatch):
    """A file face-alignment downloaded earlier (torch hub cache) is used; so is the
    TorchScript archive older releases shipped."""
    _, network = models
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    randomize_batchnorm_statistics(network, mean_std=0.1)
    with pytest.warns(FutureWarning):  # tracing is deprecated, but old face-alignment files are traced
        traced = torch.jit.trace(network, torch.rand(1, 3, 64, 64), strict=False)
    traced.save(str(hub / "checkpoints" / "2DFAN4-cd938726ad.zip"))
    with network_disabled():
        backend = load_landmark_backend("fan", models_dir=tmp_path / "empty")
    crop = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backend.network(crop)[-1], network(crop)[-1], atol=1e-5)


def test_missing_and_wrong_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with network_disabled(), pytest.raises(MissingModelFileError) as info:
        load_landmark_backend("fan", models_dir=tmp_path)
    assert "2DFAN4-11f355bf06.pth.tar" in info.value.args[0]
    assert str(tmp_path / "face_alignment") in info.value.args[0] and "Nothing is downloaded" in info.value.args[0]
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(2)}, wrong)
    with pytest.raises(CheckpointError, match="FAN"):
        read_fan(wrong)
    short = tmp_path / "short.pth.tar"  # FAN keys, but a layer missing
    state = fan_models.FAN(1).state_dict()
    state.pop("l0.bias")
    torch.save(state, short)
    with pytest.raises(CheckpointError, match="FAN\\(1\\)"):
        read_fan(short)
