"""Identity angle "Deg." (paper Sec. 4.1): the angle between two identity embeddings."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from .landmark import LandmarkError

ArrayLike = Union[torch.Tensor, np.ndarray]


def identity_angle_degrees(embedding_a: ArrayLike, embedding_b: ArrayLike) -> ArrayLike:
    """Angle in degrees between embeddings, ``acos(cos_sim(a, b)) * 180 / pi``.

    Args:
        embedding_a, embedding_b: (..., D) identity embeddings (ArcFace, AdaFace, dlib);
            leading dimensions broadcast. They need not be normalised.

    Returns:
        (...) angles in [0, 180]; torch for torch input (computed in float64, returned in
        the input dtype), numpy for numpy input. NaN where an embedding is NaN (no face)
        or has zero length.
    """
    return_numpy = not isinstance(embedding_a, torch.Tensor) and not isinstance(embedding_b, torch.Tensor)
    a = torch.as_tensor(embedding_a)
    b = torch.as_tensor(embedding_b)
    if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-1]:
        raise LandmarkError(
            f"identity embeddings must have shape (..., D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    out_dtype = a.dtype if a.is_floating_point() else torch.float32
    a64, b64 = a.to(torch.float64), b.to(device=a.device, dtype=torch.float64)
    norms = torch.linalg.vector_norm(a64, dim=-1) * torch.linalg.vector_norm(b64, dim=-1)
    cosine = (a64 * b64).sum(-1) / norms
    cosine = torch.where(norms > 0, cosine, torch.full_like(cosine, float("nan")))
    angle = torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))
    if return_numpy:
        return angle.numpy()
    return angle.to(out_dtype)


__all__ = ["identity_angle_degrees"]
