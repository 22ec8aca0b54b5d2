"""Identity preservation loss (paper Eq. 8) over an ensemble of face recognisers.

    L_ID = sum_i ( 1 - cos(f_i(x_H), f_i(x_hat_H)) )

Each recogniser is an :class:`~honestface.face.base.IdentityBackend` whose ``embed`` is
differentiable (the PyTorch ArcFace iresnet and AdaFace backends; the paper uses both).
The ground-truth embeddings carry no gradient. Images: (B, 3, H, W) aligned faces in
[0, 1]; each backend does its own resizing/cropping to its input size.

Alignment jitter (``jitter > 0``): before each recogniser, restored face and ground truth
go through the same random small similarity transform, a fresh one per sample and step.
A recogniser judges faces on one fixed crop of the aligned image; without jitter the
generator can satisfy it with pixel patterns that only work on that crop, where
recognition on a re-detected, re-aligned face (how identity is measured) needs
features that survive small shifts, scalings and rotations.

Low-pass (``lowpass > 0``): after the jitter, both faces are blurred by a Gaussian of that
sigma (pixels of a 128 px face; scaled with the size). A generator with a small VAE can
otherwise please a recogniser with a faint grid at its latent's pitch (4 px), which the
jitter does not remove; under the blur such patterns carry no identity, and the MSE term
wipes them out.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..degradation import blur, gaussian_kernels
from ..face.align import warp


def check_jitter_strength(value: float, name: str = "jitter strength") -> float:
    """``value`` as a float if it is a valid jitter strength (in [0, 0.5)); else ConfigError."""
    value = float(value)
    if not 0.0 <= value < 0.5:
        raise ConfigError(f"{name} must be in [0, 0.5), got {value}")
    return value


def random_similarity(batch: int, size: int, strength: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, 2, 3) pixel affines of random similarity transforms about the image centre.

    Scale ``1 + u``, rotation ``u`` radians and shift ``u * size`` pixels per axis, each
    ``u`` drawn uniformly from ``[-strength, strength]``.
    """
    strength = check_jitter_strength(strength)
    u = (torch.rand(batch, 4, generator=generator, dtype=torch.float64) * 2 - 1) * strength
    scale, angle, shift = 1 + u[:, 0], u[:, 1], u[:, 2:] * size
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    centre = torch.full((batch, 2), (size - 1) / 2, dtype=torch.float64)
    offset = centre - (linear @ centre[..., None])[..., 0] + shift
    return torch.cat([linear, offset[..., None]], -1).float()


def check_lowpass_sigma(value: float, name: str = "low-pass sigma") -> float:
    """``value`` as a float if it is a valid blur sigma (in [0, 8] px of a 128 px face); else ConfigError."""
    value = float(value)
    if not 0.0 <= value <= 8.0:
        raise ConfigError(f"{name} must be in [0, 8] (pixels of a 128 px face), got {value}")
    return value


def lowpass_faces(faces: torch.Tensor, sigma_128: float) -> torch.Tensor:
    """(B, C, S, S) -> the same faces under an isotropic Gaussian blur of sigma
    ``sigma_128 * S / 128`` px (reflect border; differentiable)."""
    sigma = float(sigma_128) * faces.shape[-1] / 128.0
    if sigma <= 0:
        return faces
    size = 2 * math.ceil(3 * sigma) + 1
    spread = torch.full((faces.shape[0],), sigma)
    kernels = gaussian_kernels(spread, spread, torch.zeros_like(spread), size).to(faces.device)
    return blur(faces, kernels)


class IdentityLoss(nn.Module):
    """Eq. 8; ``forward(restored, target) -> (B,)`` summed over the recognisers.

    Args:
        recognisers: identity backends with a differentiable ``embed`` (frozen here).
        jitter: strength of the alignment jitter (:func:`random_similarity`; 0 = off).
        lowpass: sigma of the Gaussian blur both faces get before each recogniser, in
            pixels of a 128 px face (:func:`lowpass_faces`; 0 = off).
    """

    def __init__(self, recognisers: Sequence, jitter: float = 0.0, lowpass: float = 0.0) -> None:
        super().__init__()
        if not recognisers:
            raise ConfigError("the identity loss needs at least one recogniser")
        self.jitter = check_jitter_strength(jitter)
        self.lowpass = check_lowpass_sigma(lowpass)
        self.recognisers = list(recognisers)
        # register the ones that are modules, so .to(device) and freezing reach them
        self.networks = nn.ModuleList(r for r in self.recognisers if isinstance(r, nn.Module))
        self.networks.requires_grad_(False)
        self.networks.eval()

    def train(self, mode: bool = True) -> "IdentityLoss":
        return super().train(False)  # recognisers stay in eval mode (batch norm)

    @property
    def names(self) -> list[str]:
        return [str(getattr(r, "name", type(r).__name__)) for r in self.recognisers]

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if restored.shape != target.shape:
            raise ValueError(f"restored {tuple(restored.shape)} and target {tuple(target.shape)} differ in shape")
        total = restored.new_zeros(restored.shape[0])
        for recogniser in self.recognisers:
            if self.jitter > 0:
                size = restored.shape[-1]
                matrix = random_similarity(restored.shape[0], size, self.jitter).to(restored.device)
                restored_in, target_in = (warp(x, matrix, tuple(x.shape[-2:])).to(x.dtype) for x in (restored, target))
            else:
                restored_in, target_in = restored, target
            if self.lowpass > 0:
                restored_in, target_in = (lowpass_faces(x, self.lowpass) for x in (restored_in, target_in))
            with torch.no_grad():
                target_embedding = recogniser.embed(target_in).float()
            restored_embedding = recogniser.embed(restored_in).float()
            cosine = F.cosine_similarity(restored_embedding, target_embedding.to(restored_embedding.device), dim=-1)
            total = total + (1.0 - cosine).to(total.dtype)
        return total
