"""What a run will cost, measured before renting: ``train.py --profile N``.

    python training/train.py --config training/configs/paper.yaml --profile 5 [key=value ...]
    python training/cost.py --config training/configs/paper.yaml --workers 0 2 [key=value ...]

The second form measures the data loader alone (no model, no model files).

Runs N optimiser steps of the configured run (nothing is saved: no checkpoint, no export)
and reports:

- step time: the first step alone (it includes lazy start-up work) and the mean of the
  others, in seconds of wall time (CUDA is synchronised around each step) and of CPU time
  of the process (all its threads; on a shared machine the CPU time is the steadier one);
- peak memory per process: ``torch.cuda.max_memory_allocated`` on a GPU, the peak
  resident set size (``ru_maxrss``) of the process on a CPU;
- the data loader alone: samples/s with ``train.num_workers`` workers and with none (the
  main process), at the config's image size, degradation and references; without workers
  also samples per CPU-second (what one core makes);
- the workers a process needs to keep up with the measured step time:
  ``ceil(batch_size / (step_seconds * samples_per_cpu_second))`` (each worker one core).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from training.data import EpochSampler, infinite_batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by torch on ``device``, or the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def measure_loader(dataset, batch_size: int, num_workers: int, batches: int, seed: int = 0) -> dict[str, Any]:
    """Samples/s of the data loader alone over ``batches`` batches, after a first one
    (worker start-up) that is not timed. Without workers it runs on one torch thread, as a
    worker does."""
    stream = infinite_batches(dataset, EpochSampler(len(dataset), seed=seed), batch_size, num_workers)
    threads = torch.get_num_threads()
    if num_workers == 0:
        torch.set_num_threads(1)  # as in a loader worker: one core
    try:
        next(stream)
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(stream)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        stream.close()  # stops the workers
        torch.set_num_threads(threads)
    samples = batches * batch_size
    report = {"num_workers": num_workers, "batch_size": batch_size, "batches": batches, "seconds": seconds,
              "samples_per_second": samples / seconds}
    if num_workers == 0:  # the work ran in this process, on one thread: its CPU time is the loader's
        report["torch_threads"] = 1
        report["cpu_seconds"] = cpu_seconds
        report["samples_per_cpu_second"] = samples / max(cpu_seconds, 1e-9)
    return report


def workers_needed(batch_size: int, step_seconds: float, samples_per_second_per_core: float) -> int:
    """Loader processes one training process needs to produce a batch per step."""
    return max(1, math.ceil(batch_size / (step_seconds * samples_per_second_per_core)))


def profile_training(trainer, steps: int, loader_batches: int | None = None) -> dict[str, Any]:
    """Run ``steps`` optimiser steps of ``trainer`` and measure them (see the module doc)."""
    if steps < 1:
        raise ValueError(f"--profile needs at least 1 step, got {steps}")
    loop = trainer.config.train
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = infinite_batches(trainer.train_set, trainer.sampler, loop.batch_size, loop.num_workers)
    seconds, cpu_seconds = [], []
    try:
        for _ in range(steps):
            _synchronize(device)
            started, cpu_started = time.perf_counter(), time.process_time()
            last = trainer.train_step(stream)
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            trainer.step += 1
    finally:
        stream.close()
    peak = peak_memory_bytes(device)
    peaks = [peak]
    if trainer.world > 1:
        import torch.distributed as dist

        peaks = [None] * trainer.world
        dist.all_gather_object(peaks, peak)
    timed = seconds[1:] or seconds  # the first step alone when there is only one
    step_seconds = sum(timed) / len(timed)
    timed_cpu = cpu_seconds[1:] or cpu_seconds
    step_cpu_seconds = sum(timed_cpu) / len(timed_cpu)
    batches = loader_batches or max(3, steps)
    loader = [measure_loader(trainer.train_set, loop.batch_size, loop.num_workers, batches, trainer.config.seed)]
    if loop.num_workers:
        loader.append(measure_loader(trainer.train_set, loop.batch_size, 0, batches, trainer.config.seed))
    per_core = loader[-1]["samples_per_cpu_second"]
    losses = {k[5:]: v for k, v in last.items() if k.startswith("loss/")}
    return {
        "steps": steps, "device": str(device), "processes": trainer.world, "batch_size": loop.batch_size,
        "gradient_accumulation": loop.gradient_accumulation, "image_size": trainer.model.config.image_size,
        "mixed_precision": loop.mixed_precision, "torch_threads": torch.get_num_threads(),
        "first_step_seconds": seconds[0], "step_seconds": step_seconds, "all_step_seconds": seconds,
        "step_cpu_seconds": step_cpu_seconds, "all_step_cpu_seconds": cpu_seconds,
        "peak_memory_bytes": peaks, "loader": loader, "loader_samples_per_second_per_core": per_core,
        "workers_needed_per_process": workers_needed(loop.batch_size * loop.gradient_accumulation, step_seconds,
                                                     per_core),
        "last_losses": losses,
    }


def format_profile(report: dict[str, Any]) -> str:
    gib = 1024 ** 3
    timed = "first step" if report["steps"] == 1 else f"mean of steps 2-{report['steps']}"
    lines = [
        f"device {report['device']} x {report['processes']} process(es), batch {report['batch_size']} per process "
        f"(x{report['gradient_accumulation']} accumulation), {report['image_size']} px, "
        f"mixed precision {report['mixed_precision']}, {report['torch_threads']} torch thread(s)",
        f"step time: {report['step_seconds']:.2f} s wall, {report['step_cpu_seconds']:.2f} s CPU ({timed}); "
        f"first step {report['first_step_seconds']:.2f} s wall",
        "peak memory per process: " + ", ".join(f"{p / gib:.2f} GiB" for p in report["peak_memory_bytes"])
        + (" (GPU, allocated by torch)" if report["device"].startswith("cuda") else " (peak resident set size)"),
    ]
    for item in report["loader"]:
        per_cpu = (f", {item['samples_per_cpu_second']:.2f} samples per CPU-second"
                   if "samples_per_cpu_second" in item else "")
        lines.append(f"data loader, {item['num_workers']} worker(s): {item['samples_per_second']:.2f} samples/s"
                     f"{per_cpu} ({item['batches']} batches of {item['batch_size']})")
    lines.append(f"workers needed per process at this step time: {report['workers_needed_per_process']} "
                 f"(= ceil(batch / (step wall s x {report['loader_samples_per_second_per_core']:.2f} samples/s "
                 "per core)))")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The data loader alone, at the config's data section, for each ``--workers`` count."""
    from training.config import load_config
    from training.data import build_datasets

    parser = argparse.ArgumentParser(description="Samples/s of the training data loader alone (no model).")
    parser.add_argument("--config", required=True, help="YAML config (its data and train sections are used)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="loader worker counts to measure")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.roots=[DIR]")
    args = parser.parse_intermixed_args(argv)
    config = load_config(args.config, args.overrides)
    train_set, _ = build_datasets(config.data)
    results = []
    for workers in args.workers:
        result = measure_loader(train_set, config.train.batch_size, workers, args.batches, config.seed)
        results.append(result)
        per_cpu = (f", {result['samples_per_cpu_second']:.2f} samples per CPU-second"
                   if "samples_per_cpu_second" in result else "")
        print(f"{workers} worker(s): {result['samples_per_second']:.2f} samples/s{per_cpu} "
              f"({args.batches} batches of {config.train.batch_size}, {config.data.image_size} px, "
              f"up to {config.data.max_references} references)")
    print(json.dumps({"image_size": config.data.image_size, "max_references": config.data.max_references,
                      "loader": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
