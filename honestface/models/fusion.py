"""Feature fusion: ``p_F`` (B, n1, k), ``p_I`` (B, n2, k), ``p_L`` (B, n3, k) -> prompt (B, n, k).

The paper leaves the operator open (n <= n1 + n2 + n3). Operators are registered by name
and chosen with ``FusionConfig.name``:

- ``"concat"`` (default): ``[p_F, p_I, p_L[:, :n - n1 - n2]]``. VRE tokens are ordered by
  confidence, so the least confident ones make room for the identity tokens.
- ``"vre_only"``: ``p_L`` alone (OSDFace; an ablation).

Register another one with :func:`register_fusion`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import FusionConfig
from ..errors import ConfigError

FUSIONS: dict[str, type[nn.Module]] = {}


def register_fusion(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a fusion module available as ``FusionConfig(name=...)``.

    The class is built as ``cls(config: FusionConfig, token_dim: int)`` and called as
    ``module(p_F, p_I, p_L) -> (B, config.num_tokens, token_dim)``.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        FUSIONS[name] = cls
        return cls

    return decorator


@register_fusion("concat")
class ConcatFusion(nn.Module):
    """``[p_F, p_I, p_L[:, :n - n1 - n2]]`` (no parameters)."""

    def __init__(self, config: FusionConfig, token_dim: int) -> None:
        super().__init__()
        self.num_tokens = config.num_tokens

    def forward(self, p_feature: torch.Tensor, p_identity: torch.Tensor, p_visual: torch.Tensor) -> torch.Tensor:
        keep = self.num_tokens - p_feature.shape[1] - p_identity.shape[1]
        if keep < 0:
            raise ConfigError(f"fusion to {self.num_tokens} tokens cannot hold {p_feature.shape[1]} + "
                              f"{p_identity.shape[1]} identity tokens")
        return torch.cat([p_feature, p_identity, p_visual[:, :keep]], dim=1)


@register_fusion("vre_only")
class VisualOnlyFusion(nn.Module):
    """``p_L`` alone: the OSDFace prompt."""

    def __init__(self, config: FusionConfig, token_dim: int) -> None:
        super().__init__()
        self.num_tokens = config.num_tokens

    def forward(self, p_feature: torch.Tensor, p_identity: torch.Tensor, p_visual: torch.Tensor) -> torch.Tensor:
        return p_visual[:, : self.num_tokens]


def build_fusion(config: FusionConfig, token_dim: int) -> nn.Module:
    """The registered fusion module named ``config.name``."""
    if config.name not in FUSIONS:
        raise ConfigError(f"unknown fusion '{config.name}'; known: {sorted(FUSIONS)}")
    return FUSIONS[config.name](config, token_dim)
