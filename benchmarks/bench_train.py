"""Training throughput (samples/s) and peak memory per configuration.

    python benchmarks/bench_train.py --data ../shared/data/celeba            # tiny set, CPU
    python benchmarks/bench_train.py --data DIR --case tiny-all --steps 20
    python benchmarks/bench_train.py --data DIR --config training/configs/paper.yaml \
        --name paper model.sd21=... model.osdface=...                         # GPU

Each case runs in its own process (so peak memory is its own): the trainer is built,
``--warmup`` optimiser steps are run and discarded, then ``--steps`` steps are timed.
Reported: samples/s (samples of all ranks per second), seconds per step, peak memory
(GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size),
and the losses of the last step. Results are printed as a table and, with ``--json``,
written to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "training" / "configs" / "tiny.yaml"

#: name -> overrides of tiny.yaml
TINY_CASES: dict[str, list[str]] = {
    "tiny-mse": ["losses.ea_dists=0", "losses.identity=0", "losses.mfa=0", "losses.adversarial=0"],
    "tiny-all": [],
    "tiny-all-ckpt": ["model.gradient_checkpointing=true"],
    "tiny-all-bs4": ["train.batch_size=4"],
}


def run_case(config_path: str, overrides: list[str], warmup: int, steps: int) -> dict:
    """Build a trainer and time ``steps`` optimiser steps (in this process)."""
    sys.path.insert(0, str(REPO_ROOT))
    import torch

    from training.config import load_config
    from training.data import infinite_batches
    from training.train import Trainer

    with tempfile.TemporaryDirectory() as output:
        config = load_config(config_path, [f"output_dir={output}", "train.val_every=0", "train.log_every=0",
                                           "train.checkpoint_every=0", *overrides])
        trainer = Trainer(config)
        loop = config.train
        stream = infinite_batches(trainer.train_set, trainer.sampler, loop.batch_size, loop.num_workers)
        cuda = trainer.device.type == "cuda"
        for _ in range(warmup):
            trainer.train_step(stream)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        last = {}
        for _ in range(steps):
            last = trainer.train_step(stream)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        samples = steps * loop.batch_size * loop.gradient_accumulation * trainer.world
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
            where = torch.cuda.get_device_name()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
            where = f"cpu ({torch.get_num_threads()} threads)"
        return {"samples_per_second": samples / elapsed, "seconds_per_step": elapsed / steps,
                "peak_memory_mib": peak, "device": where, "batch_size": loop.batch_size,
                "image_size": config.data.image_size, "steps": steps,
                "losses": {k[5:]: round(v, 4) for k, v in last.items() if k.startswith("loss/")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="identity-folder root used for the tiny cases (data.roots)")
    parser.add_argument("--case", action="append", choices=sorted(TINY_CASES),
                        help="tiny case(s) to run (default: all)")
    parser.add_argument("--config", help="benchmark this YAML config instead of the tiny cases")
    parser.add_argument("--name", default="custom", help="label of --config in the table")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every case")
    args = parser.parse_args(argv)

    if args.child:  # one case, in this process
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(run_case(spec["config"], spec["overrides"], args.warmup, args.steps)))
        return 0

    cases: list[tuple[str, str, list[str]]] = []
    extra = list(args.overrides) + ([f"data.roots=[{args.data}]"] if args.data else [])
    if args.config:
        cases.append((args.name, args.config, extra))
    else:
        for name in args.case or list(TINY_CASES):
            cases.append((name, str(TINY), TINY_CASES[name] + extra))
    results = {}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name, config, overrides in cases:
        spec = json.dumps({"config": config, "overrides": overrides})
        done = subprocess.run([sys.executable, __file__, "--child", spec, "--steps", str(args.steps),
                               "--warmup", str(args.warmup)], capture_output=True, text=True, env=env)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            results[name] = {"error": done.stderr[-500:]}
            continue
        results[name] = json.loads(line[len("RESULT "):])
    print(f"{'case':16} {'samples/s':>10} {'s/step':>8} {'peak MiB':>9} {'batch':>5} {'size':>5}  device")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:16} failed")
            continue
        print(f"{name:16} {result['samples_per_second']:10.3f} {result['seconds_per_step']:8.3f} "
              f"{result['peak_memory_mib']:9.0f} {result['batch_size']:5d} {result['image_size']:5d}  "
              f"{result['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
