"""ArcFace: IResNet in PyTorch, insightface-style ONNX files run by insightface's ArcFaceONNX,
weight mapping both ways."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from honestface.errors import CheckpointError, MissingModelFileError
from honestface.face import load_identity_backend
from honestface.face.align import transform_points
from honestface.face.arcface import (
    ARCFACE_FIVE_POINTS,
    ArcFaceTorch,
    ffhq_to_recognition_affine,
    iresnet_from_onnx,
    recognition_crop,
)
from honestface.face.iresnet import IResNet
from honestface.testing.offline import network_disabled
from honestface.testing.random_weights import randomize_batchnorm_statistics

pytest.importorskip("onnx")

LAYERS = (1, 2, 1, 1)  # a shallow IResNet: same layer types and layout as r50/r100


def random_iresnet(seed: int = 0) -> IResNet:
    """IResNet with random weights *and* random BatchNorm statistics (so folding matters)."""
    torch.manual_seed(seed)
    model = IResNet(LAYERS).eval()
    randomize_batchnorm_statistics(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and "prelu" in name:
                parameter.uniform_(0.05, 0.4)
            elif parameter.dim() == 1 and name.endswith("weight"):
                parameter.uniform_(0.5, 1.5)
            elif parameter.dim() == 1:
                parameter.normal_(0.0, 0.1)
    return model


def export_insightface_onnx(model: IResNet, path) -> None:
    """Export like insightface's torch2onnx: TorchScript exporter, eval mode (BN folded into
    convolutions), opset 11, input 'input.1', dynamic batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 112, 112),), str(path), dynamo=False, opset_version=11,
                          input_names=["input.1"], do_constant_folding=True,
                          dynamic_axes={"input.1": {0: "batch"}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    model = random_iresnet()
    export_insightface_onnx(model, models / "insightface" / "models" / "testpack" / "w600k_r50.onnx")
    (models / "insightface" / "models" / "arcface_torch").mkdir()
    torch.save(model.state_dict(), models / "insightface" / "models" / "arcface_torch" / "arcface_r_test.pth")
    return models, model


def test_exported_graph_has_folded_batchnorms(exported):
    import onnx

    models, _ = exported
    graph = onnx.load(str(models / "insightface/models/testpack/w600k_r50.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # Every conv carries a bias (its BN folded in); only the BNs not after a conv remain.
    assert ops.count("BatchNormalization") == sum(LAYERS) + 2
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    assert all(len(n.input) == 3 for n in conv_nodes)


def test_onnx_weights_map_onto_a_fresh_pytorch_network(exported):
    models, original = exported
    mapped = iresnet_from_onnx(models / "insightface/models/testpack/w600k_r50.onnx")
    assert mapped.layers_config == LAYERS and mapped.num_features == 512
    # Unfolded tensors come back unchanged.
    for key in ("layer2.1.bn1.running_var", "fc.weight", "features.bias", "layer3.0.prelu.weight"):
        assert torch.allclose(mapped.state_dict()[key], original.state_dict()[key])
    # Folded convolutions equal conv * gamma / sqrt(var + eps), computed independently.
    bn = original.layer1[0].bn2
    folded = original.layer1[0].conv1.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[:, None, None, None]
    assert torch.allclose(mapped.layer1[0].conv1.weight, folded, atol=1e-6)
    images = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected, got = original(images), mapped(images)
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())


def test_insightface_and_pytorch_backends_agree(exported, tmp_path, monkeypatch):
    pytest.importorskip("insightface")
    models, original = exported
    monkeypatch.setenv("HOME", str(tmp_path))  # insightface's download root would be ~/.insightface
    with network_disabled():
        onnx_backend = load_identity_backend("arcface-onnx", models_dir=models, model="testpack/w600k_r50.onnx")
        torch_backend = load_identity_backend("arcface-torch", models_dir=models, model="testpack/w600k_r50.onnx")
        faces = torch.rand(2, 3, 256, 256)
        a, b = onnx_backend.embed(faces), torch_backend.embed(faces)
    assert not (tmp_path / ".insightface").exists()
    assert type(onnx_backend.model).__name__ == "ArcFaceONNX"
    assert a.shape == b.shape == (2, 512) and onnx_backend.embedding_dim == 512
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    # Independent: the original network on the ArcFace crop, normalised by hand.
    with torch.no_grad():
        direct = torch.nn.functional.normalize(original(recognition_crop(faces) * 2 - 1), dim=-1)
    assert torch.allclose(a, direct, atol=1e-4)
    # The convention: RGB, (pixel - 127.5) / 127.5, on the ArcFace-layout 112 crop.
    raw = load_identity_backend("arcface-torch", models_dir=models, model="testpack/w600k_r50.onnx",
                                input_alignment="arcface", normalize=False)
    crop = torch.rand(1, 3, 112, 112)
    pixels = (crop * 255).round()
    with torch.no_grad():
        direct = original((pixels - 127.5) / 127.5)
    assert torch.allclose(raw.embed(pixels / 255), direct, atol=1e-4 * direct.abs().max().item())


def test_files_that_normalise_inside_the_graph_get_raw_pixels(exported, tmp_path):
    """mxnet-converted ArcFace files subtract and scale inside the graph; insightface spots
    them (Sub and Mul among the first nodes) and feeds raw pixel values."""
    pytest.importorskip("insightface")
    import onnx

    _, original = exported

    class InGraphNormalisation(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = original

        def forward(self, pixels):
            return self.network((pixels - 127.5) * (1 / 127.5))

    path = tmp_path / "mxnet_style.onnx"
    export_insightface_onnx(InGraphNormalisation().eval(), path)
    model = onnx.load(str(path))
    for node in model.graph.node[:8]:
        if node.op_type in ("Sub", "Mul"):
            node.name = f"_{'minus' if node.op_type == 'Sub' else 'mul'}0"  # mxnet's node names
    onnx.save(model, str(path))
    backend = load_identity_backend("arcface-onnx", model=path, input_alignment="arcface", normalize=False)
    crop = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected = original(crop * 2 - 1)
    assert torch.allclose(backend.embed(crop), expected, atol=1e-4 * expected.abs().max().item())


def test_pth_weights_load_and_gradients_flow(exported):
    models, original = exported
    backend = load_identity_backend("arcface-torch", models_dir=models, model="arcface_torch/arcface_r_test.pth",
                                    input_alignment="arcface", normalize=False)
    assert isinstance(backend, ArcFaceTorch)
    faces = torch.rand(2, 3, 112, 112, requires_grad=True)
    embeddings = backend.embed(faces)
    with torch.no_grad():
        expected = original(faces * 2 - 1)
    assert torch.allclose(embeddings, expected, atol=1e-5 * expected.abs().max().item())
    embeddings.sum().backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    backend.train()
    assert not backend.network.training  # a frozen judge: BatchNorm statistics never move
    # Half-precision images (mixed-precision training) go through the float32 network.
    half = faces.detach().to(torch.bfloat16).requires_grad_(True)
    out = backend.embed(half)
    assert torch.allclose(out, expected, atol=0.05 * expected.abs().max().item())
    out.sum().backward()
    assert half.grad.dtype == torch.bfloat16 and half.grad.abs().sum() > 0


def test_ffhq_crop_maps_to_arcface_template(shared_data):
    folder = shared_data / "real_lq" / "reference_sets" / "obama"
    points = torch.from_numpy(np.loadtxt(folder / "refs_landmarks" / "o1.png.txt")).float()
    five = torch.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
    mapped = transform_points(five, ffhq_to_recognition_affine(512))
    error = (mapped - torch.tensor(ARCFACE_FIVE_POINTS)).norm(dim=-1)
    assert error[[0, 1]].max() < 3.0 and error.mean() < 4.0  # pixels of the 112 crop
    crop = recognition_crop(torch.rand(2, 3, 512, 512))
    assert crop.shape == (2, 3, 112, 112)


def test_bad_and_missing_weight_files(tmp_path):
    with network_disabled(), pytest.raises(MissingModelFileError) as info:
        load_identity_backend("arcface-onnx", models_dir=tmp_path)
    assert "w600k_r50.onnx" in info.value.args[0] and "insightface" in info.value.args[0]
    if importlib.util.find_spec("insightface") is not None:
        detector_file = tmp_path / "det.onnx"  # a network insightface routes to no recogniser
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.nn.Conv2d(3, 2, 3).eval(), (torch.rand(1, 3, 64, 64),), str(detector_file),
                              dynamo=False, opset_version=11)
        with pytest.raises(CheckpointError, match="ArcFaceONNX"):
            load_identity_backend("arcface-onnx", model=detector_file)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError):
        iresnet_from_onnx(broken)
    # An ONNX file of some other network is refused with a clear message.
    other = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                          (torch.rand(1, 3, 16, 16),), str(other), dynamo=False, opset_version=11)
    with pytest.raises(CheckpointError, match="IResNet"):
        iresnet_from_onnx(other)
    bad_pth = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(1)}, bad_pth)
    with pytest.raises(CheckpointError):
        load_identity_backend("arcface-torch", model=bad_pth)


@pytest.mark.slow
def test_full_size_iresnet50_round_trip(tmp_path):
    """The real IResNet-50 layout (3, 4, 14, 3) through the same export and mapping."""
    from honestface.face.iresnet import IRESNET_LAYERS

    torch.manual_seed(1)
    model = IResNet(IRESNET_LAYERS["r50"]).eval()
    randomize_batchnorm_statistics(model, mean_std=None)
    path = tmp_path / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx"
    export_insightface_onnx(model, path)
    mapped = iresnet_from_onnx(path)
    assert mapped.layers_config == (3, 4, 14, 3)
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected, got = model(images), mapped(images)
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())
    onnx_backend = load_identity_backend("arcface-onnx", models_dir=tmp_path)  # the default file name
    torch_backend = load_identity_backend("arcface-torch", models_dir=tmp_path)
    faces = torch.rand(1, 3, 512, 512)
    assert torch.allclose(onnx_backend.embed(faces), torch_backend.embed(faces), atol=1e-4)
