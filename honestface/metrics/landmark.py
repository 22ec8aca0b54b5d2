"""Landmark distances: the affine landmark distance (A-LD, paper Eq. 14-15) and L2-LD.

Landmarks are ``(..., N, 2)`` pixel coordinates ``(x, y)`` in the 68-point iBUG order.
Every function here is batched over the leading dimensions (they broadcast against each
other), accepts torch tensors (differentiable) or numpy arrays (and then returns numpy),
and returns one value per batch element, shape ``(...)``.

A-LD fits the best 2-D affine map ``A`` (2x3) that carries the restored landmarks ``L``
onto the reference (ground-truth) landmarks ``H`` by weighted least squares and reports
what is left::

    d_A-LD(L, H; W) = min_A  sum_k w_k || A l'_k - h_k ||^2          (Eq. 14)
    A = (H W L'^T) (L' W L'^T)^-1                                    (Eq. 15)

with ``l'_k = (x_k, y_k, 1)``. Because any affine change of the restored landmarks is
absorbed by ``A``, A-LD ignores global shifts, rotations, scale and shear of the
restored face and measures only the remaining change of layout. It needs at least
three non-collinear restored landmarks (with positive weight); otherwise ``L' W L'^T``
is singular and :class:`DegenerateLandmarksError` is raised.

Numerics: the computation runs in float64. The restored landmarks are first moved to
their weighted centroid and scaled to unit RMS radius; that is itself an affine map,
so the value is unchanged, but the 3x3 normal matrix becomes well conditioned for
landmarks in pixel units. The result is cast back to the input's floating dtype.

A batch element whose landmarks contain NaN (a face the detector missed) yields NaN
instead of an error, so a whole batch can be scored and the misses counted afterwards.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from ..errors import HonestFaceError

ArrayLike = Union[torch.Tensor, np.ndarray]

#: Eyebrows (17-26) and eyes (36-47) of the 68-point scheme: the points of ALD-e.
ALD_EYES: tuple[int, ...] = tuple(range(17, 27)) + tuple(range(36, 48))
#: Outer lip contour (48-59) of the 68-point scheme: the points of ALD-m.
ALD_MOUTH: tuple[int, ...] = tuple(range(48, 60))
#: Every point of the 68-point scheme.
ALD_ALL: tuple[int, ...] = tuple(range(68))

#: Named landmark subsets accepted by ``subset=``.
LANDMARK_SUBSETS: dict[str, tuple[int, ...]] = {"eyes": ALD_EYES, "mouth": ALD_MOUTH, "all": ALD_ALL}

# Smallest allowed ratio of the minor to the major principal variance of the normalised
# restored landmarks; below it the points are treated as collinear.
_COLLINEAR_TOLERANCE = 1e-10


class LandmarkError(HonestFaceError, ValueError):
    """Landmark arrays with a wrong shape, mismatched sizes or invalid weights."""


class DegenerateLandmarksError(LandmarkError):
    """Fewer than three (positively weighted) points, or all of them on one line."""


def _as_tensor(value: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    raise LandmarkError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _result_dtype(*values: torch.Tensor) -> torch.dtype:
    floats = [v.dtype for v in values if v.is_floating_point()]
    if not floats:
        return torch.float32
    return torch.promote_types(floats[0], floats[-1]) if len(floats) > 1 else floats[0]


def _select(points: torch.Tensor, subset: Union[str, Sequence[int], None]) -> torch.Tensor:
    if subset is None:
        return points
    if isinstance(subset, str):
        if subset not in LANDMARK_SUBSETS:
            raise LandmarkError(f"unknown landmark subset '{subset}'; choose one of {sorted(LANDMARK_SUBSETS)}")
        indices = LANDMARK_SUBSETS[subset]
    else:
        indices = tuple(int(i) for i in subset)
    n = points.shape[-2]
    if indices and (max(indices) >= n or min(indices) < -n):
        raise LandmarkError(f"landmark subset needs index {max(indices)} but the landmarks have only {n} points")
    return points[..., list(indices), :]


def _prepare(restored: ArrayLike, reference: ArrayLike, subset) -> tuple[torch.Tensor, torch.Tensor, bool, torch.dtype]:
    return_numpy = not isinstance(restored, torch.Tensor) and not isinstance(reference, torch.Tensor)
    restored_t = _as_tensor(restored, "restored")
    reference_t = _as_tensor(reference, "reference")
    for name, value in (("restored", restored_t), ("reference", reference_t)):
        if value.ndim < 2 or value.shape[-1] != 2:
            raise LandmarkError(f"{name} landmarks must have shape (..., N, 2), got {tuple(value.shape)}")
    if restored_t.shape[-2] != reference_t.shape[-2]:
        raise LandmarkError(
            f"restored and reference have different numbers of landmarks: "
            f"{restored_t.shape[-2]} vs {reference_t.shape[-2]}"
        )
    out_dtype = torch.float64 if return_numpy else _result_dtype(restored_t, reference_t)
    device = restored_t.device if isinstance(restored, torch.Tensor) else reference_t.device
    restored_t = _select(restored_t.to(device=device, dtype=torch.float64), subset)
    reference_t = _select(reference_t.to(device=device, dtype=torch.float64), subset)
    try:
        batch = torch.broadcast_shapes(restored_t.shape[:-2], reference_t.shape[:-2])
    except RuntimeError as error:
        raise LandmarkError(
            f"leading dimensions of restored {tuple(restored_t.shape)} and reference "
            f"{tuple(reference_t.shape)} do not broadcast"
        ) from error
    n = restored_t.shape[-2]
    restored_t = restored_t.expand(*batch, n, 2)
    reference_t = reference_t.expand(*batch, n, 2)
    return restored_t, reference_t, return_numpy, out_dtype


def _finish(value: torch.Tensor, return_numpy: bool, out_dtype: torch.dtype) -> ArrayLike:
    if return_numpy:
        return value.detach().cpu().numpy()
    return value.to(out_dtype)


def _prepare_weights(weights: ArrayLike | None, subset, n_full: int, like: torch.Tensor) -> torch.Tensor:
    """Weights broadcast to ``like.shape[:-1]`` = (..., N), float64, checked non-negative."""
    if weights is None:
        return torch.ones(like.shape[:-1], dtype=torch.float64, device=like.device)
    w = _as_tensor(weights, "weights").to(device=like.device, dtype=torch.float64)
    if w.ndim == 0:
        raise LandmarkError("weights must have shape (N,) or (..., N), one per landmark")
    if subset is not None and w.shape[-1] == n_full and n_full != like.shape[-2]:
        # Weights given for the full landmark set: pick the subset's entries.
        w = _select(w.unsqueeze(-1), subset).squeeze(-1)
    if w.shape[-1] != like.shape[-2]:
        raise LandmarkError(f"got {w.shape[-1]} weights for {like.shape[-2]} landmarks")
    with torch.no_grad():
        if bool((w < 0).any()) or bool(torch.isnan(w).any()):
            raise LandmarkError("landmark weights must be non-negative numbers")
    try:
        return w.expand(like.shape[:-1])
    except RuntimeError as error:
        raise LandmarkError(f"weights of shape {tuple(w.shape)} do not broadcast to {tuple(like.shape[:-1])}") from error


def _degenerate(restored: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(too_few, collinear): valid batch elements with < 3 weighted points / collinear points."""
    with torch.no_grad():
        support = (weights > 0).sum(dim=-1)
        too_few = valid & (support < 3)
        usable = valid & ~too_few
        w = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        centroid = (w.unsqueeze(-1) * restored).sum(dim=-2, keepdim=True)
        centred = restored - centroid
        cov = torch.einsum("...n,...ni,...nj->...ij", w, centred, centred)
        identity = torch.eye(2, dtype=cov.dtype, device=cov.device)
        eigenvalues = torch.linalg.eigvalsh(torch.where(usable[..., None, None], cov, identity))
        ratio = eigenvalues[..., 0] / eigenvalues[..., 1].clamp_min(torch.finfo(torch.float64).tiny)
        collinear = usable & ((ratio < _COLLINEAR_TOLERANCE) | (eigenvalues[..., 1] <= 0))
    return too_few, collinear


