"""HonestFace restoration speed against the plain diffusers calls of the OSDFace release.

    python benchmarks/bench_restore.py [--batch 1 4] [--dtypes float32 auto] [--lora merged]
                                       [--levers none channels-last compile] [--repeats 3]
                                       [--preset sd21|nano|tiny] [--faces DIR] [--device cuda]
    python benchmarks/bench_restore.py --suite gpu      # the GPU study, see bench_gpu.sh

Every run has two kinds of rows:

- **baseline**: the same UNet, VAE and VQ encoder (+ its token projection) called the way
  the OSDFace release's ``infer.py`` calls them: float32, library defaults (diffusers'
  attention processor, contiguous tensors, no compilation), the LoRA merged, one face per
  call (``--baseline-batch``), ``vae.encode(x).latent_dist.sample() * scaling_factor``,
  ``unet(z, 399, encoder_hidden_states=prompt)``, the x0 step in float64,
  ``vae.decode(x0 / scaling_factor).sample.clamp(-1, 1)``;
- **HonestFace**: :class:`~honestface.pipeline.HonestFacePipeline`'s model forward with
  ``--references`` references per face (and their identity embeddings), in each dtype
  (``auto`` = what :func:`honestface.loaders.sd21.resolve_dtype` picks for the device),
  LoRA merged or not, with optional levers (channels-last, compile, ...). "none" is the
  pipeline as shipped, which in bf16 on CPUs already picks channels-last and keeps the
  UNet and the VAE encoder in float32 with bf16 math (:mod:`honestface.acceleration`);
  the levers "contiguous", "all-bf16" and "bf16-vae-encoder" undo those (the last two
  are skipped for float32 rows).

Every figure is reported as the speed-up over the baseline of the same run (baseline
seconds per face / seconds per face), so runs on a busy machine stay comparable; seconds
per face are printed only on GPUs (``--absolute`` prints them anyway; the JSON always
has them, with the process CPU time and the load average). A row in reduced precision
also gets the PSNR of its output against the float32 HonestFace row of the same batch.

Models (``--preset``): ``sd21`` builds the real SD 2.1-base UNet and VAE, the OSDFace VQ
encoder, the IDE and a rank-16 LoRA with random weights (real sizes and compute, no file
needed); ``nano`` loads the shipped ``honestface-nano`` checkpoint (128 px); ``tiny`` is a
quick check of this script. Inputs are random unless ``--faces`` names a folder of face
crops (they are resized to the model size; the references of a face are the next faces).
Landmark and identity *backends* are not timed (see ``bench_references.py``).

Every configuration runs in its own process, so peak memory is that configuration's:

- CUDA: ``torch.cuda.max_memory_allocated`` during the timed restorations (weights included);
- CPU: the process's peak resident set size during the timed restorations (Linux
  ``VmHWM``, reset after the model is built; ``ru_maxrss`` where it cannot be reset).
  It includes the Python libraries (about 1 GiB); "peak above baseline" is the peak
  minus the memory in use just before the timed runs (CUDA: minus the allocated weights),
  i.e. what the restorations themselves need.

Latency is the median over ``--repeats`` timed batches (after ``--warmup`` untimed ones)
divided by the batch size. The untimed calls are timed apart (``warmup_seconds`` in the
JSON, "first call" in the progress lines): with ``compile`` the first one compiles. The result is printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
#: Optional speed levers of the HonestFace rows (the baseline never uses any).
LEVERS = {
    "none": "library defaults",
    "channels-last": "UNet, VAE, VQ encoder and inputs in channels-last memory format",
    "contiguous": "weights in NCHW even where the pipeline picks channels-last (bf16 on CPUs)",
    "all-bf16": "bf16 on CPUs: every part in bfloat16 (no float32 parts, see honestface.acceleration)",
    "bf16-vae-encoder": "bf16 on CPUs: the VAE encoder in bfloat16, only the UNet float32 with bf16 math",
    "classic-attention": "diffusers' non-SDPA attention processor (AttnProcessor), to measure what SDPA gives",
    "vae-slicing": "the VAE encodes/decodes one face at a time (memory of large batches)",
    "compile": "torch.compile of the UNet and the VAE encoder/decoder (mode 'default')",
    "compile-max-autotune": "torch.compile mode 'max-autotune' (Triton autotuning; CUDA graphs on GPUs)",
    "compile-reduce-overhead": "torch.compile mode 'reduce-overhead' (CUDA graphs for the fixed shapes)",
}
#: Levers that change only what a reduced precision keeps in float32.
PRECISION_LEVERS = ("all-bf16", "bf16-vae-encoder")
PRESETS = ("sd21", "nano", "tiny")
FACE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def parse_levers(levers: str) -> list[str]:
    """``"channels-last+compile"`` -> ``["channels-last", "compile"]`` (``"none"`` -> [])."""
    names = [name for name in levers.split("+") if name and name != "none"]
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        raise ValueError(f"unknown lever(s) {unknown}; choose from {', '.join(LEVERS)} (join several with '+')")
    if sum(name.startswith("compile") for name in names) > 1:
        raise ValueError(f"at most one compile mode per configuration, got {levers!r}")
    return names


def build_model(spec: dict):
    """The model of ``spec`` in float32 on the CPU (random weights, or the shipped nano checkpoint)."""
    import torch

    from honestface.config import HonestFaceConfig
    from honestface.models.honestface import HonestFaceModel

    merged = spec["lora"] == "merged"
    if spec["preset"] == "nano":
        from honestface.paths import NANO_WEIGHTS
        from honestface.pipeline import load_model

        return load_model(checkpoint=NANO_WEIGHTS, merge_lora=merged)
    from honestface.loaders.sd21 import build_sd21

    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset(spec["preset"])
    sd = build_sd21({"unet": config.unet, "vae": config.vae}, dtype="float32", seed=0)
    model = HonestFaceModel(config, sd.unet, sd.vae, vgg_state_dict=None, lora=True)
    with torch.no_grad():
        for name, parameter in model.restorer.unet.named_parameters():
            if ".lora_B." in name:  # a non-zero adapter, as after training
                parameter.normal_(0.0, 0.01)
    if merged:
        model.restorer.merge_lora()
    return model


def apply_levers(model, levers: list[str]) -> None:
    """Apply the speed levers of a HonestFace row to ``model`` (in place)."""
    import torch

    unet, vae = model.restorer.unet, model.restorer.vae
    if "classic-attention" in levers:
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
        vae.set_attn_processor(AttnProcessor())
    if "channels-last" in levers:
        model.to(memory_format=torch.channels_last)
    if "contiguous" in levers:
        model.to(memory_format=torch.contiguous_format)
    if "vae-slicing" in levers:
        vae.enable_slicing()
    for lever in levers:
        if lever.startswith("compile"):
            mode = lever.removeprefix("compile-") if lever != "compile" else "default"
            model.restorer.unet = torch.compile(unet, mode=mode, dynamic=False)
            vae.encoder = torch.compile(vae.encoder, mode=mode, dynamic=False)
            vae.decoder = torch.compile(vae.decoder, mode=mode, dynamic=False)


def set_float32_parts(levers: list[str]) -> None:
    """The levers that change which parts keep float32 in bf16 on CPUs (before the pipeline is built)."""
    from honestface import acceleration

    if "all-bf16" in levers:
        acceleration.CPU_BF16_FLOAT32_PARTS = ()
    if "bf16-vae-encoder" in levers:
        acceleration.CPU_BF16_FLOAT32_PARTS = tuple(name for name in acceleration.CPU_BF16_FLOAT32_PARTS
                                                    if not name.startswith("restorer.vae."))


def load_faces(folder: str, count: int, size: int):
    """``count`` face crops from ``folder`` (sorted, repeated if too few) as (count, 3, size, size)."""
    import torch

    from honestface.image_io import load_image, resize_to

    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in FACE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no face images ({', '.join(FACE_SUFFIXES)}) in {folder}")
    return torch.cat([resize_to(load_image(files[i % len(files)])[None], size) for i in range(count)])


def make_inputs(spec: dict, size: int, identity_dim: int) -> dict:
    """LQ faces (B, 3, S, S), references (B, N, 3, S, S), their mask and embeddings (B, N, D)."""
    import torch

    batch, count = spec["batch"], spec["references"]
    generator = torch.Generator().manual_seed(1)
    if spec.get("faces"):
        pool = load_faces(spec["faces"], batch + count, size)
        lq = pool[:batch]
        references = torch.stack([pool[i + 1: i + 1 + count] for i in range(batch)]) if count else None
    else:
        lq = torch.rand(batch, 3, size, size, generator=generator)
        references = torch.rand(batch, count, 3, size, size, generator=generator) if count else None
    mask = torch.ones(batch, count, dtype=torch.bool) if count else None
    embeddings = torch.nn.functional.normalize(
        torch.randn(batch, count, identity_dim, generator=generator), dim=-1) if count else None
    return dict(lq=lq, references=references, mask=mask, embeddings=embeddings)


def baseline_forward(model, lq):
    """The OSDFace release's calls on the same modules: (B, 3, S, S) [0, 1] -> restored [0, 1]."""
    import torch

    restorer = model.restorer
    unet, vae = restorer.unet, restorer.vae
    x = lq * 2 - 1
    prompt = model.vre(x).tokens
    latent = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
    noise_pred = unet(latent, restorer.config.timestep, encoder_hidden_states=prompt).sample
    abar = restorer.alphas_cumprod.to(torch.float64)[restorer.config.timestep]
    x0 = ((latent.double() - (1 - abar).sqrt() * noise_pred.double()) / abar.sqrt()).float()
    image = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
    return (image * 0.5 + 0.5).clamp(0, 1)


