"""Fusion of p_F, p_I, p_L into the 77-token prompt."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from honestface.config import FusionConfig
from honestface.errors import ConfigError
from honestface.models.fusion import FUSIONS, build_fusion, register_fusion


def test_concat_keeps_identity_tokens_and_the_most_confident_visual_tokens():
    p_f, p_i, p_l = torch.randn(2, 4, 8), torch.randn(2, 7, 8), torch.randn(2, 77, 8)
    prompt = build_fusion(FusionConfig(), 8)(p_f, p_i, p_l)
    assert prompt.shape == (2, 77, 8)
    assert torch.equal(prompt[:, :4], p_f)
    assert torch.equal(prompt[:, 4:11], p_i)
    assert torch.equal(prompt[:, 11:], p_l[:, :66])


def test_vre_only_is_the_osdface_prompt():
    p_l = torch.randn(2, 77, 8)
    assert torch.equal(build_fusion(FusionConfig(name="vre_only"), 8)(torch.randn(2, 4, 8), torch.randn(2, 7, 8), p_l), p_l)


def test_registry_accepts_new_operators_and_rejects_unknown_names():
    @register_fusion("test_mean")
    class MeanFusion(nn.Module):
        def __init__(self, config, token_dim):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(token_dim))

        def forward(self, p_f, p_i, p_l):
            return p_l + self.scale * torch.cat([p_f, p_i], 1).mean(1, keepdim=True)

    try:
        module = build_fusion(FusionConfig(name="test_mean"), 8)
        assert isinstance(module, MeanFusion)
        assert module(torch.zeros(1, 4, 8), torch.ones(1, 7, 8), torch.zeros(1, 77, 8)).shape == (1, 77, 8)
    finally:
        FUSIONS.pop("test_mean")
    with pytest.raises(ConfigError, match="unknown fusion"):
        build_fusion(FusionConfig(name="nope"), 8)
    with pytest.raises(ConfigError):
        build_fusion(FusionConfig(num_tokens=8), 8)(torch.randn(1, 4, 8), torch.randn(1, 7, 8), torch.randn(1, 77, 8))
