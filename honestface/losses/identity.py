"""Identity preservation loss (paper Eq. 8) over an ensemble of face recognisers.

    L_ID = sum_i ( 1 - cos(f_i(x_H), f_i(x_hat_H)) )

Each recogniser is an :class:`~honestface.face.base.IdentityBackend` whose ``embed`` is
differentiable (the PyTorch ArcFace iresnet and AdaFace backends; the paper uses both).
The ground-truth embeddings carry no gradient. Images: (B, 3, H, W) aligned faces in
[0, 1]; each backend does its own resizing/cropping to its input size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class IdentityLoss(nn.Module):
    """Eq. 8; ``forward(restored, target) -> (B,)`` summed over the recognisers.

    Args:
        recognisers: identity backends with a differentiable ``embed`` (frozen here).
    """

    def __init__(self, recognisers: Sequence) -> None:
        super().__init__()
        if not recognisers:
            raise ConfigError("the identity loss needs at least one recogniser")
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
        total = restored.new_zeros(restored.shape[0])
        for recogniser in self.recognisers:
            with torch.no_grad():
                target_embedding = recogniser.embed(target).float()
            restored_embedding = recogniser.embed(restored).float()
            cosine = F.cosine_similarity(restored_embedding, target_embedding.to(restored_embedding.device), dim=-1)
            total = total + (1.0 - cosine).to(total.dtype)
        return total
