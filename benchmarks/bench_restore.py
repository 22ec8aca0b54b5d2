"""Per-face latency and peak memory of HonestFace restoration at real SD 2.1-base sizes.

    python benchmarks/bench_restore.py [--batch 1 4] [--dtypes float32 bfloat16]
                                       [--lora merged unmerged] [--repeats 3] [--device cuda]

The model is the ``"sd21"`` preset with random weights: the SD 2.1-base UNet and VAE
built from the configs shipped in the package, the OSDFace VQ encoder, the IDE (VGG16
stages, FIE) and a rank-16 LoRA, so sizes and compute are the real ones and no file is
needed. One restoration = the model forward of :class:`~honestface.pipeline.HonestFacePipeline`
on a 512x512 face with ``--references`` references and their identity embeddings
(landmark and identity *backends* are not timed: they are separate models).

Every configuration runs in its own process, so peak memory is that configuration's:

- CUDA: ``torch.cuda.max_memory_allocated`` during the timed restorations (weights included);
- CPU: the process's peak resident set size during the timed restorations (Linux
  ``VmHWM``, reset after the model is built; ``ru_maxrss`` where it cannot be reset).
  It includes the Python libraries (about 1 GiB); "peak above baseline" is the peak
  minus the memory in use just before the timed runs (CUDA: minus the allocated weights),
  i.e. what the restorations themselves need.

Latency is the median over ``--repeats`` timed batches (after ``--warmup`` untimed ones)
divided by the batch size. The result is printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "


# ------------------------------------------------------------------------------ child process
def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM) of this process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(spec: dict) -> dict:
    """Build the model for ``spec`` and time it (runs inside the child process)."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from honestface.config import HonestFaceConfig
    from honestface.loaders.sd21 import build_sd21, resolve_dtype
    from honestface.models.honestface import HonestFaceModel
    from honestface.pipeline import HonestFacePipeline

    device = torch.device(spec["device"])
    dtype = resolve_dtype(spec["dtype"])
    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset(spec["preset"])
    started = time.perf_counter()
    sd = build_sd21({"unet": config.unet, "vae": config.vae}, dtype=dtype, device=device, seed=0)
    model = HonestFaceModel(config, sd.unet, sd.vae, vgg_state_dict=None, lora=True)
    with torch.no_grad():
        for name, parameter in model.restorer.unet.named_parameters():
            if ".lora_B." in name:  # a non-zero adapter, as after training
                parameter.normal_(0.0, 0.01)
    if spec["lora"] == "merged":
        model.restorer.merge_lora()
    pipeline = HonestFacePipeline(model, device=device, dtype=dtype, batch_size=spec["batch"])
    build_seconds = time.perf_counter() - started

    batch, size, count = spec["batch"], config.image_size, spec["references"]
    generator = torch.Generator().manual_seed(1)
    lq = torch.rand(batch, 3, size, size, generator=generator)
    references = torch.rand(batch, count, 3, size, size, generator=generator) if count else None
    mask = torch.ones(batch, count, dtype=torch.bool) if count else None
    embeddings = torch.nn.functional.normalize(
        torch.randn(batch, count, config.ide.identity_dim, generator=generator), dim=-1) if count else None

    def restore() -> None:
        with torch.inference_mode():
            output = pipeline.training_forward(lq, references, mask, None, None, embeddings)
            output.image.float().cpu()  # the result leaves the device, as in real use

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(spec["warmup"]):
        restore()
    synchronize()
    weights_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        peak_method = "cuda max_memory_allocated"
    else:
        baseline = (_rss_kib("VmRSS") or 0) * 1024  # libraries + weights, before the timed runs
        peak_method = "VmHWM (reset)" if _reset_peak_rss() else "ru_maxrss (whole process)"
    times = []
    for _ in range(spec["repeats"]):
        synchronize()
        start = time.perf_counter()
        restore()
        synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _rss_kib("VmHWM") if peak_method.startswith("VmHWM") else None
        peak = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    batch_seconds = statistics.median(times)
    return dict(spec, batch_seconds=batch_seconds, face_seconds=batch_seconds / batch,
                peak_bytes=peak, baseline_bytes=baseline, weights_bytes=weights_bytes, build_seconds=build_seconds,
                peak_method=peak_method, times=times,
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
                threads=torch.get_num_threads(), torch=torch.__version__)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


# ------------------------------------------------------------------------------ parent process
def supported_dtypes(device: str) -> list[str]:
    """float32 and bfloat16 everywhere; float16 on CUDA."""
    return ["float32", "float16", "bfloat16"] if device.startswith("cuda") else ["float32", "bfloat16"]


def run_in_subprocess(spec: dict, timeout: float | None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timed out after {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return dict(spec, error=" | ".join(tail) or f"exit code {done.returncode}")


def markdown_table(results: list[dict]) -> str:
    header = ("| device | dtype | batch | LoRA | per-face latency | batch latency | peak memory | "
              "peak above baseline | weights | peak measured by |\n"
              "|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['device']} | {r['dtype']} | {r['batch']} | {r['lora']} | failed: {r['error']} | | | | | |")
            continue
        rows.append(f"| {r['device_name']} | {r['dtype']} | {r['batch']} | {r['lora']} | "
                    f"{r['face_seconds'] * 1000:.0f} ms | {r['batch_seconds'] * 1000:.0f} ms | "
                    f"{r['peak_bytes'] / 2**30:.2f} GiB | {(r['peak_bytes'] - r['baseline_bytes']) / 2**30:.2f} GiB | "
                    f"{r['weights_bytes'] / 2**30:.2f} GiB | {r['peak_method']} |")
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="dtypes (default: what the device supports: CPU float32 bfloat16, CUDA + float16)")
    parser.add_argument("--lora", nargs="+", default=["merged", "unmerged"], choices=("merged", "unmerged"),
                        help="LoRA folded into the UNet or kept as an adapter (default: both)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per configuration (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (default: 1)")
    parser.add_argument("--references", type=int, default=1, help="references per face (default: 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--preset", default="sd21", choices=("sd21", "tiny"),
                        help="model sizes: sd21 (real) or tiny (a quick check of this script)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration before giving up")
    parser.add_argument("--json", type=Path, default=None, help="also write all results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        result = run_one(json.loads(args.child))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = args.dtypes or supported_dtypes(args.device)
    results = []
    for dtype in dtypes:
        for lora in args.lora:
            for batch in args.batch:
                spec = dict(device=args.device, dtype=dtype, lora=lora, batch=batch, repeats=args.repeats,
                            warmup=args.warmup, references=args.references, preset=args.preset)
                result = run_in_subprocess(spec, args.timeout)
                results.append(result)
                if "error" in result:
                    print(f"{dtype} {lora} batch {batch}: FAILED {result['error']}", file=sys.stderr, flush=True)
                else:
                    print(f"{dtype} {lora} batch {batch}: {result['face_seconds'] * 1000:.0f} ms/face, "
                          f"peak {result['peak_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    print(f"\nHonestFace restoration, preset '{args.preset}', {args.references} reference(s) per face, "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print(markdown_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
