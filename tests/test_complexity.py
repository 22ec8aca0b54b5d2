"""benchmarks/complexity.py: the counter against hand counts of known layers, and the report's shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def complexity():
    spec = importlib.util.spec_from_file_location("complexity", REPO_ROOT / "benchmarks" / "complexity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_conv_and_linear_macs_match_the_hand_count(complexity):
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, stride=2)
    image = torch.zeros(2, 3, 16, 16)
    # every output value: in_channels * k * k multiply-accumulates
    assert complexity.count_macs(lambda: conv(image)) == (2 * 8 * 8 * 8 * 3 * 3 * 3, 0)
    linear = torch.nn.Linear(10, 6)
    assert complexity.count_macs(lambda: linear(torch.zeros(4, 5, 10))) == (4 * 5 * 10 * 6, 0)
    assert complexity.count_params([conv, linear, conv]) == 8 * 3 * 9 + 8 + 10 * 6 + 6


def test_attention_is_counted_on_the_cpu(complexity):
    """Q K^T and the weighted sum of V: batch * heads * L * S * D MACs each, with the
    CPU's real tensors, whose fused kernel the counter has no formula for."""
    batch, heads, length, source, dim = 2, 3, 7, 5, 8
    q = torch.randn(batch, heads, length, dim)
    k, v = torch.randn(batch, heads, source, dim), torch.randn(batch, heads, source, dim)
    expected = 2 * batch * heads * length * source * dim
    assert complexity.count_macs(lambda: F.scaled_dot_product_attention(q, k, v)) == (expected, expected)


def test_report_of_the_tiny_model(complexity, tmp_path):
    from honestface.config import HonestFaceConfig
    from honestface.models.honestface import build_diffusers

    path = tmp_path / "report.json"
    assert complexity.main(["--model", "honestface", "--preset", "tiny", "--references", "2",
                            "--recognizer", "r50", "--json", str(path)]) == 0
    report = json.loads(path.read_text(encoding="utf-8"))
    assert set(report) == {"params", "macs", "parts", "settings"}
    assert list(report["parts"]) == ["VRE", "IDE", "recognizer (r50)", "fusion", "VAE encoder", "UNet", "VAE decoder"]
    assert report["params"] == sum(p["params"] for p in report["parts"].values())
    assert report["macs"] == sum(p["macs"] for p in report["parts"].values())
    unet, vae = build_diffusers(HonestFaceConfig.from_preset("tiny"))
    assert report["parts"]["UNet"]["params"] == sum(p.numel() for p in unet.parameters())
    vae_parts = report["parts"]["VAE encoder"]["params"] + report["parts"]["VAE decoder"]["params"]
    assert vae_parts == sum(p.numel() for p in vae.parameters())
    assert report["parts"]["recognizer (r50)"]["params"] == 43_590_848  # insightface's IResNet-50
    assert report["parts"]["UNet"]["attention_macs"] > 0 and report["parts"]["fusion"]["macs"] == 0
    # the IDE and the recogniser run once per reference
    one = complexity.measure("honestface", "tiny", references=1, recognizer="r50")["parts"]
    assert report["parts"]["recognizer (r50)"]["macs"] == 2 * one["recognizer (r50)"]["macs"]
    assert one["IDE"]["macs"] < report["parts"]["IDE"]["macs"] < 2 * one["IDE"]["macs"] + 1
    osdface = complexity.measure("osdface", "tiny")
    assert list(osdface["parts"]) == ["VRE", "VAE encoder", "UNet", "VAE decoder"]