def run_one(spec: dict) -> dict:
    """Build the model for ``spec`` and time it (runs inside the child process)."""
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from honestface.loaders.sd21 import resolve_dtype
    from honestface.pipeline import HonestFacePipeline

    device = torch.device(spec["device"])
    baseline = spec["kind"] == "baseline"
    dtype = torch.float32 if baseline else resolve_dtype(spec["dtype"], device)
    levers = [] if baseline else parse_levers(spec["levers"])
    started = time.perf_counter()
    model = build_model(spec)
    set_float32_parts(levers)
    pipeline = HonestFacePipeline(model, device=device, dtype=dtype, batch_size=spec["batch"])
    apply_levers(model, levers)
    build_seconds = time.perf_counter() - started

    config = model.config
    inputs = make_inputs(spec, config.image_size, config.ide.identity_dim)
    channels_last = "channels-last" in levers
    if channels_last:
        inputs = {k: (v.contiguous(memory_format=torch.channels_last) if v is not None and v.dim() == 4 else v)
                  for k, v in inputs.items()}
    torch.manual_seed(2)  # the baseline samples the VAE posterior, as the release does

    def restore() -> torch.Tensor:
        with torch.inference_mode():
            if baseline:
                image = baseline_forward(model, inputs["lq"].to(device))
            else:
                image = pipeline.forward_prepared(inputs["lq"], inputs["references"], inputs["mask"], None, None,
                                                  inputs["embeddings"]).image
            return image.float().cpu()  # the result leaves the device, as in real use

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warmup_seconds = []  # the first call includes torch.compile's compilation
    for _ in range(spec["warmup"]):
        start = time.perf_counter()
        restore()
        synchronize()
        warmup_seconds.append(time.perf_counter() - start)
    weights_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline_bytes = torch.cuda.memory_allocated(device)
        peak_method = "cuda max_memory_allocated"
    else:
        baseline_bytes = (_rss_kib("VmRSS") or 0) * 1024  # libraries + weights, before the timed runs
        peak_method = "VmHWM (reset)" if _reset_peak_rss() else "ru_maxrss (whole process)"
    times, cpu_times, loads = [], [], [os.getloadavg()[0]]
    output = None
    for _ in range(spec["repeats"]):
        synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        output = restore()
        synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    loads.append(os.getloadavg()[0])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _rss_kib("VmHWM") if peak_method.startswith("VmHWM") else None
        peak = (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    if spec.get("output") and output is not None:
        torch.save(output, spec["output"])
    batch_seconds = statistics.median(times)
    batch = spec["batch"]
    return dict(spec, resolved_dtype=str(dtype).removeprefix("torch."), batch_seconds=batch_seconds,
                face_seconds=batch_seconds / batch, cpu_face_seconds=statistics.median(cpu_times) / batch,
                load_average=loads, peak_bytes=peak, baseline_bytes=baseline_bytes, weights_bytes=weights_bytes,
                build_seconds=build_seconds, warmup_seconds=warmup_seconds, peak_method=peak_method, times=times,
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
    """float32 and auto everywhere (auto: bf16 on CPUs with AVX512-BF16/AMX); CUDA: float16 and bfloat16."""
    return ["float16", "bfloat16"] if device.startswith("cuda") else ["float32", "auto"]


def plan(args: argparse.Namespace) -> list[dict]:
    """The configurations of a run: the baseline row(s) first, then the HonestFace rows."""
    common = dict(device=args.device, repeats=args.repeats, warmup=args.warmup, preset=args.preset,
                  faces=str(args.faces) if args.faces else None)
    specs = [dict(common, kind="baseline", dtype="float32", lora="merged", levers="none", batch=batch,
                  references=0) for batch in args.baseline_batch]
    if args.suite == "gpu":
        dtypes = args.dtypes or ["bfloat16", "float16"]
        for dtype in dtypes:  # batch 1 with each lever, then the batch sweep with the best-known set
            for levers in args.levers or ["none", "channels-last", "compile", "channels-last+compile-max-autotune",
                                          "compile-reduce-overhead", "classic-attention"]:
                specs.append(dict(common, kind="honestface", dtype=dtype, lora="merged", levers=levers, batch=1,
                                  references=args.references))
            for batch in [b for b in args.batch if b > 1] or [4, 8, 16, 32, 64]:
                for levers in ("channels-last", "channels-last+vae-slicing"):
                    specs.append(dict(common, kind="honestface", dtype=dtype, lora="merged", levers=levers,
                                      batch=batch, references=args.references))
        specs.append(dict(common, kind="honestface", dtype="bfloat16", lora="unmerged", levers="none", batch=1,
                          references=args.references))
        return specs
    dtypes = args.dtypes or supported_dtypes(args.device)
    for dtype in dtypes:
        for lora in args.lora:
            for batch in args.batch:
                for levers in args.levers or ["none"]:
                    if dtype == "float32" and set(parse_levers(levers)) & set(PRECISION_LEVERS):
                        continue  # they only change reduced precision
                    specs.append(dict(common, kind="honestface", dtype=dtype, lora=lora, levers=levers, batch=batch,
                                      references=args.references))
    return specs


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


def psnr(image, reference) -> tuple[float, float]:
    """Min and mean over the batch of the PSNR (dB, peak 1) of ``image`` against ``reference``."""
    import torch

    mse = ((image.float() - reference.float()) ** 2).flatten(1).mean(dim=1)
    values = (10 * torch.log10(1.0 / mse.clamp_min(1e-20))).tolist()
    return min(values), sum(values) / len(values)


def add_comparisons(results: list[dict]) -> None:
    """Speed-up over the baseline, faces/s and (reduced precision) PSNR against float32, in place.

    The baseline of a row is the baseline row of the same batch, else of batch 1, else the
    first. The PSNR reference of a row is the float32 HonestFace row of the same batch,
    LoRA mode and reference count (the first one run, normally without levers).
    """
    import torch

    ok = [r for r in results if "error" not in r]
    baselines = {r["batch"]: r for r in ok if r["kind"] == "baseline"}
    for r in ok:
        r["faces_per_second"] = 1.0 / r["face_seconds"]
        base = baselines.get(r["batch"]) or baselines.get(1) or next(iter(baselines.values()), None)
        if base is not None:
            r["speedup"] = base["face_seconds"] / r["face_seconds"]
            r["cpu_speedup"] = base["cpu_face_seconds"] / r["cpu_face_seconds"]
            r["baseline_batch"] = base["batch"]
        if r["kind"] != "honestface" or r["resolved_dtype"] == "float32" or not r.get("output"):
            continue
        reference = next((q for q in ok if q["kind"] == "honestface" and q["resolved_dtype"] == "float32"
                          and q["batch"] == r["batch"] and q["lora"] == r["lora"]
                          and q["references"] == r["references"] and q.get("output")), None)
        if reference is not None and Path(reference["output"]).is_file() and Path(r["output"]).is_file():
            r["psnr_min"], r["psnr_mean"] = psnr(torch.load(r["output"], weights_only=True),
                                                 torch.load(reference["output"], weights_only=True))


def best_throughput(results: list[dict]) -> dict | None:
    """The HonestFace row with the most faces per second."""
    rows = [r for r in results if "error" not in r and r["kind"] == "honestface"]
    return max(rows, key=lambda r: r["faces_per_second"]) if rows else None


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def markdown_table(results: list[dict], absolute: bool) -> str:
    """One row per configuration; absolute times only when ``absolute``."""
    columns = ["model", "dtype", "batch", "refs", "LoRA", "levers", "speed-up over baseline",
               "CPU-time speed-up"]
    if absolute:
        columns += ["per face", "faces/s"]
    columns += ["PSNR vs fp32 (min / mean)", "peak memory", "peak above baseline", "weights"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in results:
        dtype = r.get("resolved_dtype", r["dtype"])
        if r["dtype"] == "auto" and "resolved_dtype" in r:
            dtype = f"auto ({dtype})"
        cells = ["baseline (plain calls)" if r["kind"] == "baseline" else "HonestFace", dtype, str(r["batch"]),
                 str(r["references"]), r["lora"], r["levers"]]
        if "error" in r:
            cells += [f"failed: {r['error']}"] + [""] * (len(columns) - len(cells) - 1)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells += [f"{r['speedup']:.2f}x" if "speedup" in r else "n/a",
                  f"{r['cpu_speedup']:.2f}x" if "cpu_speedup" in r else "n/a"]
        if absolute:
            cells += [f"{r['face_seconds'] * 1000:.1f} ms", f"{r['faces_per_second']:.1f}"]
        cells += [f"{r['psnr_min']:.1f} / {r['psnr_mean']:.1f} dB" if "psnr_min" in r else "",
                  _gib(r["peak_bytes"]), _gib(r["peak_bytes"] - r["baseline_bytes"]), _gib(r["weights_bytes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(results: list[dict], args: argparse.Namespace) -> str:
    """What ran where, the load of the machine, and (GPU) the best throughput."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return "no configuration ran"
    first = ok[0]
    loads = [value for r in ok for value in r["load_average"]]
    text = [f"HonestFace restoration, preset '{args.preset}', inputs "
            f"{'from ' + str(args.faces) if args.faces else 'random'}, median of {args.repeats} after "
            f"{args.warmup} warm-up; {first['device_name']}, {first['threads']} threads, torch {first['torch']}; "
            f"1-min load average {min(loads):.1f}-{max(loads):.1f}."]
    baseline = next((r for r in ok if r["kind"] == "baseline"), None)
    if baseline is not None and args.absolute:
        text.append(f"Baseline: {baseline['face_seconds'] * 1000:.1f} ms per face at batch {baseline['batch']}.")
    best = best_throughput(results)
    if best is not None and args.absolute:
        text.append(f"Best throughput: {best['faces_per_second']:.1f} faces/s ({best['resolved_dtype']}, batch "
                    f"{best['batch']}, levers {best['levers']}), peak {_gib(best['peak_bytes'])}.")
    if args.absolute and args.suite == "gpu":
        text.extend(target_lines(results))
    return "\n".join(text)


#: The GPU targets at 512x512 in bf16/fp16: seconds per face at batch 1, faces/s at the best batch.
TARGET_BATCH1_SECONDS = 0.025
TARGET_FACES_PER_SECOND = 80.0


def target_lines(results: list[dict]) -> list[str]:
    """Pass/fail of the GPU targets by the best HonestFace rows (reduced precision only)."""
    rows = [r for r in results if "error" not in r and r["kind"] == "honestface" and r["resolved_dtype"] != "float32"]
    lines = []
    single = [r for r in rows if r["batch"] == 1]
    if single:
        fastest = min(single, key=lambda r: r["face_seconds"])
        verdict = "met" if fastest["face_seconds"] <= TARGET_BATCH1_SECONDS else "missed"
        lines.append(f"Target batch 1 <= {TARGET_BATCH1_SECONDS * 1000:.0f} ms/face: {verdict} "
                     f"({fastest['face_seconds'] * 1000:.1f} ms, {fastest['resolved_dtype']}, {fastest['levers']}).")
    if rows:
        best = max(rows, key=lambda r: r["faces_per_second"])
        verdict = "met" if best["faces_per_second"] >= TARGET_FACES_PER_SECOND else "missed"
        lines.append(f"Target >= {TARGET_FACES_PER_SECOND:.0f} faces/s: {verdict} ({best['faces_per_second']:.1f} "
                     f"faces/s at batch {best['batch']}).")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default: 1)")
    parser.add_argument("--baseline-batch", type=int, nargs="+", default=[1],
                        help="batch sizes of the baseline rows (default: 1, as the release runs)")
    parser.add_argument("--dtypes", nargs="+", default=None,
                        choices=("auto", "float32", "float16", "bfloat16"),
                        help="dtypes of the HonestFace rows (default: CPU float32 auto; CUDA float16 bfloat16)")
    parser.add_argument("--lora", nargs="+", default=["merged"], choices=("merged", "unmerged"),
                        help="LoRA folded into the UNet or kept as an adapter (default: merged)")
    parser.add_argument("--levers", nargs="+", default=None,
                        help="lever sets of the HonestFace rows, each a '+'-joined list of: "
                             + ", ".join(LEVERS) + " (default: none)")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per configuration (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (default: 1)")
    parser.add_argument("--references", type=int, default=1, help="references per face (default: 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--preset", default="sd21", choices=PRESETS,
                        help="sd21 (real sizes, random weights), nano (the shipped checkpoint) or tiny")
    parser.add_argument("--faces", type=Path, default=None, help="folder of face crops used as inputs")
    parser.add_argument("--suite", choices=("gpu",), default=None,
                        help="gpu: bf16/fp16 at batch 1 with each lever, a batch sweep, unmerged LoRA")
    parser.add_argument("--absolute", action="store_true", default=None,
                        help="print seconds per face and faces/s (default: on GPUs only)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per configuration before giving up")
    parser.add_argument("--json", type=Path, default=None, help="also write all results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.child is not None:
        result = run_one(json.loads(args.child))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    for levers in args.levers or []:
        try:
            parse_levers(levers)
        except ValueError as error:
            parser.error(str(error))
    if any(b < 1 for b in args.batch + args.baseline_batch) or args.repeats < 1 or args.warmup < 0:
        parser.error("batch sizes and --repeats must be >= 1, --warmup >= 0")
    if args.faces is not None and not args.faces.is_dir():
        parser.error(f"--faces: no folder {args.faces}")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.suite == "gpu" and not args.device.startswith("cuda"):
        parser.error("--suite gpu needs a CUDA device")
    if args.absolute is None:
        args.absolute = args.device.startswith("cuda")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_restore_") as outputs:
        for index, spec in enumerate(plan(args)):
            spec["output"] = str(Path(outputs) / f"{index}.pt")
            result = run_in_subprocess(spec, args.timeout)
            results.append(result)
            label = f"{spec['kind']} {spec['dtype']} {spec['lora']} {spec['levers']} batch {spec['batch']}"
            if "error" in result:
                print(f"{label}: FAILED {result['error']}", file=sys.stderr, flush=True)
            else:
                first = result["warmup_seconds"][0] if result["warmup_seconds"] else float("nan")
                print(f"{label}: {result['face_seconds'] * 1000:.0f} ms/face (CPU {result['cpu_face_seconds']:.2f} s), "
                      f"first call {first:.1f} s, load {result['load_average'][-1]:.1f}", file=sys.stderr, flush=True)
        add_comparisons(results)
    for r in results:
        r.pop("output", None)
    print("\n" + summary(results, args) + "\n")
    print(markdown_table(results, args.absolute))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
