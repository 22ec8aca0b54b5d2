"""Channels-last for bf16 on CPUs: chosen where it pays, and the results do not change."""

from __future__ import annotations

import copy

import pytest
import torch

from honestface.acceleration import apply_inference_layout, prefers_channels_last
from honestface.config import HonestFaceConfig
from honestface.models.honestface import HonestFaceModel, build_diffusers
from honestface.pipeline import HonestFacePipeline


@pytest.mark.parametrize("device, dtype, expected", [
    ("cpu", torch.bfloat16, True), ("cpu", torch.float16, True), ("cpu", torch.float32, False),
    ("cuda", torch.bfloat16, False), ("meta", torch.bfloat16, False),
])
def test_channels_last_only_where_measured_to_help(device, dtype, expected):
    assert prefers_channels_last(device, dtype) is expected


def _tiny_model() -> HonestFaceModel:
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    torch.manual_seed(0)
    return HonestFaceModel(config, unet, vae, vgg_state_dict=None, lora=False).eval()


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_layout_follows_the_dtype():
    model = _tiny_model()
    apply_inference_layout(model, "cpu", torch.float32)
    assert all(w.is_contiguous() for w in _conv_weights(model))
    apply_inference_layout(model.to(torch.bfloat16), "cpu", torch.bfloat16)
    weights = [w for w in _conv_weights(model) if w.shape[-1] > 1 or w.shape[1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_pipeline_in_bf16_on_cpu_gives_the_same_faces_in_either_layout():
    model = _tiny_model()
    pipeline = HonestFacePipeline(model, device="cpu", dtype=torch.bfloat16)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(pipeline.model)
               if w.shape[1] > 1)
    nchw = copy.deepcopy(pipeline.model).to(memory_format=torch.contiguous_format)
    size = model.config.image_size
    lq = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = pipeline.restore(lq)
        plain = HonestFacePipeline(nchw, device="cpu", dtype=torch.bfloat16).model(lq.bfloat16()).image.float()
    assert fast.shape == lq.shape
    assert fast.is_contiguous()  # the returned images keep the library convention
    torch.testing.assert_close(fast, plain.clamp(0, 1), atol=2e-2, rtol=0)
    assert (fast - plain).abs().mean() < 2e-3
