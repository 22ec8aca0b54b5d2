"""Synthetic degradation: reproducibility, ranges, shapes, monotone strength, real faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from honestface.degradation import (
    DegradationConfig,
    apply_degradation,
    blur,
    degrade,
    gaussian_kernels,
    jpeg_compress,
    sample_degradation_params,
)
from honestface.errors import ConfigError
from honestface.image_io import list_images, load_images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return 10 * np.log10(1.0 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def faces(shared_data) -> torch.Tensor:
    folder = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[0]
    return load_images(list_images(folder)[:3], size=128)


def smooth_images(batch: int = 2, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(batch, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def test_same_seed_same_output_and_different_seed_differs():
    images = smooth_images()
    a = degrade(images, generator=123)
    b = degrade(images, generator=torch.Generator().manual_seed(123))
    c = degrade(images, generator=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    n1 = degrade(images, generator=np.random.default_rng(5))
    n2 = degrade(images, generator=np.random.default_rng(5))
    assert torch.equal(n1, n2)


def test_noise_of_an_image_does_not_depend_on_its_batch():
    images = smooth_images(batch=3)
    params = sample_degradation_params(3, DegradationConfig(), generator=7)
    whole = apply_degradation(images, params)
    for index in range(3):
        one = type(params)(**{k: (v[index:index + 1] if v is not None else None) for k, v in vars(params).items()})
        alone = apply_degradation(images[index:index + 1], one)
        assert torch.allclose(alone[0], whole[index], atol=1e-6)


def test_shapes_ranges_and_quantisation():
    images = smooth_images(batch=4, size=48)
    config = DegradationConfig()
    out, params = degrade(images, config, generator=0, return_params=True)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    assert ((params.sigma_x >= 1) & (params.sigma_x <= 15)).all()
    assert ((params.scale >= 1) & (params.scale <= 30)).all()
    assert ((params.noise_sigma >= 0) & (params.noise_sigma <= 20)).all()
    assert ((params.jpeg_quality >= 30) & (params.jpeg_quality <= 90)).all()
    single = degrade(images[0], config, generator=0)
    assert single.shape == images[0].shape


def test_kernels_are_normalised_and_rotation_matters():
    sigma_x, sigma_y = torch.tensor([4.0, 4.0]), torch.tensor([1.0, 1.0])
    kernels = gaussian_kernels(sigma_x, sigma_y, torch.tensor([0.0, np.pi / 2]), 21)
    assert torch.allclose(kernels.sum(dim=(-2, -1)), torch.ones(2))
    # rotating by 90 degrees turns a horizontal ellipse into a vertical one
    assert torch.allclose(kernels[0], kernels[1].T, atol=1e-6)
    assert kernels[0][10, 14] > kernels[0][14, 10]


def test_fft_blur_equals_direct_convolution():
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    kernels = gaussian_kernels(torch.tensor([2.0, 5.0]), torch.tensor([3.0, 1.0]), torch.tensor([0.3, -1.0]), 15)
    padded = F.pad(images, (7, 7, 7, 7), mode="reflect")
    direct = torch.stack([
        F.conv2d(padded[i:i + 1].transpose(0, 1), kernels[i][None, None]).transpose(0, 1)[0] for i in range(2)
    ])
    assert torch.allclose(blur(images, kernels), direct, atol=1e-5)


def test_jpeg_lower_quality_loses_more():
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert psnr(jpeg_compress(images, 20), images) < psnr(jpeg_compress(images, 95), images)


def test_stronger_settings_degrade_real_faces_more(faces):
    levels = [
        DegradationConfig.fixed(blur_sigma=1.0, downsample_scale=1.0, noise_sigma=0.0, jpeg_quality=90),
        DegradationConfig.fixed(blur_sigma=3.0, downsample_scale=4.0, noise_sigma=8.0, jpeg_quality=60),
        DegradationConfig.fixed(blur_sigma=8.0, downsample_scale=12.0, noise_sigma=20.0, jpeg_quality=30),
    ]
    scores = [psnr(degrade(faces, config, generator=0), faces) for config in levels]
    assert scores[0] > scores[1] > scores[2]
    assert scores[0] > 27  # mild settings keep the face nearly intact


def test_config_round_trip_and_errors():
    config = DegradationConfig(blur_sigma=(0.5, 2), jpeg_quality=None)
    assert DegradationConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError):
        DegradationConfig(kernel_size=40)
    with pytest.raises(ConfigError):
        DegradationConfig(jpeg_quality=(50, 120))
    with pytest.raises(ConfigError):
        DegradationConfig.from_dict({"sigma": 3})
    with pytest.raises(ConfigError):
        DegradationConfig(downsample_scale=(4, 2))
