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


# ----------------------------------------------------- statistics against independent formulas
def _uniform_moments_ok(values: np.ndarray, low: float, high: float) -> bool:
    """Mean and variance of U(low, high), (low + high) / 2 and (high - low)^2 / 12, within 5 standard errors."""
    n = len(values)
    mean, var = (low + high) / 2, (high - low) ** 2 / 12
    mean_ok = abs(values.mean() - mean) < 5 * np.sqrt(var / n)
    var_ok = abs(values.var() - var) < 5 * var * np.sqrt(0.8 / n)  # Var of the sample variance of a uniform: 0.8 var^2 / n
    return bool(mean_ok and var_ok and values.min() >= low and values.max() <= high)


def test_sampled_parameters_follow_the_vqfr_distributions():
    n = 20000
    params = sample_degradation_params(n, DegradationConfig(), generator=3)
    isotropic = (params.sigma_x == params.sigma_y) & (params.theta == 0)
    # VQFR: iso / aniso with probability 0.5 each; sigmas U(1, 15); rotation U(-pi, pi) for aniso
    assert abs(isotropic.double().mean().item() - 0.5) < 5 * np.sqrt(0.25 / n)
    assert _uniform_moments_ok(params.sigma_x.double().numpy(), 1.0, 15.0)
    assert _uniform_moments_ok(params.sigma_y[~isotropic].double().numpy(), 1.0, 15.0)
    assert _uniform_moments_ok(params.theta[~isotropic].double().numpy(), -np.pi, np.pi)
    assert _uniform_moments_ok(params.scale.double().numpy(), 1.0, 30.0)
    assert _uniform_moments_ok(params.noise_sigma.double().numpy(), 0.0, 20.0)
    quality = params.jpeg_quality.numpy()
    assert quality.min() == 30 and quality.max() == 90 and quality.dtype == np.int64
    # grayscale with VQFR's gray_prob 0.01
    assert abs(params.gray.double().mean().item() - 0.01) < 5 * np.sqrt(0.01 * 0.99 / n)


def test_kernels_are_the_bivariate_gaussian_with_the_rotated_covariance():
    """Against the density formula exp(-x^T S^-1 x / 2) with S = R diag(sx^2, sy^2) R^T
    (basicsr's ``bivariate_Gaussian``), and the kernels' second moments against S."""
    sigma_x = torch.tensor([1.5, 3.0, 4.0, 2.0])
    sigma_y = torch.tensor([1.5, 1.0, 2.5, 3.5])
    theta = torch.tensor([0.0, 0.4, -2.0, 2.9])
    size = 41
    kernels = gaussian_kernels(sigma_x, sigma_y, theta, size).double().numpy()
    half = size // 2
    xs, ys = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))  # x along columns, y down rows
    grid = np.stack([xs, ys], axis=-1).astype(np.float64)
    for kernel, sx, sy, t in zip(kernels, sigma_x.tolist(), sigma_y.tolist(), theta.tolist()):
        rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        covariance = rotation @ np.diag([sx**2, sy**2]) @ rotation.T
        density = np.exp(-0.5 * np.einsum("...i,ij,...j->...", grid, np.linalg.inv(covariance), grid))
        np.testing.assert_allclose(kernel, density / density.sum(), atol=1e-7)
        mean = np.einsum("hw,hwi->i", kernel, grid)
        second = np.einsum("hw,hwi,hwj->ij", kernel, grid, grid)
        np.testing.assert_allclose(mean, 0.0, atol=1e-6)
        np.testing.assert_allclose(second, covariance, rtol=2e-3, atol=2e-3)  # the lattice sum of a Gaussian


def test_noise_is_zero_mean_per_channel_with_the_drawn_standard_deviation():
    """Colour noise (VQFR's default, not gray noise): per channel N(0, (sigma/255)^2), channels independent."""
    from honestface.degradation import add_gaussian_noise

    flat = torch.full((2, 3, 256, 256), 0.5)
    sigma = torch.tensor([5.0, 20.0])
    noise = (add_gaussian_noise(flat, sigma, seeds=torch.tensor([11, 12])) - flat).double()
    n = 256 * 256
    for image, s in zip(noise, sigma.tolist()):
        std = s / 255.0
        for channel in image:
            assert abs(channel.mean().item()) < 5 * std / np.sqrt(n)
            assert abs(channel.std().item() / std - 1) < 5 * np.sqrt(0.5 / n)
        correlation = np.corrcoef(image.reshape(3, -1).numpy())
        assert np.abs(correlation - np.eye(3)).max() < 5 / np.sqrt(n)
    assert abs(np.corrcoef(noise[0, 0].flatten(), noise[1, 0].flatten())[0, 1]) < 5 / np.sqrt(n)  # per-image seeds


