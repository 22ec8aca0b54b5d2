"""dlib's descriptor network in PyTorch: read from dlib's own file, checked against dlib."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import CheckpointError, HonestFaceError
from honestface.face import load_identity_backend
from honestface.face.dlib_backend import DESCRIPTOR_FILE, LANDMARKS_5_FILE, dlib_model_file, packaged_models_folder
from honestface.face.dlib_resnet import (
    CHIP_SIZE,
    DlibFaceResNet,
    add_zero_padded,
    dlib_chips,
    load_dlib_face_resnet,
    read_dlib_layers,
)
from honestface.image_io import load_images
from honestface.losses.identity import IdentityLoss

dlib = pytest.importorskip("dlib")
if packaged_models_folder() is None:
    pytest.skip("face_recognition_models is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def network() -> DlibFaceResNet:
    return load_dlib_face_resnet(dlib_model_file(DESCRIPTOR_FILE))


@pytest.fixture(scope="module")
def dlib_models():
    return (dlib.face_recognition_model_v1(str(dlib_model_file(DESCRIPTOR_FILE))),
            dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat"))),
            dlib.get_frontal_face_detector())


@pytest.fixture(scope="module")
def faces(shared_data) -> tuple[torch.Tensor, list[str]]:
    """(8, 3, 128, 128) aligned CelebA faces: 2 photos each of 4 people."""
    folders = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[:4]
    files = [f for folder in folders for f in sorted(folder.iterdir())[:2]]
    images = torch.nn.functional.interpolate(load_images(files), size=(128, 128), mode="bilinear",
                                             antialias=True, align_corners=False)
    return images, [f.parent.name for f in files]


def test_file_layers_and_input_mean(network):
    layers = read_dlib_layers(dlib_model_file(DESCRIPTOR_FILE))
    kinds = [layer.kind for layer in layers]
    assert len(layers) == 109 and kinds.count("con") == 29 and kinds.count("affine") == 29
    assert layers[0].fields == {"mean": pytest.approx((122.782, 117.001, 104.298), abs=1e-3),
                                "size": (CHIP_SIZE, CHIP_SIZE)}
    assert network.pixel_mean.flatten().tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-3)
    # every stored value lands in the network: 5.6 M float32 of the 22.5 MB file
    stored = sum(layer.params.size for layer in layers if layer.params is not None)
    assert sum(p.numel() for p in network.parameters()) == stored == 5_614_592


def test_descriptors_equal_dlibs_own(network, dlib_models, shared_data):
    """On the chips dlib cuts itself, the port gives dlib's descriptors to float precision."""
    recogniser, predictor, detector = dlib_models
    folders = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[4:7]
    chips, expected = [], []
    for path in [sorted(folder.iterdir())[0] for folder in folders] + [
            sorted((shared_data / "lfw" / "Al_Gore").glob("*.jpg"))[0]]:
        image = np.ascontiguousarray((load_images([path])[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        boxes = detector(image, 1)
        assert boxes, f"no face in {path.name}"
        chip = dlib.get_face_chip(image, predictor(image, boxes[0]), CHIP_SIZE, 0.25)
        chips.append(torch.from_numpy(chip.copy()).permute(2, 0, 1).float() / 255)
        expected.append(np.asarray(recogniser.compute_face_descriptor(chip)))
    with torch.no_grad():
        ours = network(torch.stack(chips)).numpy()
    expected = np.stack(expected)
    assert np.abs(ours - expected).max() < 1e-4
    assert np.linalg.norm(expected, axis=1).min() > 1.0  # real descriptors, not zeros


def test_backend_on_aligned_crops_matches_the_dlib_backend(faces):
    """The fixed FFHQ -> chip transform stands in for dlib's per-image alignment."""
    images, people = faces
    ours = load_identity_backend("dlib-torch").embed(images)
    theirs = load_identity_backend("dlib").embed(images)
    assert ours.shape == (8, 128)
    gap = (ours - theirs).norm(dim=1)
    assert gap.max() < 0.35, gap
    # same person closer than different people, as with dlib's own descriptors
    distances = torch.cdist(ours, ours)
    same = torch.tensor([[a == b for b in people] for a in people]) & ~torch.eye(8, dtype=torch.bool)
    different = torch.tensor([[a != b for b in people] for a in people])
    assert distances[same].mean() < 0.6 < distances[different].mean()


def test_identity_loss_gradient_reaches_the_image_only(faces):
    images, _ = faces
    backend = load_identity_backend("dlib-torch")
    loss = IdentityLoss([backend])
    target = images[:2]
    assert loss(target, target).abs().max() < 1e-5
    blurred = torch.nn.functional.avg_pool2d(target, 5, 1, 2, count_include_pad=False).requires_grad_(True)
    before = loss(blurred, target)
    before.sum().backward()
    assert blurred.grad is not None and blurred.grad.abs().sum() > 0
    assert all(p.grad is None for p in backend.parameters())
    stepped = (blurred - 0.002 * blurred.grad.sign()).detach()
    assert (loss(stepped, target) < before.detach()).all()  # the gradient points downhill
    backend.train()
    assert not backend.network.training


def test_add_zero_padded_against_explicit_padding():
    a = torch.randn(2, 32, 35, 35)
    b = torch.randn(2, 64, 33, 34)
    expected = torch.zeros(2, 64, 35, 35)
    expected[:, :32] += a
    expected[:, :, :33, :34] += b
    assert torch.equal(add_zero_padded(a, b), expected)
    assert torch.equal(add_zero_padded(b, a), expected)


def test_chip_transform_and_its_errors():
    images = torch.rand(2, 3, 96, 96)
    assert dlib_chips(images).shape == (2, 3, CHIP_SIZE, CHIP_SIZE)
    assert dlib_chips(torch.rand(1, 3, 150, 150), "dlib").shape == (1, 3, CHIP_SIZE, CHIP_SIZE)
    with pytest.raises(HonestFaceError, match="square"):
        dlib_chips(torch.rand(1, 3, 96, 80))
    with pytest.raises(HonestFaceError, match="input_alignment"):
        dlib_chips(images, "arcface")


def test_wrong_truncated_and_altered_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_dlib_face_resnet(tmp_path / "missing.dat")
    with pytest.raises(CheckpointError, match="not dlib's face descriptor network"):
        load_dlib_face_resnet(dlib_model_file(LANDMARKS_5_FILE))  # a dlib file, but a shape predictor
    data = dlib_model_file(DESCRIPTOR_FILE).read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_dlib_face_resnet(truncated)
    # the first convolution's stride set to 3: after "con_4", its tensor header (11 bytes),
    # 4736 float32 values, then filters, nr, nc (2 bytes each) and stride_y's control byte
    first_con = data.index(b"\x01\x05con_4") + 7
    assert data[first_con:first_con + 11] == b"\x01\x02\x02\x80\x12\x01\x01\x01\x01\x01\x01"
    stride_at = first_con + 11 + 4 * 4736 + 6 + 1
    assert data[stride_at - 1:stride_at + 1] == b"\x01\x02"
    altered = tmp_path / "altered.dat"
    altered.write_bytes(data[:stride_at] + b"\x03" + data[stride_at + 1:])
    with pytest.raises(CheckpointError, match="layer 1 \\(con\\): stride_y is 3, expected 2"):
        load_dlib_face_resnet(altered)
