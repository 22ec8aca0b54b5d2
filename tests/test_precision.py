"""dtype "auto" everywhere a user picks precision, and the bf16-on-CPU policy of
:mod:`honestface.acceleration`: the UNet and the VAE encoder keep float32 weights and
activations computed with bf16 math."""

from __future__ import annotations

import pytest
import torch

from honestface import acceleration, cpu_features
from honestface.acceleration import CPU_BF16_FLOAT32_PARTS, float32_parts, place_model
from honestface.config import HonestFaceConfig
from honestface.loaders.sd21 import resolve_dtype
from honestface.models.honestface import HonestFaceModel, build_diffusers
from honestface.pipeline import HonestFacePipeline

needs_bf16_math = pytest.mark.skipif(not acceleration.cpu_bf16_math_available(),
                                     reason="this torch cannot switch oneDNN to bf16 math")


def _tiny_model(seed: int = 0) -> HonestFaceModel:
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=seed)
    torch.manual_seed(seed)
    model = HonestFaceModel(config, unet, vae, vgg_state_dict=None, lora=False).eval()
    with torch.no_grad():  # weights that bf16 cannot hold exactly
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-4)
    return model


def _math_modes() -> tuple[str, str]:
    return torch.backends.mkldnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision


@pytest.mark.parametrize("flags, expected", [
    ({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_tile", "amx_bf16"}, torch.bfloat16),
    ({"avx2", "avx512f", "fma"}, torch.float32), (set(), torch.float32),
])
def test_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, expected):
    assert cpu_features.auto_dtype("cpu", flags=flags) is expected
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype(None) is expected


def test_cli_precision_defaults_to_auto():
    from honestface.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["restore", "face.png", "-o", "out", "--weights", "w.safetensors"])
    assert args.dtype == "auto"
    assert parser.parse_args(["restore", "face.png", "-o", "out", "--weights", "w.safetensors", "--dtype", "float32"]).dtype == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["restore", "face.png", "-o", "out", "--weights", "w.safetensors", "--dtype", "int8"])


def test_from_pretrained_resolves_auto_for_its_device(monkeypatch):
    from honestface.paths import NANO_WEIGHTS

    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2"}))
    pipeline = HonestFacePipeline.from_pretrained(checkpoint=NANO_WEIGHTS)  # dtype "auto" by default
    assert pipeline.dtype is torch.float32
    assert all(p.dtype is torch.float32 for p in pipeline.model.parameters())


def test_only_bf16_on_cpus_keeps_float32_parts():
    expected = CPU_BF16_FLOAT32_PARTS if acceleration.cpu_bf16_math_available() else ()
    assert float32_parts("cpu", torch.bfloat16) == expected
    assert float32_parts("cpu", torch.float32) == ()
    assert float32_parts("cpu", torch.float16) == ()
    assert float32_parts("cuda", torch.bfloat16) == ()


@needs_bf16_math
def test_place_model_keeps_the_float32_parts_with_their_exact_weights():
    model = _tiny_model()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    place_model(model, "cpu", torch.bfloat16)
    kept = tuple(name + "." for name in CPU_BF16_FLOAT32_PARTS)
    assert any(name.startswith(kept) for name, _ in model.named_parameters())
    for name, parameter in model.named_parameters():
        if name.startswith(kept):
            assert parameter.dtype is torch.float32
            torch.testing.assert_close(parameter, original[name], rtol=0, atol=0)  # never rounded
        else:
            assert parameter.dtype is torch.bfloat16, name
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


@needs_bf16_math
def test_bf16_math_is_on_only_during_the_float32_parts():
    model = _tiny_model()
    pipeline = HonestFacePipeline(model, device="cpu", dtype=torch.bfloat16)
    restorer = pipeline.model.restorer
    unet = restorer.unet
    seen = {}
    probes = [module.conv_in.register_forward_hook(lambda *_, name=name: seen.setdefault(name, _math_modes()) and None)
              for name, module in (("unet", unet), ("encoder", restorer.vae.encoder),
                                   ("decoder", restorer.vae.decoder))]
    before = _math_modes()
    assert before != ("bf16", "bf16")
    size = model.config.image_size
    with torch.inference_mode():
        pipeline.restore(torch.rand(1, 3, size, size))
    assert seen == {"unet": ("bf16", "bf16"), "encoder": ("bf16", "bf16"), "decoder": before}
    assert _math_modes() == before
    # restored when the forward fails, too
    for probe in probes:
        probe.remove()
    unet.conv_in.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("inside the UNet")))
    with pytest.raises(RuntimeError, match="inside the UNet"), torch.inference_mode():
        pipeline.restore(torch.rand(1, 3, size, size))
    assert _math_modes() == before


@needs_bf16_math
def test_float32_parts_bring_bf16_closer_to_float32():
    """The reason for the policy: the same faces, closer to float32 than with every part in bf16."""
    size = HonestFaceConfig.from_preset("tiny").image_size
    lq = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(3))

    def restore(dtype, keep_float32=None) -> torch.Tensor:
        pipeline = HonestFacePipeline(_tiny_model(), device="cpu", dtype=torch.float32)
        place_model(pipeline.model, "cpu", dtype, keep_float32=keep_float32)
        pipeline.dtype = dtype
        with torch.inference_mode():
            return pipeline.restore(lq).float()

    reference = restore(torch.float32)
    mixed = (restore(torch.bfloat16) - reference).pow(2).mean()
    plain = (restore(torch.bfloat16, keep_float32=()) - reference).pow(2).mean()
    assert 0 < mixed < plain


def test_bench_compares_the_policy_with_all_bf16_in_reduced_precision_only():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_restore.py"
    spec = importlib.util.spec_from_file_location("bench_restore_precision", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.build_parser().parse_args(["--dtypes", "float32", "auto", "--levers", "none", "all-bf16"])
    args.device = "cpu"
    rows = [(s["dtype"], s["levers"]) for s in bench.plan(args) if s["kind"] == "honestface"]
    assert rows == [("float32", "none"), ("auto", "none"), ("auto", "all-bf16")]


@needs_bf16_math
def test_placing_a_model_twice_still_restores_the_math_mode():
    model = _tiny_model()
    before = _math_modes()
    pipeline = HonestFacePipeline(model, device="cpu", dtype=torch.bfloat16)
    again = HonestFacePipeline(pipeline.model, device="cpu", dtype=torch.bfloat16)
    size = model.config.image_size
    with torch.inference_mode():
        again.restore(torch.rand(1, 3, size, size))
    assert _math_modes() == before


@needs_bf16_math
def test_a_model_placed_in_float32_after_bf16_computes_in_float32():
    """The same model object used by a bf16 pipeline, then a float32 one (a node whose precision
    changed, a script comparing both): the float32 run has no bf16 math left."""
    model = _tiny_model()
    size = model.config.image_size
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    HonestFacePipeline(model, device="cpu", dtype=torch.bfloat16)
    seen = []
    model.restorer.unet.conv_in.register_forward_hook(lambda *_: seen.append(_math_modes()) and None)
    with torch.inference_mode():
        after = HonestFacePipeline(model, device="cpu", dtype=torch.float32).restore(lq)
    assert seen and seen[0] != ("bf16", "bf16")
    assert not any(hasattr(m, "_bf16_math_hooks") for m in model.modules())
    with torch.inference_mode():
        fresh = HonestFacePipeline(_tiny_model(), device="cpu", dtype=torch.float32).restore(lq)
    torch.testing.assert_close(after, fresh, atol=2e-2, rtol=0)  # only the bf16 rounding of the other weights
