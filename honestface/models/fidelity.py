"""Automatic fidelity: how much of a restoration a face needs, estimated from the face.

A one-step restorer gives every face its full treatment, and a face that needs little (a
sharp portrait, a mildly soft crop) then comes back smoothed. Like CodeFormer's fidelity
weight ``w``, but chosen by the model for each face: a small network looks at the input
``x`` and the restoration ``R`` (at low resolution) and predicts ``w`` in [0, 1]; the output
is ``x + w * (R - x)``. It is trained after (or beside) the restorer, with ``R`` detached,
to minimise the error of that blend against the ground truth on degradations from none to
heavy (``losses.fidelity``), so ``w`` is near 0 for a clean face and near 1 for a heavily
degraded one.

This is not part of the paper: a model has it only when ``config.fidelity.enabled`` (the
shipped ``honestface-nano``), and the pipeline applies it unless told not to
(``fidelity=False``, ``--fidelity off``). Released OSDFace / paper-style weights have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FidelityConfig


class FidelityEstimator(nn.Module):
    """``(lq, restored) -> w``: (B, 3, S, S) x 2 in [0, 1] -> (B,) in [0, 1].

    Three stride-2 convolutions on ``[x, R, R - x]`` at ``config.resolution`` px, global
    average pooling and a linear layer; a sigmoid gives the weight. The bias starts at 0
    (``w = 0.5``).
    """

    def __init__(self, config: FidelityConfig) -> None:
        super().__init__()
        self.config = config
        width = config.channels
        self.features = nn.Sequential(
            nn.Conv2d(9, width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(4 * width, 1)
        nn.init.zeros_(self.head.bias)

    def forward(self, lq: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        size = self.config.resolution
        x = torch.cat([lq, restored, restored - lq], dim=1).to(self.head.weight.dtype)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        pooled = self.features(x * 2.0 - 1.0).mean(dim=(-2, -1))
        return torch.sigmoid(self.head(pooled)).squeeze(-1)


def blend_fidelity(lq: torch.Tensor, restored: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``lq + weight * (restored - lq)`` for (B, 3, H, W) images and (B,) weights."""
    return lq + weight.to(restored.dtype).view(-1, 1, 1, 1) * (restored - lq)
