"""The loader node's dtype "auto" with the real ComfyUI: the CPU's native precision, and on
GPUs ComfyUI's judgement with bfloat16 preferred."""

from __future__ import annotations

import sys

import pytest
import test_nodes
import torch

from honestface import cpu_features

pack = test_nodes.pack  # the node pack imported inside the real ComfyUI (skips without it)


@pytest.fixture(scope="module")
def comfy_io(pack):
    return sys.modules["honestface_nodes.comfy_io"]


@pytest.mark.parametrize("flags, expected", [
    ({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_bf16"}, torch.bfloat16), ({"avx2"}, torch.float32),
])
def test_auto_on_the_cpu_follows_its_native_precision(comfy_io, monkeypatch, flags, expected):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert comfy_io.resolve_dtype("auto", torch.device("cpu")) is expected


def test_explicit_choices_are_kept(comfy_io):
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        assert comfy_io.resolve_dtype(name, torch.device("cpu")) is dtype


@pytest.mark.parametrize("fp16_ok, bf16_ok, expected", [
    (True, True, torch.bfloat16), (True, False, torch.float16), (False, True, torch.float32),
])
def test_auto_on_a_gpu_prefers_bf16_where_comfyui_allows_reduced_precision(comfy_io, monkeypatch, fp16_ok, bf16_ok,
                                                                            expected):
    # ComfyUI's verdict and CUDA's bf16 support are what the GPU would report
    monkeypatch.setattr(comfy_io.model_management, "should_use_fp16", lambda device=None, **_: fp16_ok)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert comfy_io.resolve_dtype("auto", torch.device("cuda", 0)) is expected


def test_a_model_loaded_for_a_gpu_waits_on_the_cpu_in_the_gpus_precision(pack, tmp_path):
    """The loader builds on the CPU and ComfyUI moves the model later: in bf16 for a GPU every
    part is bf16 (the float32 UNet and encoder are the CPU's policy only, with no bf16-math hooks)."""
    import folder_paths

    from honestface.acceleration import cpu_bf16_math_available
    from honestface.testing.make_tiny_models import make_tiny_models

    make_tiny_models(tmp_path)
    for kind in ("checkpoints", "honestface"):
        folder_paths.add_model_folder_path(kind, str(tmp_path / kind), is_default=True)
    build_model = sys.modules["honestface_nodes.restore_nodes"].build_model
    gpu = build_model("tiny-sd21-base.safetensors", "honestface-tiny.safetensors", "osdface-tiny", "bfloat16", "cuda")
    assert gpu.load_device.type == "cuda" and gpu.dtype is torch.bfloat16
    assert {p.dtype for p in gpu.pipeline.model.parameters()} == {torch.bfloat16}
    assert not any(hasattr(m, "_bf16_math_hooks") for m in gpu.pipeline.model.modules())
    cpu = build_model("tiny-sd21-base.safetensors", "honestface-tiny.safetensors", "osdface-tiny", "bfloat16", "cpu")
    unet_dtype = next(cpu.pipeline.model.unet.parameters()).dtype
    assert unet_dtype is (torch.float32 if cpu_bf16_math_available() else torch.bfloat16)
