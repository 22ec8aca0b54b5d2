"""Gaussian landmark heatmaps."""

from __future__ import annotations

import math

import pytest
import torch

from honestface.face.heatmaps import render_gaussian_heatmaps


def test_render_matches_the_formula():
    points = torch.tensor([[[10.0, 20.0], [33.4, 5.6]], [[0.0, 0.0], [47.0, 31.0]]])
    maps = render_gaussian_heatmaps(points, 32, 48, sigma=2.0)
    assert maps.shape == (2, 2, 32, 48)
    # Independent evaluation at a few pixels.
    for b, n, y, x in [(0, 0, 20, 10), (0, 0, 22, 13), (0, 1, 6, 33), (1, 1, 30, 45)]:
        px, py = points[b, n].tolist()
        expected = math.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 2.0 ** 2))
        assert maps[b, n, y, x].item() == pytest.approx(expected, rel=1e-5)
    # Each map peaks at the pixel nearest its point.
    peak = maps.flatten(2).argmax(-1)
    assert torch.equal(torch.stack([peak % 48, peak // 48], -1).float(), points.round())


def test_nan_points_give_empty_maps_and_gradients_reach_points():
    points = torch.tensor([[[5.0, 5.0], [float("nan"), 3.0]]], requires_grad=True)
    maps = render_gaussian_heatmaps(points, 16, 16, sigma=2.0)
    assert maps[0, 1].abs().sum() == 0 and maps[0, 0].max().item() == pytest.approx(1.0)
    maps[0, 0, 7, 9].backward()
    assert torch.isfinite(points.grad[0, 0]).all() and points.grad[0, 0].abs().sum() > 0


def test_default_sigma_and_bad_shapes():
    maps = render_gaussian_heatmaps(torch.tensor([[[32.0, 32.0]]]), 64, 64)
    # sigma = 64 / 64 = 1 pixel: one pixel away the value is exp(-1/2).
    assert maps[0, 0, 32, 33].item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    with pytest.raises(ValueError):
        render_gaussian_heatmaps(torch.zeros(68, 2), 8, 8)