def _raise_degenerate(too_few: torch.Tensor, collinear: torch.Tensor, weights: torch.Tensor) -> None:
    if bool(too_few.any()):
        support = (weights > 0).sum(dim=-1)
        raise DegenerateLandmarksError(
            f"A-LD needs at least 3 landmarks with positive weight, got {int(support[too_few].min())}"
        )
    if bool(collinear.any()):
        where = collinear.nonzero().tolist() if collinear.ndim else []
        raise DegenerateLandmarksError(
            "restored landmarks are collinear (or coincide), so the affine fit of A-LD is not unique"
            + (f" (batch index {where[:5]})" if where else "")
            + "; pass degenerate='nan' to get NaN for such sets instead"
        )


def fit_affine(
    restored: ArrayLike,
    reference: ArrayLike,
    weights: ArrayLike | None = None,
    subset: Union[str, Sequence[int], None] = None,
    degenerate: str = "raise",
) -> ArrayLike:
    """The affine map of Eq. 15 carrying ``restored`` onto ``reference``.

    Args:
        restored: (..., N, 2) landmarks ``L`` of the restored face.
        reference: (..., N, 2) landmarks ``H`` of the reference (ground truth).
        weights: (N,) or (..., N) non-negative weights ``w_k``; ``None`` = all ones.
        subset: ``"eyes"``, ``"mouth"``, ``"all"`` or a sequence of landmark indices.
        degenerate: ``"raise"`` or ``"nan"``, as in :func:`affine_landmark_distance`.

    Returns:
        (..., 2, 3) matrices ``A`` with ``A @ (x, y, 1)^T`` ~ reference point.
    """
    matrix, _ = _affine_fit(restored, reference, weights, subset, degenerate)
    return matrix


