"""What a run will cost, measured before renting: ``train.py --profile N``.

    python training/train.py --config training/configs/paper.yaml --profile 5 [key=value ...]

Runs N optimiser steps of the configured run (nothing is saved: no checkpoint, no export)
and reports:

- step time: the first step alone (it includes lazy start-up work) and the mean of the
  others, in seconds (CUDA is synchronised around each step);
- peak memory per process: ``torch.cuda.max_memory_allocated`` on a GPU, the peak
  resident set size (``ru_maxrss``) of the process on a CPU;
- the data loader alone: samples/s with ``train.num_workers`` workers and with none (the
  main process: one CPU core), at the config's image size, degradation and references;
- the workers a process needs to keep up with the measured step time:
  ``ceil(batch_size / (step_seconds * samples_per_second_per_core))``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any

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
    (worker start-up) that is not timed."""
    stream = infinite_batches(dataset, EpochSampler(len(dataset), seed=seed), batch_size, num_workers)
    try:
        next(stream)
        started = time.perf_counter()
        for _ in range(batches):
            next(stream)
        seconds = time.perf_counter() - started
    finally:
        stream.close()  # stops the workers
    return {"num_workers": num_workers, "batch_size": batch_size, "batches": batches, "seconds": seconds,
            "samples_per_second": batches * batch_size / seconds}


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
    seconds = []
    try:
        for _ in range(steps):
            _synchronize(device)
            started = time.perf_counter()
            last = trainer.train_step(stream)
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
            trainer.step += 1
    finally:
        stream.close()
    peak = peak_memory_bytes(device)
    peaks = [peak]
    if trainer.world > 1:
        import torch.distributed as dist

        peaks = [None] * trainer.world
        dist.all_gather_object(peaks, peak)
    step_seconds = sum(seconds[1:]) / (steps - 1) if steps > 1 else seconds[0]
    batches = loader_batches or max(3, steps)
    loader = [measure_loader(trainer.train_set, loop.batch_size, loop.num_workers, batches, trainer.config.seed)]
    if loop.num_workers:
        loader.append(measure_loader(trainer.train_set, loop.batch_size, 0, batches, trainer.config.seed))
    per_core = loader[-1]["samples_per_second"]
    losses = {k[5:]: v for k, v in last.items() if k.startswith("loss/")}
    return {
        "steps": steps, "device": str(device), "processes": trainer.world, "batch_size": loop.batch_size,
        "gradient_accumulation": loop.gradient_accumulation, "image_size": trainer.model.config.image_size,
        "mixed_precision": loop.mixed_precision, "torch_threads": torch.get_num_threads(),
        "first_step_seconds": seconds[0], "step_seconds": step_seconds, "all_step_seconds": seconds,
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
        f"step time: {report['step_seconds']:.2f} s ({timed}); first step {report['first_step_seconds']:.2f} s",
        "peak memory per process: " + ", ".join(f"{p / gib:.2f} GiB" for p in report["peak_memory_bytes"])
        + (" (GPU, allocated by torch)" if report["device"].startswith("cuda") else " (peak resident set size)"),
    ]
    for item in report["loader"]:
        lines.append(f"data loader, {item['num_workers']} worker(s): {item['samples_per_second']:.2f} samples/s "
                     f"({item['batches']} batches of {item['batch_size']})")
    lines.append(f"workers needed per process at this step time: {report['workers_needed_per_process']} "
                 f"(= ceil(batch / (step s x {report['loader_samples_per_second_per_core']:.2f} samples/s per core)))")
    return "\n".join(lines)
