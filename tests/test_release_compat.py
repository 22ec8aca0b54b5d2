"""OSDFace-release-compatible inference (``restore --release-compat``, ``restore(release_compat=True)``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.cli import main
from honestface.image_io import list_images, load_image, save_image
from honestface.release_compat import release_quantize, release_resize
from honestface.testing import make_tiny_models as tiny
from honestface.testing.offline import network_disabled


def _bilinear_align_corners(image: np.ndarray, size: int) -> np.ndarray:
    """Independent bilinear resize with corner pixels aligned: output pixel i samples the
    input at i * (H - 1) / (size - 1) and interpolates its two neighbours (per axis)."""
    def axis(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(size) * (length - 1) / (size - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, length - 1)
        return low, high, position - low

    (y0, y1, wy), (x0, x1, wx) = axis(image.shape[1]), axis(image.shape[2])
    top = image[:, y0][:, :, x0] * (1 - wx) + image[:, y0][:, :, x1] * wx
    bottom = image[:, y1][:, :, x0] * (1 - wx) + image[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


@pytest.mark.parametrize("source, size", [(37, 128), (512, 128), (96, 64)])
def test_release_resize_is_bilinear_with_aligned_corners(source, size):
    image = torch.rand(1, 3, source, source, generator=torch.Generator().manual_seed(source))
    expected = _bilinear_align_corners(image[0].double().numpy(), size)
    np.testing.assert_allclose(release_resize(image, size)[0].numpy(), expected, atol=5e-5)  # float32 positions
    # corners are kept exactly (what align_corners=True means)
    assert torch.equal(release_resize(image, size)[0, :, [0, -1]][:, :, [0, -1]], image[0, :, [0, -1]][:, :, [0, -1]])


def test_release_quantize_writes_the_bytes_of_torchvision_to_pil_image(tmp_path):
    from torchvision.transforms.functional import to_pil_image

    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))
    image[0, 0, :4] = torch.tensor([0.0, 1.0, 0.999, 254.6 / 255])  # edge values
    expected = np.asarray(to_pil_image(image))  # the release's conversion
    written = save_image(release_quantize(image), tmp_path / "q.png")
    assert np.array_equal(np.asarray(load_image(written).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                          expected)
    # the default conversion rounds instead, so it differs from the release on most pixels
    rounded = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert (rounded != expected).mean() > 0.3


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny.make_tiny_models(root, seed=0)
    return root


def _restore(models, inputs, output, *extra):
    with network_disabled():
        return main(["restore", str(inputs), *extra, "--sd", "tiny-sd21-base.safetensors",
                     "--weights", "honestface-tiny.safetensors", "--osdface", "osdface-tiny",
                     "--models-dir", str(models), "-o", str(output), "--no-progress", "-q"])


def test_cli_release_compat_samples_the_latent_and_writes_the_model_size(models, tmp_path, capsys):
    from honestface.loaders.checkpoint import config_from_checkpoint

    size = config_from_checkpoint(models / "honestface" / "honestface-tiny.safetensors").image_size
    generator = torch.Generator().manual_seed(0)
    for name, side in (("a", 96), ("b", 48)):
        image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=side,
                                                mode="bilinear", align_corners=False)[0]
        save_image(image, tmp_path / "lq" / f"{name}.png")
    results = {}
    for label, extra in (("seed0", ["--aligned", "--release-compat"]),
                         ("seed1", ["--aligned", "--release-compat", "--seed", "1"]), ("default", ["--aligned"])):
        assert _restore(models, tmp_path / "lq", tmp_path / label, *extra) == 0
        results[label] = {p.stem: load_image(p) for p in list_images(tmp_path / label)}
    for name, side in (("a", 96), ("b", 48)):
        assert results["seed0"][name].shape == (3, size, size)  # always the model size
        assert results["default"][name].shape == (3, side, side)  # the input size
        assert not torch.equal(results["seed0"][name], results["seed1"][name])  # the latent is a sample

    save_image(torch.rand(3, 40, 60), tmp_path / "photo" / "wide.png")
    capsys.readouterr()
    # the release restores every input as an aligned crop: so does --release-compat, whatever
    # auto (or --whole) would have decided, at the model size
    assert _restore(models, tmp_path / "photo", tmp_path / "out_photo", "--release-compat") == 0
    assert load_image(tmp_path / "out_photo" / "wide.png").shape == (3, size, size)
    assert _restore(models, tmp_path / "photo", tmp_path / "out_whole", "--whole", "--release-compat") == 0
    assert load_image(tmp_path / "out_whole" / "wide.png").shape == (3, size, size)


def test_release_mode_on_real_crops_with_the_nano_model(shared_data):
    """honestface-nano is a 128 px model: release mode resizes the 512 crops to 128 and
    returns 128 px faces on the 8-bit levels the release writes; the model's latent mode
    is left as it was."""
    from honestface.cli.restore import build_pipeline

    paths = list_images(shared_data / "real_lq" / "pairs" / "lq")[:2]
    lq = torch.stack([load_image(p) for p in paths])
    pipeline = build_pipeline(None, "honestface-nano.safetensors")
    assert pipeline.image_size == 128
    restored = pipeline.restore(lq, generator=torch.Generator().manual_seed(0), release_compat=True)
    assert restored.shape == (2, 3, 128, 128)
    assert torch.equal(restored * 255, (restored * 255).round())
    assert pipeline.model.restorer.config.latent_mode == "mode"
    again = pipeline.restore(lq, generator=torch.Generator().manual_seed(0), release_compat=True)
    assert torch.equal(restored, again)  # the generator decides the sample
    default = pipeline.restore(lq, generator=torch.Generator().manual_seed(0))
    assert default.shape == (2, 3, 512, 512)
    assert torch.equal(default, pipeline.restore(lq, generator=torch.Generator().manual_seed(5)))  # mode latent
