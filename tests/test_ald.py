"""Affine landmark distance (Eq. 14-15) and L2-LD against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from honestface.errors import HonestFaceError
from honestface.metrics.landmark import (
    ALD_EYES,
    ALD_MOUTH,
    AffineLandmarkDistance,
    DegenerateLandmarksError,
    LandmarkError,
    affine_landmark_distance,
    ald_eyes,
    ald_mouth,
    fit_affine,
    l2_landmark_distance,
)


def face_like_points(rng: np.random.Generator, n: int = 68) -> np.ndarray:
    return rng.uniform(100.0, 400.0, size=(n, 2))


def brute_force_ald(restored: np.ndarray, reference: np.ndarray, weights: np.ndarray) -> float:
    """Minimise Eq. 14 numerically over the 6 affine parameters."""

    def residuals(params: np.ndarray) -> np.ndarray:
        a = params.reshape(2, 3)
        mapped = restored @ a[:, :2].T + a[:, 2]
        return (np.sqrt(weights)[:, None] * (mapped - reference)).ravel()

    result = least_squares(residuals, x0=np.array([1.0, 0, 0, 0, 1.0, 0]), xtol=1e-14, ftol=1e-14, gtol=1e-14)
    return float(np.sum(result.fun**2))


def test_index_sets_match_the_paper():
    assert ALD_EYES == tuple(range(17, 27)) + tuple(range(36, 48))
    assert ALD_MOUTH == tuple(range(48, 60))


def test_closed_form_equals_numeric_minimisation():
    rng = np.random.default_rng(1)
    for _ in range(3):
        reference = face_like_points(rng, 22)
        restored = reference + rng.normal(scale=4.0, size=reference.shape)
        weights = rng.uniform(0.2, 3.0, size=22)
        closed = float(affine_landmark_distance(restored, reference, weights))
        numeric = brute_force_ald(restored, reference, weights)
        assert closed == pytest.approx(numeric, rel=1e-7)
        assert closed > 1.0  # a real residual, not a trivial zero


def test_fitted_matrix_is_eq15():
    rng = np.random.default_rng(2)
    reference = face_like_points(rng, 12)
    restored = reference + rng.normal(scale=3.0, size=reference.shape)
    weights = rng.uniform(0.5, 2.0, size=12)
    l_prime = np.vstack([restored.T, np.ones(12)])  # (3, N)
    w = np.diag(weights)
    expected = (reference.T @ w @ l_prime.T) @ np.linalg.inv(l_prime @ w @ l_prime.T)
    np.testing.assert_allclose(fit_affine(restored, reference, weights), expected, rtol=1e-9, atol=1e-9)


def test_invariant_to_affine_maps_of_the_restored_landmarks():
    rng = np.random.default_rng(3)
    reference = face_like_points(rng)
    restored = reference + rng.normal(scale=2.0, size=reference.shape)
    base = float(affine_landmark_distance(restored, reference))
    for _ in range(4):
        linear = rng.normal(size=(2, 2)) + 2 * np.eye(2)
        moved = restored @ linear.T + rng.uniform(-80, 80, size=2)
        assert float(affine_landmark_distance(moved, reference)) == pytest.approx(base, rel=1e-8)


def test_exact_affine_copy_scores_zero_while_l2_is_large():
    rng = np.random.default_rng(4)
    reference = face_like_points(rng)
    angle = np.deg2rad(4.0)
    rotation = 1.03 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    restored = reference @ rotation.T + np.array([6.0, -4.0])
    assert float(affine_landmark_distance(restored, reference)) < 1e-9
    assert float(l2_landmark_distance(restored, reference)) > 10.0


def test_integer_weights_equal_duplicated_points_and_scaling_scales():
    rng = np.random.default_rng(5)
    reference = face_like_points(rng, 10)
    restored = reference + rng.normal(scale=3.0, size=reference.shape)
    counts = np.array([1, 2, 3, 1, 1, 4, 1, 2, 1, 1])
    weighted = float(affine_landmark_distance(restored, reference, counts))
    duplicated = float(affine_landmark_distance(np.repeat(restored, counts, 0), np.repeat(reference, counts, 0)))
    assert weighted == pytest.approx(duplicated, rel=1e-10)
    assert float(affine_landmark_distance(restored, reference, 2.5 * counts)) == pytest.approx(2.5 * weighted, rel=1e-10)
    # Unequal weights change the fit, so this is not just a global factor.
    assert weighted != pytest.approx(float(affine_landmark_distance(restored, reference)) * counts.mean(), rel=1e-3)


def test_zero_weight_ignores_a_point():
    rng = np.random.default_rng(6)
    reference = face_like_points(rng, 9)
    restored = reference + rng.normal(scale=1.0, size=reference.shape)
    restored_outlier = restored.copy()
    restored_outlier[4] += 300.0
    weights = np.ones(9)
    weights[4] = 0.0
    assert float(affine_landmark_distance(restored_outlier, reference, weights)) == pytest.approx(
        float(affine_landmark_distance(np.delete(restored, 4, 0), np.delete(reference, 4, 0))), rel=1e-9
    )


def test_torch_gradcheck_float64():
    rng = np.random.default_rng(7)
    reference = torch.tensor(face_like_points(rng, 8), dtype=torch.float64)
    restored = (reference + torch.tensor(rng.normal(scale=3.0, size=(8, 2)))).requires_grad_(True)
    weights = torch.tensor(rng.uniform(0.5, 2.0, size=8), requires_grad=True)
    reference = reference.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, w: affine_landmark_distance(a, b, w), (restored, reference, weights), eps=1e-6, atol=1e-5
    )


def test_torch_and_numpy_agree_and_keep_their_types():
    rng = np.random.default_rng(8)
    reference = face_like_points(rng)
    restored = reference + rng.normal(scale=2.0, size=reference.shape)
    numpy_value = affine_landmark_distance(restored, reference, subset="eyes")
    torch_value = ald_eyes(torch.tensor(restored, dtype=torch.float32), torch.tensor(reference, dtype=torch.float32))
    assert isinstance(numpy_value, np.ndarray) and numpy_value.dtype == np.float64
    assert isinstance(torch_value, torch.Tensor) and torch_value.dtype == torch.float32
    assert float(torch_value) == pytest.approx(float(numpy_value), rel=1e-4)
    # The subset helper equals slicing the points by hand.
    manual = affine_landmark_distance(restored[list(ALD_MOUTH)], reference[list(ALD_MOUTH)])
    assert float(ald_mouth(restored, reference)) == pytest.approx(float(manual), rel=1e-12)
    assert float(AffineLandmarkDistance("mouth")(restored, reference)) == pytest.approx(float(manual), rel=1e-12)


def test_batched_and_broadcast_with_nan_for_missing_faces():
    rng = np.random.default_rng(9)
    reference = face_like_points(rng)
    candidates = reference + rng.normal(scale=[[[1.0]], [[3.0]], [[6.0]]], size=(3, 68, 2))
    candidates[1, 5] = np.nan  # a face without landmarks
    values = affine_landmark_distance(candidates, reference)  # (3, 68, 2) against (68, 2)
    assert values.shape == (3,)
    assert np.isnan(values[1]) and not np.isnan(values[[0, 2]]).any()
    assert values[0] == pytest.approx(float(affine_landmark_distance(candidates[0], reference)), rel=1e-12)
    assert values[0] < values[2]
    l2 = l2_landmark_distance(candidates, reference)
    assert l2.shape == (3,) and np.isnan(l2[1])


def test_degenerate_inputs_raise_clear_errors():
    rng = np.random.default_rng(10)
    reference = face_like_points(rng, 6)
    line = np.stack([np.arange(6.0), 2 * np.arange(6.0) + 1], axis=1)
    with pytest.raises(DegenerateLandmarksError, match="collinear"):
        affine_landmark_distance(line, reference)
    with pytest.raises(DegenerateLandmarksError, match="at least 3"):
        affine_landmark_distance(reference[:2], reference[:2])
    with pytest.raises(DegenerateLandmarksError, match="positive weight"):
        affine_landmark_distance(reference, reference, np.array([1.0, 1.0, 0, 0, 0, 0]))
    with pytest.raises(LandmarkError, match="non-negative"):
        affine_landmark_distance(reference, reference, -np.ones(6))
    with pytest.raises(LandmarkError, match="different numbers"):
        affine_landmark_distance(reference, reference[:5])
    with pytest.raises(LandmarkError, match=r"\(\.\.\., N, 2\)"):
        affine_landmark_distance(reference[:, :1], reference[:, :1])
    with pytest.raises(LandmarkError, match="subset"):
        affine_landmark_distance(reference, reference, subset="nose")
    assert issubclass(DegenerateLandmarksError, HonestFaceError) and issubclass(LandmarkError, ValueError)


def test_degenerate_nan_mode_scores_the_rest_of_the_batch():
    rng = np.random.default_rng(11)
    reference = face_like_points(rng, 12)
    candidates = np.stack([reference + rng.normal(scale=2.0, size=reference.shape) for _ in range(3)])
    candidates[1] = np.stack([np.arange(12.0), 3 * np.arange(12.0)], axis=1)  # collinear
    with pytest.raises(DegenerateLandmarksError, match="batch index"):
        affine_landmark_distance(candidates, reference)
    values = affine_landmark_distance(torch.tensor(candidates), torch.tensor(reference), degenerate="nan")
    assert torch.isnan(values[1]) and torch.isfinite(values[[0, 2]]).all()
    assert float(values[2]) == pytest.approx(float(affine_landmark_distance(candidates[2], reference)), rel=1e-12)
    weights = np.zeros(12)
    weights[:2] = 1.0  # only two weighted points
    assert np.isnan(affine_landmark_distance(candidates[0], reference, weights, degenerate="nan"))
    with pytest.raises(LandmarkError, match="degenerate"):
        affine_landmark_distance(candidates, reference, degenerate="ignore")