def test_grayscale_lq_comes_with_a_grayscale_ground_truth(faces):
    from honestface.degradation import degrade_pair

    always = DegradationConfig.fixed(blur_sigma=2.0, downsample_scale=2.0, noise_sigma=3.0, jpeg_quality=70,
                                     gray_probability=1.0)
    lq, gt, params = degrade_pair(faces, always, generator=5)
    assert params.gray.all()
    luma = 0.299 * faces[:, 0] + 0.587 * faces[:, 1] + 0.114 * faces[:, 2]  # BT.601, OpenCV's BGR2GRAY
    for channel in range(3):
        assert torch.allclose(gt[:, channel], luma, atol=1e-6)
        assert torch.equal(lq[:, channel], lq[:, 0])
    # the LQ is the colour LQ of the same draw, converted before the 8-bit rounding
    colour_params = sample_degradation_params(len(faces), always, generator=5)
    colour_params.gray = torch.zeros(len(faces), dtype=torch.bool)
    colour = apply_degradation(faces, colour_params, replace_quantize(always))
    expected = ((0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]).clamp(0, 1) * 255).round() / 255
    assert torch.allclose(lq[:, 0], expected, atol=1e-6)
    # gray_ground_truth off: the ground truth keeps its colours; never gray: nothing changes
    _, kept, _ = degrade_pair(faces, DegradationConfig.fixed(2.0, 2.0, 3.0, 70, gray_probability=1.0,
                                                             gray_ground_truth=False), generator=5)
    assert torch.equal(kept, faces)
    lq_colour, gt_colour, params = degrade_pair(faces, DegradationConfig.fixed(2.0, 2.0, 3.0, 70), generator=5)
    assert not params.gray.any() and torch.equal(gt_colour, faces) and not torch.equal(lq_colour[:, 0], lq_colour[:, 1])
    with pytest.raises(ConfigError, match="gray_probability"):
        DegradationConfig(gray_probability=1.5)


def replace_quantize(config: DegradationConfig) -> DegradationConfig:
    from dataclasses import replace

    return replace(config, quantize=False)


def test_downsample_modes_are_drawn_per_image_and_applied():
    import torch.nn.functional as F

    from honestface.degradation import DegradationConfig, apply_degradation, sample_degradation_params

    config = DegradationConfig(kernel_size=3, blur_sigma=(0.1, 0.1), downsample_scale=(4.0, 4.0),
                               noise_sigma=(0.0, 0.0), jpeg_quality=None, resize_back=False, quantize=False,
                               gray_probability=0.0, downsample_modes=("bilinear", "bicubic", "area"))
    params = sample_degradation_params(300, config, generator=0)
    counts = torch.bincount(params.downsample_mode, minlength=3)
    assert bool((counts > 70).all()), counts
    images = torch.rand(3, 3, 32, 32)
    picks = [int(torch.nonzero(params.downsample_mode == m)[0]) for m in range(3)]
    chosen = type(params)(**{k: (v[picks] if isinstance(v, torch.Tensor) and v.numel() else v)
                             for k, v in vars(params).items()})
    out = apply_degradation(images, chosen, config)
    from honestface.degradation import blur, gaussian_kernels

    blurred = blur(images, gaussian_kernels(chosen.sigma_x, chosen.sigma_y, chosen.theta, 3))
    expected = [F.interpolate(blurred[0:1], size=(8, 8), mode="bilinear", align_corners=False),
                F.interpolate(blurred[1:2], size=(8, 8), mode="bicubic", align_corners=False, antialias=True),
                F.interpolate(blurred[2:3], size=(8, 8), mode="area")]
    torch.testing.assert_close(out, torch.cat(expected).clamp(0, 1), atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="downsample_modes"):
        DegradationConfig(downsample_modes=("nearest",))
