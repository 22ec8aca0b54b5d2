"""dtype="auto": bfloat16 on CPUs with native bf16, float32 on the others."""

from __future__ import annotations

import pytest
import torch

from honestface import cpu_features
from honestface.cpu_features import auto_dtype, cpu_has_native_bf16, parse_cpu_flags
from honestface.errors import ConfigError
from honestface.loaders.sd21 import resolve_dtype

# Abbreviated /proc/cpuinfo texts of real machines (two processors each; only the first counts).
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
COOPER_LAKE_NO_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_AVX512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
ARM_GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics\n"


@pytest.mark.parametrize("text, native", [
    (SAPPHIRE_RAPIDS, True), (COOPER_LAKE_NO_AMX, True), (SKYLAKE_AVX512, False), (ARM_GRAVITON, False), ("", False),
])
def test_native_bf16_from_cpuinfo_flags(text, native):
    flags = parse_cpu_flags(text)
    assert cpu_has_native_bf16(flags) is native
    assert auto_dtype("cpu", flags) is (torch.bfloat16 if native else torch.float32)


def test_flags_are_whole_words_of_the_first_processor():
    flags = parse_cpu_flags(SAPPHIRE_RAPIDS)
    assert "amx_bf16" in flags and "avx512f" in flags and "amx" not in flags
    # "avx512_bf16_extra" must not count as avx512_bf16
    assert not cpu_has_native_bf16(parse_cpu_flags("flags : avx512_bf16_extra avx512f\n"))


@pytest.mark.parametrize("text, expected", [(SAPPHIRE_RAPIDS, torch.bfloat16), (SKYLAKE_AVX512, torch.float32)])
def test_resolve_dtype_auto_follows_this_machines_flags(monkeypatch, tmp_path, text, expected):
    """Both branches through the public path: resolve_dtype reads /proc/cpuinfo (here a stand-in file)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    monkeypatch.setattr(cpu_features, "CPUINFO_PATH", cpuinfo)
    cpu_features.cpu_flags.cache_clear()
    try:
        assert resolve_dtype("auto") is expected
        assert resolve_dtype(None) is expected  # "auto" is the default
        assert resolve_dtype() is expected
        assert resolve_dtype("auto", "cpu") is expected
    finally:
        cpu_features.cpu_flags.cache_clear()


def test_unreadable_cpuinfo_means_float32(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_features, "CPUINFO_PATH", tmp_path / "absent")
    cpu_features.cpu_flags.cache_clear()
    try:
        assert cpu_features.cpu_flags() == frozenset()
        assert resolve_dtype("auto", "cpu") is torch.float32
    finally:
        cpu_features.cpu_flags.cache_clear()


def test_explicit_names_are_unchanged():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="auto, float32"):
        resolve_dtype("int8")
    with pytest.raises(ConfigError):
        resolve_dtype(torch.int64)


def test_auto_on_other_devices_is_float32():
    assert auto_dtype("meta") is torch.float32
