"""benchmarks/bench_restore.py: arguments, the plan of a run, the comparison table, the baseline calls.

The timings themselves need minutes at real sizes; what can rot silently is tested here.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_restore", REPO_ROOT / "benchmarks" / "bench_restore.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(bench, *argv: str) -> argparse.Namespace:
    args = bench.build_parser().parse_args(list(argv))
    args.device = args.device or "cpu"
    return args


def test_levers_parse_and_reject(bench):
    assert bench.parse_levers("none") == []
    assert bench.parse_levers("channels-last+compile-max-autotune") == ["channels-last", "compile-max-autotune"]
    with pytest.raises(ValueError, match="unknown lever"):
        bench.parse_levers("channels-first")
    with pytest.raises(ValueError, match="one compile mode"):
        bench.parse_levers("compile+compile-max-autotune")


@pytest.mark.parametrize("argv, message", [
    (["--levers", "warp-drive"], "unknown lever"),
    (["--batch", "0"], "must be >= 1"),
    (["--suite", "gpu", "--device", "cpu"], "needs a CUDA device"),
    (["--faces", "/nonexistent/faces"], "no folder"),
    (["--dtypes", "int8"], "invalid choice"),
])
def test_bad_arguments_are_refused_before_any_model_is_built(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cpu_plan_has_the_baseline_first_then_each_dtype_and_lever(bench):
    specs = bench.plan(_args(bench, "--batch", "1", "2", "--levers", "none", "channels-last"))
    assert [s["kind"] for s in specs[:1]] == ["baseline"]
    assert specs[0]["dtype"] == "float32" and specs[0]["levers"] == "none" and specs[0]["references"] == 0
    rows = [(s["dtype"], s["batch"], s["levers"]) for s in specs[1:]]
    assert rows == [(d, b, lever) for d in ("float32", "auto") for b in (1, 2) for lever in ("none", "channels-last")]


def test_gpu_suite_covers_the_levers_and_a_batch_sweep(bench):
    specs = bench.plan(_args(bench, "--suite", "gpu", "--device", "cuda"))
    honest = [s for s in specs if s["kind"] == "honestface"]
    assert {s["dtype"] for s in honest} == {"bfloat16", "float16"}
    levers = {lever for s in honest for lever in bench.parse_levers(s["levers"])}
    assert {"channels-last", "compile", "compile-max-autotune", "compile-reduce-overhead", "vae-slicing",
            "classic-attention"} <= levers
    assert {s["batch"] for s in honest} >= {1, 4, 8, 16, 32, 64}
    assert any(s["lora"] == "unmerged" for s in honest)
    assert all(s["device"] == "cuda" for s in specs)


def _row(kind, dtype, batch, face_seconds, **extra):
    return dict(kind=kind, dtype=dtype, resolved_dtype=dtype, batch=batch, references=0 if kind == "baseline" else 1,
                lora="merged", levers="none", face_seconds=face_seconds, cpu_face_seconds=face_seconds * 2,
                load_average=[1.0, 2.0], peak_bytes=3 * 2**30, baseline_bytes=2**30, weights_bytes=2**29,
                device_name="test device", threads=2, torch="x", **extra)


def test_comparisons_are_ratios_to_the_baseline_and_psnr_against_float32(bench, tmp_path):
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(2, 3, 8, 8, generator=generator)
    # a known error: every pixel off by 0.01 -> PSNR 40 dB exactly
    torch.save(reference, tmp_path / "fp32.pt")
    torch.save(reference + 0.01, tmp_path / "bf16.pt")
    results = [_row("baseline", "float32", 1, 2.0),
               _row("honestface", "float32", 1, 1.6, output=str(tmp_path / "fp32.pt")),
               _row("honestface", "bfloat16", 1, 0.5, output=str(tmp_path / "bf16.pt")),
               dict(_row("honestface", "bfloat16", 4, 0.0), error="out of memory")]
    bench.add_comparisons(results)
    assert results[0]["speedup"] == pytest.approx(1.0)
    assert results[1]["speedup"] == pytest.approx(2.0 / 1.6)
    assert results[2]["speedup"] == pytest.approx(4.0) and results[2]["faces_per_second"] == pytest.approx(2.0)
    assert results[2]["psnr_min"] == pytest.approx(40.0, abs=1e-3)
    assert "psnr_min" not in results[1]  # float32 is the reference itself

    cpu_table = bench.markdown_table(results, absolute=False)
    assert "4.00x" in cpu_table and "40.0 / 40.0 dB" in cpu_table and "failed: out of memory" in cpu_table
    assert " ms " not in cpu_table and "faces/s" not in cpu_table  # no absolute times off GPUs
    gpu_table = bench.markdown_table(results, absolute=True)
    assert "500.0 ms" in gpu_table and "| 2.0 |" in gpu_table
    # every row has as many cells as the header
    for table in (cpu_table, gpu_table):
        counts = {line.count("|") for line in table.splitlines()}
        assert len(counts) == 1

    args = argparse.Namespace(preset="sd21", faces=None, repeats=1, warmup=1, absolute=True,
                              suite=None)
    text = bench.summary(results, args)
    assert "Best throughput: 2.0 faces/s (bfloat16, batch 1" in text and "2000.0 ms per face" in text
    assert "Target" not in text  # targets are the GPU suite's
    args.suite = "gpu"
    text = bench.summary(results, args)
    assert "Target batch 1 <= 25 ms/face: missed (500.0 ms, bfloat16, none)." in text
    assert "Target >= 80 faces/s: missed (2.0 faces/s at batch 1)." in text
    fast = [_row("baseline", "float32", 1, 0.1), _row("honestface", "float16", 1, 0.02),
            _row("honestface", "float16", 32, 0.01)]
    bench.add_comparisons(fast)
    lines = bench.target_lines(fast)
    assert lines[0].startswith("Target batch 1 <= 25 ms/face: met (20.0 ms")
    assert lines[1].startswith("Target >= 80 faces/s: met (100.0 faces/s at batch 32)")


def test_baseline_calls_compute_what_the_model_computes(bench):
    """The plain calls (the release's way) and HonestFaceModel without references are the same
    computation when the model samples the VAE posterior: the baseline is a fair comparison."""
    model = bench.build_model(dict(preset="tiny", lora="merged"))
    model.restorer.config.latent_mode = "sample"
    model.eval()
    lq = torch.rand(2, 3, model.config.image_size, model.config.image_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.manual_seed(5)
        plain = bench.baseline_forward(model, lq)
        torch.manual_seed(5)
        ours = model(lq, color_correction="none").image
    assert plain.shape == lq.shape
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=0)


def _script_arguments(mode: str) -> list[str]:
    """The bench_restore.py arguments bench_gpu.sh passes in ``mode`` (read from the script)."""
    import re
    import shlex

    text = (REPO_ROOT / "benchmarks" / "bench_gpu.sh").read_text()
    match = re.search(rf"^\s*{mode}\)\s+args=\((.*?)\)\s*;;", text, flags=re.S | re.M)
    assert match, f"no '{mode})' case in bench_gpu.sh"
    return shlex.split(match.group(1).replace("\\\n", " "))


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_gpu_script_arguments_stay_valid(bench, mode):
    argv = _script_arguments(mode) + ["--device", "cuda"]
    args = _args(bench, *argv)
    for levers in args.levers or []:
        bench.parse_levers(levers)
    specs = bench.plan(args)
    assert specs[0]["kind"] == "baseline" and len(specs) > 5
    if mode == "quick":
        assert {s["dtype"] for s in specs[1:]} == {"bfloat16"}
        assert {s["batch"] for s in specs} == {1, 16, 64}


def test_gpu_script_refuses_without_cuda(tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "bench_gpu.sh")], capture_output=True, text=True,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
