"""Golden checks of the training-time LPIPS (VGG) and DISTS against their reference packages.

``lpips`` (Zhang et al.) and ``dists-pytorch`` (Ding et al.) are the authors' PyPI
releases. Their learned heads ship inside the packages (lpips ``weights/v0.1/vgg.pth``,
DISTS ``weights.pt``) and are the real ones; our builders read the same files, copied into
a models folder under the names our losses look up. The VGG16 backbone is one random
network (torchvision layout) loaded into all of them, so nothing is downloaded: the
packages are built with their ImageNet download switched off.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from honestface.losses.perceptual import DISTS_FILE, LPIPS_FILE, VGG16_FILE, build_dists, build_lpips

lpips = pytest.importorskip("lpips")
DISTS_pytorch = pytest.importorskip("DISTS_pytorch")


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _vgg16_trunk(pretrained: bool = False, **_) -> SimpleNamespace:
    """What the packages take from ``torchvision.models.vgg16(...)``: its ``features``,
    built without weights (and without the large classifier, which they do not use)."""
    from torchvision.models.vgg import cfgs, make_layers

    return SimpleNamespace(features=make_layers(cfgs["D"], batch_norm=False))


def _random_vgg16_features() -> dict[str, torch.Tensor]:
    """torchvision's VGG16 ``features.*`` weights, random (torchvision's initialisation)."""
    torch.manual_seed(0)
    return {f"features.{k}": v.clone() for k, v in _vgg16_trunk().features.state_dict().items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with the random VGG16 and the packages' own head files."""
    root = tmp_path_factory.mktemp("models")
    folder = root / "honestface"
    folder.mkdir()
    vgg = _random_vgg16_features()
    torch.save(vgg, folder / VGG16_FILE)
    (folder / LPIPS_FILE).write_bytes(_package_file("lpips", "weights/v0.1/vgg.pth").read_bytes())
    (folder / DISTS_FILE).write_bytes(_package_file("DISTS_pytorch", "weights.pt").read_bytes())
    return root, vgg


def _load_trunk(layers: dict[str, torch.nn.Module], vgg: dict[str, torch.Tensor]) -> None:
    """Copy torchvision ``features.N`` weights into a package's slices, whose modules keep
    the index N as their name."""
    loaded = 0
    for index, layer in layers.items():
        if isinstance(layer, torch.nn.Conv2d):
            layer.weight.data.copy_(vgg[f"features.{index}.weight"])
            layer.bias.data.copy_(vgg[f"features.{index}.bias"])
            loaded += 1
    assert loaded == 13  # every convolution of VGG16


def _indexed_layers(slices) -> dict[str, torch.nn.Module]:
    return {name: module for block in slices for name, module in block.named_children()}


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, 64, 64, generator=generator, dtype=torch.float32)
    b = (a + 0.15 * torch.randn(a.shape, generator=generator, dtype=torch.float32)).clamp(0, 1)
    return a, b


def test_lpips_vgg_matches_the_lpips_package(models, monkeypatch):
    root, vgg = models
    ours = build_lpips(pretrained=True, models_dir=root)
    # pnet_rand: torchvision's VGG16 without its ImageNet download; the lin layers are
    # the package's v0.1 file
    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16", _vgg16_trunk)
    reference = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    net = reference.net
    _load_trunk(_indexed_layers([net.slice1, net.slice2, net.slice3, net.slice4, net.slice5]), vgg)
    reference = reference.eval()
    a, b = _images(0)
    with torch.no_grad():
        expected = reference(a, b, normalize=True).flatten()  # [0, 1] inputs
        got = ours(a, b)
    assert expected.min() > 1e-3  # a real, non-trivial distance
    assert torch.allclose(got, expected, rtol=2e-5, atol=1e-7), (got, expected)
    assert torch.allclose(ours(a, a), torch.zeros(2), atol=1e-7)


def test_dists_matches_the_dists_pytorch_package(models, monkeypatch):
    root, vgg = models
    ours = build_dists(pretrained=True, models_dir=root)
    # the package builds torchvision's vgg16(pretrained=True), which downloads: build it
    # without weights instead, then load the shared random trunk and the shipped alpha/beta
    monkeypatch.setattr(DISTS_pytorch.DISTS_pt.models, "vgg16", _vgg16_trunk)
    reference = DISTS_pytorch.DISTS(load_weights=False)
    weights = torch.load(_package_file("DISTS_pytorch", "weights.pt"), map_location="cpu", weights_only=True)
    reference.alpha.data, reference.beta.data = weights["alpha"], weights["beta"]
    stages = [reference.stage1, reference.stage2, reference.stage3, reference.stage4, reference.stage5]
    _load_trunk(_indexed_layers(stages), vgg)
    reference = reference.eval()
    a, b = _images(1)
    with torch.no_grad():
        expected = reference(a, b)
        got = ours(a, b)
    assert expected.min() > 1e-3
    assert torch.allclose(got, expected, rtol=2e-5, atol=1e-7), (got, expected)
    # DISTS is symmetric, and the EA-DISTS image term is DISTS(x_H, x_hat)
    assert torch.allclose(ours(b, a), expected, rtol=2e-5, atol=1e-7)
