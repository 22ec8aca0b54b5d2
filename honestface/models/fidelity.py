"""Automatic fidelity: how much of a restoration a face needs, estimated from the face.

A one-step restorer gives every face its full treatment, and a face that needs little (a
sharp portrait, a mildly soft crop) then comes back smoothed. Like CodeFormer's fidelity
weight ``w``, but chosen by the model for each face: a small estimator looks at the input
``x`` and the restoration ``R`` and predicts ``w`` in [0, 1]; the output is
``x + w * (R - x)``. It is fitted to a finished restorer (``model.train_only: [fidelity]``,
``losses.fidelity``) on degradations from none to heavy, so ``w`` is near 0 for a clean face
and near 1 for a heavily degraded one.

What it looks at: how much fine detail the input and the restoration hold (the mean
absolute Laplacian of their grey images at full, half and quarter resolution) and how much
the restoration changed (mean absolute change, and its Laplacian), as logarithms; a
normalisation and a two-layer perceptron map these 8 numbers to ``w``. A sharp input holds
more detail than the restorer can add and gets ``w`` near 0; a blurred one gets near 1.
(A small CNN on the images themselves was tried first and did not learn to tell a clean
face from a soft one in the same training budget.)

This is not part of the paper: a model has it only when ``config.fidelity.enabled`` (the
shipped ``honestface-nano``), and the pipeline applies it unless told not to
(``fidelity=False``, ``--fidelity off``). Released OSDFace / paper-style weights have none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FidelityConfig

#: 4-neighbour Laplacian
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
NUM_STATISTICS = 8


def _detail(images: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> (B,) mean absolute Laplacian of the channel mean, after ``scale``x
    average pooling."""
    grey = images.mean(dim=1, keepdim=True)
    if scale > 1:
        grey = F.avg_pool2d(grey, scale)
    kernel = torch.tensor(_LAPLACIAN, dtype=grey.dtype, device=grey.device).view(1, 1, 3, 3)
    return F.conv2d(grey, kernel).abs().flatten(1).mean(dim=1)


def fidelity_statistics(lq: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) x 2 in [0, 1] -> (B, 8) log statistics (see the module doc)."""
    change = restored - lq
    values = [_detail(lq, 1), _detail(lq, 2), _detail(lq, 4),
              _detail(restored, 1), _detail(restored, 2), _detail(restored, 4),
              change.abs().flatten(1).mean(dim=1), _detail(change, 1)]
    return torch.log(torch.stack(values, dim=1) + 1e-4)


class FidelityEstimator(nn.Module):
    """``(lq, restored) -> w``: (B, 3, S, S) x 2 in [0, 1] -> (B,) in [0, 1].

    The faces are brought to ``config.resolution`` px, :func:`fidelity_statistics` are
    normalised (batch statistics while training, their running averages afterwards) and a
    perceptron with ``config.channels`` hidden units gives the weight through a sigmoid.
    """

    def __init__(self, config: FidelityConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.BatchNorm1d(NUM_STATISTICS, affine=False)
        self.mlp = nn.Sequential(nn.Linear(NUM_STATISTICS, config.channels), nn.SiLU(),
                                 nn.Linear(config.channels, 1))

    def forward(self, lq: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        size = self.config.resolution
        pair = torch.cat([lq, restored], dim=1).float()
        if pair.shape[-1] != size or pair.shape[-2] != size:
            pair = F.interpolate(pair, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.autocast(pair.device.type, enabled=False):  # logs of small numbers: float32
            statistics = fidelity_statistics(pair[:, :3], pair[:, 3:])
            if self.training and statistics.shape[0] > 1:
                normalised = self.norm(statistics)
            else:  # one face, or inference: the running averages (never updated here)
                normalised = F.batch_norm(statistics, self.norm.running_mean.float(), self.norm.running_var.float(),
                                          training=False, eps=self.norm.eps)
            # float32 whatever precision the model was placed in (161 weights: nothing to save)
            first, last = self.mlp[0], self.mlp[2]
            hidden = F.silu(F.linear(normalised, first.weight.float(), first.bias.float()))
            return torch.sigmoid(F.linear(hidden, last.weight.float(), last.bias.float())).squeeze(-1)


def blend_fidelity(lq: torch.Tensor, restored: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``lq + weight * (restored - lq)`` for (B, 3, H, W) images and (B,) weights."""
    return lq + weight.to(restored.dtype).view(-1, 1, 1, 1) * (restored - lq)
