"""Masked face alignment (Eq. 10-13): mask, blend, loss, previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import ImageError
from honestface.mfa import (
    NEUTRAL_BACKGROUND,
    MaskedFaceAlignmentLoss,
    mask_overlay,
    mask_to_image,
    mfa_blend,
    mfa_loss,
    mfa_mask,
)

POINTS = [(20.0, 24.0), (44.0, 24.0), (32.0, 36.0), (24.0, 48.0), (40.0, 48.0)]  # eyes, nose, mouth corners


def gaussian_heatmaps(points, size=64, sigma=2.0, batch=1) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    maps = [torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points]
    return torch.stack(maps).unsqueeze(0).repeat(batch, 1, 1, 1)


class RandomPerceptualNet(torch.nn.Module):
    """An LPIPS-shaped distance (unit-normalised deep features, spatial mean) with random weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for layer in self.layers:
            a, b = torch.relu(layer(a)), torch.relu(layer(b))
            na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (na - nb).pow(2).sum(1).mean(dim=(1, 2))
        return total


def test_mask_matches_eq_11_computed_independently():
    heatmaps = gaussian_heatmaps(POINTS, batch=2)
    heatmaps[1] *= 0.3  # a weaker second image: normalisation is per image
    mask = mfa_mask(heatmaps, k=10.0, eps=1e-6)
    for b in range(2):
        raw = heatmaps[b].numpy().mean(axis=0)
        s = 1 - np.exp(-10.0 * raw)
        expected = (s - s.min()) / (s.max() - s.min() + 1e-6)
        np.testing.assert_allclose(mask[b, 0].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_mask_is_in_unit_range_and_peaks_at_the_features():
    mask = mfa_mask(gaussian_heatmaps(POINTS).float())
    assert mask.shape == (1, 1, 64, 64)
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert float(mask.max()) == pytest.approx(1.0, abs=1e-4)
    for x, y in POINTS:
        assert float(mask[0, 0, int(y), int(x)]) > 0.95
    assert float(mask[0, 0, 2, 2]) < 1e-3 and float(mask[0, 0, 60, 60]) < 1e-3
    peak = int(mask[0, 0].argmax())
    assert (peak % 64, peak // 64) in {(int(x), int(y)) for x, y in POINTS}


def test_larger_k_widens_and_saturates_the_mask():
    heatmaps = gaussian_heatmaps(POINTS)
    areas = [float((mfa_mask(heatmaps, k=k) > 0.5).float().mean()) for k in (1.0, 10.0, 100.0, 1000.0)]
    assert areas[0] < areas[1] < areas[2] < areas[3]
    # Saturation: with a huge k the attended blobs are flat at ~1 over a wide disc.
    saturated = mfa_mask(heatmaps, k=1000.0)
    x, y = POINTS[2]
    assert float(saturated[0, 0, int(y) + 3, int(x)]) > 0.99
    assert float(mfa_mask(heatmaps, k=1.0)[0, 0, int(y) + 3, int(x)]) < 0.6


def test_mask_resizes_and_handles_empty_heatmaps():
    mask = mfa_mask(gaussian_heatmaps(POINTS), size=(128, 128))
    assert mask.shape == (1, 1, 128, 128)
    assert float(mask[0, 0, 48, 40]) > 0.9  # point (20, 24) at twice the resolution
    empty = mfa_mask(torch.zeros(1, 68, 16, 16))
    assert torch.equal(empty, torch.zeros(1, 1, 16, 16))


def test_blend_follows_eq_12():
    torch.manual_seed(1)
    image = torch.rand(2, 3, 8, 8)
    mask = torch.rand(2, 1, 8, 8)
    blended = mfa_blend(image, mask)
    torch.testing.assert_close(blended, mask * image + (1 - mask) * NEUTRAL_BACKGROUND)
    torch.testing.assert_close(mfa_blend(image, torch.ones(2, 1, 8, 8)), image)
    torch.testing.assert_close(mfa_blend(image, torch.zeros(2, 1, 8, 8), 0.25), torch.full_like(image, 0.25))


@torch.no_grad()
def test_loss_ignores_changes_outside_the_mask_and_sees_changes_inside():
    torch.manual_seed(2)
    lpips = RandomPerceptualNet()
    target = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    assert float(mfa_loss(target, target, mask, lpips)) == pytest.approx(0.0, abs=1e-10)

    outside = target.clone()
    outside[..., :6, :] = torch.rand(1, 3, 6, 32)
    assert float(mfa_loss(outside, target, mask, lpips)) == pytest.approx(0.0, abs=1e-10)
    assert float(lpips(outside, target)) > 1e-3  # the unmasked loss does see it

    inside = target.clone()
    inside[..., 12:20, 12:20] = torch.rand(1, 3, 8, 8)
    assert float(mfa_loss(inside, target, mask, lpips)) > 1e-3


def test_loss_gradients_reach_the_restored_image_only_through_the_mask():
    torch.manual_seed(3)
    lpips = RandomPerceptualNet()
    heatmaps = gaussian_heatmaps([(p[0] / 2, p[1] / 2) for p in POINTS], size=32).float()
    restored = torch.rand(2, 3, 32, 32, requires_grad=True)
    target = torch.rand(2, 3, 32, 32)
    module = MaskedFaceAlignmentLoss(lpips, k=10.0)
    loss = module(restored, target, heatmaps=heatmaps.repeat(2, 1, 1, 1))
    mask = mfa_mask(heatmaps.repeat(2, 1, 1, 1), k=10.0)
    assert float(loss.detach()) == pytest.approx(float(mfa_loss(restored, target, mask, lpips).detach()), rel=1e-6)
    loss.backward()
    grad = restored.grad.abs().sum(1, keepdim=True)
    assert bool((mask == 0).any()) and float(grad[mask == 0].max()) == 0.0
    assert float(grad[mask > 0.5].mean()) > 0.0
    per_image = mfa_loss(restored, target, mask, lpips, reduction="none")
    assert per_image.shape == (2,)


def test_previews_and_errors():
    image = torch.rand(1, 3, 16, 16)
    mask = mfa_mask(gaussian_heatmaps([(8.0, 8.0)], size=16).float())
    grey = mask_to_image(mask)
    assert grey.shape == (1, 3, 16, 16) and torch.equal(grey[:, 0], grey[:, 2])
    overlay = mask_overlay(image, mask, color=(1.0, 0.0, 0.0), alpha=1.0)
    assert overlay.shape == image.shape and float(overlay.min()) >= 0 and float(overlay.max()) <= 1
    torch.testing.assert_close(overlay[0, :, 8, 8], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(overlay[0, :, 0, 0], image[0, :, 0, 0], atol=1e-3, rtol=0)
    with pytest.raises(ImageError):
        mfa_mask(torch.rand(68, 16, 16))
    with pytest.raises(ValueError):
        mfa_mask(torch.rand(1, 68, 16, 16), k=0.0)
    with pytest.raises(ImageError):
        mfa_blend(torch.rand(2, 3, 8, 8), torch.rand(3, 1, 8, 8))
    with pytest.raises(ImageError):
        mfa_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), torch.rand(1, 1, 8, 8), RandomPerceptualNet())


# ------------------------------------------------------------ sharpening scale (issue: k = 10)
def _real_gaussian_heatmaps(shared_data):
    """Gaussians (dlib backend's rendering, sigma 8 px at 512) at real 68-point landmarks
    read from the Obama reference set's landmark files."""
    from honestface.face.heatmaps import render_gaussian_heatmaps

    folder = shared_data / "real_lq" / "reference_sets" / "obama" / "refs_landmarks"
    points = [np.loadtxt(path, dtype=np.float32) for path in sorted(folder.glob("*.txt"))[:3]]
    return render_gaussian_heatmaps(torch.from_numpy(np.stack(points)), 512, 512)


def _eq_10_11(heatmaps: np.ndarray, k: float, eps: float, normalize_raw: bool) -> np.ndarray:
    raw = np.clip(heatmaps.astype(np.float64).mean(axis=1), 0, None)  # (B, H, W)
    if normalize_raw:
        raw = raw / np.maximum(raw.reshape(len(raw), -1).max(axis=1), eps)[:, None, None]
    sharp = 1.0 - np.exp(-k * raw)
    low = sharp.reshape(len(raw), -1).min(axis=1)[:, None, None]
    high = sharp.reshape(len(raw), -1).max(axis=1)[:, None, None]
    return (sharp - low) / (high - low + eps)


def test_eq_11_with_k_10_is_nearly_linear_on_real_gaussians_unless_m_raw_is_normalised(shared_data):
    heatmaps = _real_gaussian_heatmaps(shared_data)
    assert torch.allclose(heatmaps.flatten(2).amax(2), torch.ones(3, 68), atol=0.02)  # each peaks at ~1
    peak = heatmaps.mean(1).flatten(1).amax(1)
    assert (peak < 0.15).all()  # ... but their mean peaks far below 1
    raw = heatmaps.double().mean(1).numpy()
    low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    linear = (raw - low) / (high - low)  # the k -> 0 limit of Eq. 11: min-max of M_raw
    for normalize_raw in (False, True):
        mask = mfa_mask(heatmaps, k=10.0, normalize_raw=normalize_raw)[:, 0].double().numpy()
        np.testing.assert_allclose(mask, _eq_10_11(heatmaps.numpy(), 10.0, 1e-6, normalize_raw), atol=1e-5)
        deviation = np.abs(mask - linear).reshape(3, -1).max(axis=1)
        if normalize_raw:
            assert (deviation > 0.5).all()  # k = 10 now bends the mask hard
        else:
            assert (deviation < 0.12).all()  # as written: within 0.12 of a linear ramp (0.06 measured)
    # The default is Eq. 11 as written, and the normalised mask does not depend on the
    # heatmaps' overall scale while the written one does.
    assert torch.equal(mfa_mask(heatmaps), mfa_mask(heatmaps, normalize_raw=False))
    scaled = heatmaps * 4.0
    assert torch.allclose(mfa_mask(scaled, normalize_raw=True), mfa_mask(heatmaps, normalize_raw=True), atol=1e-5)
    assert not torch.allclose(mfa_mask(scaled), mfa_mask(heatmaps), atol=1e-2)


def test_normalised_m_raw_option_reaches_the_training_objective():
    from honestface.losses import LossConfig

    assert LossConfig().mfa_normalize_raw is False
    assert LossConfig.from_dict({"mfa_normalize_raw": True}).mfa_normalize_raw is True