def _affine_fit(restored, reference, weights, subset, degenerate="raise"):
    if degenerate not in ("raise", "nan"):
        raise LandmarkError(f"degenerate must be 'raise' or 'nan', got {degenerate!r}")
    n_full = _as_tensor(restored, "restored").shape[-2] if hasattr(restored, "shape") else None
    restored_t, reference_t, return_numpy, out_dtype = _prepare(restored, reference, subset)
    w = _prepare_weights(weights, subset, n_full, restored_t)
    n = restored_t.shape[-2]
    if n < 3:
        raise DegenerateLandmarksError(f"A-LD needs at least 3 landmarks, got {n}")

    valid = ~(torch.isnan(restored_t).flatten(-2).any(-1) | torch.isnan(reference_t).flatten(-2).any(-1))
    too_few, collinear = _degenerate(torch.nan_to_num(restored_t), w, valid)
    if degenerate == "raise":
        _raise_degenerate(too_few, collinear, w)
    else:
        valid = valid & ~too_few & ~collinear
    # Replace missing faces (and, with degenerate="nan", degenerate sets) by a harmless
    # triangle so the batch solve stays finite; their result is set to NaN at the end.
    filler = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, device=restored_t.device)
    filler = filler.repeat((n + 2) // 3, 1)[:n]
    restored_t = torch.where(valid[..., None, None], restored_t, filler)
    reference_t = torch.where(valid[..., None, None], reference_t, filler)
    w = torch.where(valid[..., None], w, torch.ones_like(w))

    # Normalise L (weighted centroid to 0, RMS radius to 1): an affine change of L that A absorbs.
    w_sum = w.sum(dim=-1, keepdim=True)
    centroid = (w.unsqueeze(-1) * restored_t).sum(dim=-2, keepdim=True) / w_sum.unsqueeze(-1)
    centred = restored_t - centroid
    scale = torch.sqrt((w * centred.pow(2).sum(-1)).sum(-1, keepdim=True) / w_sum).unsqueeze(-1)
    normalised = centred / scale

    ones = torch.ones_like(normalised[..., :1])
    homogeneous = torch.cat([normalised, ones], dim=-1)  # (..., N, 3): rows l'_k^T
    weighted = homogeneous * w.unsqueeze(-1)
    normal = weighted.transpose(-1, -2) @ homogeneous  # L' W L'^T, (..., 3, 3)
    moment = weighted.transpose(-1, -2) @ reference_t  # L' W H^T, (..., 3, 2)
    affine_t = torch.linalg.solve(normal, moment)  # A^T for the normalised L, (..., 3, 2)
    residual = homogeneous @ affine_t - reference_t  # (..., N, 2)
    value = (w * residual.pow(2).sum(-1)).sum(-1)
    value = torch.where(valid, value, torch.full_like(value, float("nan")))

    # Undo the normalisation for the reported matrix: A = A_n @ [[I/s, -c/s], [0, 1]].
    linear = affine_t[..., :2, :].transpose(-1, -2) / scale
    offset = affine_t[..., 2, :].unsqueeze(-1) - linear @ centroid.transpose(-1, -2)
    matrix = torch.cat([linear, offset], dim=-1)
    matrix = torch.where(valid[..., None, None], matrix, torch.full_like(matrix, float("nan")))
    return _finish(matrix, return_numpy, out_dtype), _finish(value, return_numpy, out_dtype)


def affine_landmark_distance(
    restored: ArrayLike,
    reference: ArrayLike,
    weights: ArrayLike | None = None,
    subset: Union[str, Sequence[int], None] = None,
    degenerate: str = "raise",
) -> ArrayLike:
    """A-LD (Eq. 14-15): weighted sum of squared residuals after the best affine fit.

    Args:
        restored: (..., N, 2) landmarks ``L`` of the restored face (pixel x, y).
        reference: (..., N, 2) landmarks ``H`` of the reference / ground truth. Leading
            dimensions broadcast, e.g. (R, N, 2) candidates against one (N, 2) target.
        weights: (N,) or (..., N) non-negative weights ``w_k`` (default: all 1). With a
            ``subset`` the weights may be given for the subset or for all points.
        subset: ``"eyes"`` (ALD-e), ``"mouth"`` (ALD-m), ``"all"``, or landmark indices.
        degenerate: what a batch element with fewer than 3 positively weighted points or
            collinear restored points gives: ``"raise"`` (default) raises
            :class:`DegenerateLandmarksError`; ``"nan"`` returns NaN for that element and
            scores the rest (useful when ranking many candidates at once).

    Returns:
        (...) A-LD values; torch for torch input (differentiable, input float dtype),
        numpy float64 for numpy input. NaN where a landmark set contains NaN.

    Raises:
        LandmarkError: wrong shapes or negative weights.
        DegenerateLandmarksError: fewer than 3 points, or (with ``degenerate="raise"``)
            fewer than 3 weighted points or collinear restored points.
    """
    _, value = _affine_fit(restored, reference, weights, subset, degenerate)
    return value


def ald_eyes(restored: ArrayLike, reference: ArrayLike, weights: ArrayLike | None = None) -> ArrayLike:
    """ALD-e: A-LD on eyebrows and eyes (68-point indices 17-26, 36-47)."""
    return affine_landmark_distance(restored, reference, weights, subset=ALD_EYES)


def ald_mouth(restored: ArrayLike, reference: ArrayLike, weights: ArrayLike | None = None) -> ArrayLike:
    """ALD-m: A-LD on the outer lip contour (68-point indices 48-59)."""
    return affine_landmark_distance(restored, reference, weights, subset=ALD_MOUTH)


def l2_landmark_distance(
    restored: ArrayLike,
    reference: ArrayLike,
    subset: Union[str, Sequence[int], None] = None,
) -> ArrayLike:
    """L2-LD: mean Euclidean distance between corresponding landmarks, shape (...).

    Measured in the image plane (pixels), so unlike A-LD it grows with any global shift,
    rotation or scale change of the restored face. NaN where a landmark set has NaN.
    """
    restored_t, reference_t, return_numpy, out_dtype = _prepare(restored, reference, subset)
    if restored_t.shape[-2] == 0:
        raise LandmarkError("L2-LD needs at least one landmark")
    value = torch.linalg.vector_norm(restored_t - reference_t, dim=-1).mean(dim=-1)
    return _finish(value, return_numpy, out_dtype)


class AffineLandmarkDistance(torch.nn.Module):
    """A-LD as a module with a fixed subset and weights (e.g. ``AffineLandmarkDistance("eyes")``)."""

    def __init__(
        self,
        subset: Union[str, Sequence[int], None] = None,
        weights: ArrayLike | None = None,
        degenerate: str = "raise",
    ) -> None:
        super().__init__()
        self.subset = subset
        self.weights = weights
        self.degenerate = degenerate

    def forward(self, restored: ArrayLike, reference: ArrayLike) -> ArrayLike:
        return affine_landmark_distance(restored, reference, self.weights, self.subset, self.degenerate)

    def extra_repr(self) -> str:
        return f"subset={self.subset!r}"


__all__ = [
    "ALD_ALL",
    "ALD_EYES",
    "ALD_MOUTH",
    "LANDMARK_SUBSETS",
    "AffineLandmarkDistance",
    "DegenerateLandmarksError",
    "LandmarkError",
    "affine_landmark_distance",
    "ald_eyes",
    "ald_mouth",
    "fit_affine",
    "l2_landmark_distance",
]
