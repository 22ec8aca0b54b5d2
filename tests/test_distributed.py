"""``accelerate launch -m honestface restore|evaluate`` over 2 CPU processes.

The inputs are split over the processes; the written files, the printed summary and the
evaluation table (text, JSON, CSV) must be those of one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from honestface.distributed import Processes
from honestface.image_io import save_image
from honestface.testing import make_tiny_models as tiny

REPO = Path(__file__).resolve().parents[1]


def test_shards_cover_every_item_once():
    items = list(range(11))
    shards = [Processes(rank, 3).shard(items) for rank in range(3)]
    assert sorted(sum(shards, [])) == items
    assert shards[1] == [1, 4, 7, 10]
    assert Processes().shard(items) == items and Processes().gather("x") == ["x"]
    assert Processes(2, 4, local_rank=2).device("cuda") == "cuda:2"
    assert Processes().device("cuda") == "cuda" and Processes(1, 2, 1).device("cpu") == "cpu"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _honestface(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "honestface", *args]
    else:
        # accelerate's --cpu runs a single process; --multi_gpu starts torchrun's workers, on CPUs here
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), "-m", "honestface", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_write_the_files_and_table_of_one(tmp_path):
    pytest.importorskip("accelerate")
    models = tmp_path / "models"
    tiny.make_tiny_models(models, seed=0)
    inputs = tmp_path / "lq"
    generator = torch.Generator().manual_seed(0)
    for index in range(11):  # two blocks of images (8 + 3): one per process
        image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=64,
                                                mode="bilinear", align_corners=False)[0]
        save_image(image, inputs / f"face{index:02d}.png")
    (inputs / "broken.png").write_bytes(b"not a png")  # skipped by whichever process owns it

    outputs = {}
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        result = _honestface(["restore", str(inputs), "-o", str(out), "--aligned", "--batch-size", "3",
                              "--sd", "tiny-sd21-base.safetensors", "--weights", "honestface-tiny.safetensors",
                              "--osdface", "osdface-tiny", "--models-dir", str(models), "--no-progress", "-q"],
                             processes)
        # the broken input is skipped, in both runs: exit code 3, which the launcher turns into its failure (1)
        assert result.returncode == (3 if processes == 1 else 1), result.stderr[-3000:]
        assert "broken.png: skipped" in result.stderr
        summary = [line for line in result.stdout.splitlines() if line.startswith(("restored ", "skipped", "  "))]
        outputs[processes] = out, summary
    (one, summary_one), (two, summary_two) = outputs[1], outputs[2]
    names = sorted(p.name for p in one.iterdir())
    assert names == [f"face{i:02d}.png" for i in range(11)]
    assert sorted(p.name for p in two.iterdir()) == names
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    # the same summary (time aside): 11 faces, the broken file skipped with its reason
    strip_time = [line.split(" in ")[0] if line.startswith("restored ") else line for line in summary_one]
    assert strip_time == [line.split(" in ")[0] if line.startswith("restored ") else line for line in summary_two]
    assert strip_time[0] == "restored 11 face(s)" and any("broken.png" in line for line in summary_one)

    # evaluation: the 11 restored faces against their inputs, split over 2 processes
    tables = {}
    for processes in (1, 2):
        report = tmp_path / f"eval{processes}"
        result = _honestface(["evaluate", "--restored", str(one), "--gt", str(inputs), "--metrics",
                              "psnr,ssim,msswd", "--per-image", "--no-progress", "--json", str(report / "scores.json"),
                              "--csv", str(report / "scores.csv")], processes)
        assert result.returncode == 0, result.stderr[-3000:]
        table = [line for line in result.stdout.splitlines() if not line.startswith("wrote ")]
        tables[processes] = table, (report / "scores.json").read_text(), (report / "scores.csv").read_text()
    assert tables[1] == tables[2]
    table = "\n".join(tables[1][0])
    assert "face10" in table and "mean (11)" in table
