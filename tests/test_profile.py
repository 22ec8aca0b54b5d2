"""train.py --profile: runs the steps, saves nothing, reports step time, peak memory and the loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.cost import workers_needed

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "training" / "configs" / "tiny.yaml"

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def test_profile_needs_a_step(capsys):
    from training.train import main

    assert main(["--config", str(TINY), "--profile", "0"]) == 2
    assert "--profile needs a number of steps >= 1" in capsys.readouterr().err


def test_workers_needed():
    # 4 samples per 0.5 s step = 8 samples/s; one core makes 3 samples/s: 3 workers
    assert workers_needed(4, 0.5, 3.0) == 3
    assert workers_needed(4, 10.0, 3.0) == 1
    assert workers_needed(4, 0.5, 8.0) == 1 and workers_needed(4, 0.5, 7.9) == 2


def test_profile_runs_the_steps_and_saves_nothing(celeba_subset, tmp_path, capsys):
    from training.train import main

    output = tmp_path / "run"
    code = main(["--config", str(TINY), "--output", str(output), "--profile", "2", f"data.roots=[{celeba_subset}]",
                 "data.val_fraction=0.25", "train.log_every=0", "losses.ea_dists=0", "losses.identity=0",
                 "losses.mfa=0"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["steps"] == 2 and len(report["all_step_seconds"]) == 2
    assert report["step_seconds"] == report["all_step_seconds"][1] > 0
    assert len(report["peak_memory_bytes"]) == 1 and report["peak_memory_bytes"][0] > 100 * 2 ** 20
    loader = report["loader"]
    assert [item["num_workers"] for item in loader] == [0]  # tiny.yaml loads in the main process
    assert loader[0]["batch_size"] == 2 and loader[0]["samples_per_second"] > 0
    assert 0 < loader[0]["cpu_seconds"] and report["step_cpu_seconds"] > 0
    assert report["loader_samples_per_second_per_core"] == loader[0]["samples_per_cpu_second"]
    assert report["workers_needed_per_process"] == workers_needed(2, report["step_seconds"],
                                                                  loader[0]["samples_per_cpu_second"])
    assert set(report["last_losses"]) == {"mse", "adversarial", "total", "discriminator"}
    assert all(math.isfinite(v) for v in report["last_losses"].values())
    assert any(line.startswith("step time:") for line in lines)
    # nothing saved: no checkpoint, no export, no summary
    assert not (output / "checkpoints").exists() and not list(output.glob("*.safetensors"))
    assert not (output / "summary.json").exists()
