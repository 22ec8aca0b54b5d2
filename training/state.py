"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a folder ``<output>/checkpoints/step-<N>/``::

    honestface.safetensors     LoRA + VRE projection + IDE heads + fusion, in the inference
                               checkpoint format (config in the metadata): the core loads it
    discriminator.safetensors  the discriminator's LoRA, head and null token (if used)
    optimizers.pt              optimiser and scheduler states (plain tensors/numbers)
    rng-rank<R>.pt             python/numpy/torch(/cuda) RNG states of every rank
    trainer.json               step, data order (sampler state), world size, config

It is written into ``step-<N>.tmp`` by all ranks and renamed by rank 0 once everything is
on disk, so a run killed at any moment leaves either a complete checkpoint or none.
Everything is read back with ``weights_only=True`` / safetensors.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from honestface.errors import CheckpointError

STEP_PATTERN = re.compile(r"^step-(\d+)$")
MODEL_FILE = "honestface.safetensors"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_PATTERN.match(path.name)
        if match and path.is_dir() and (path / "trainer.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every global RNG of this process, as tensors and numbers (``weights_only``-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- save / load


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(path, f"cannot read: {error}") from error


def write_rank_files(tmp_dir: Path, rank: int) -> None:
    """Per-rank part of a checkpoint (its RNG states)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp_dir / f"rng-rank{rank}.pt")


def write_main_files(tmp_dir: Path, model, discriminator: dict[str, torch.Tensor] | None,
                     optimizers: dict[str, Any], trainer: dict[str, Any]) -> None:
    """Shared part of a checkpoint (rank 0)."""
    from honestface.loaders.checkpoint import save_checkpoint

    tmp_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, tmp_dir / MODEL_FILE, extra_metadata={"training_step": str(trainer["step"])})
    if discriminator is not None:
        _save_safetensors(discriminator, tmp_dir / "discriminator.safetensors")
    torch.save(optimizers, tmp_dir / "optimizers.pt")
    with open(tmp_dir / "trainer.json", "w", encoding="utf-8") as handle:
        json.dump(trainer, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def finalize(tmp_dir: Path, final_dir: Path, keep: int) -> None:
    """Rename the finished temp folder into place and drop old checkpoints (rank 0)."""
    for path in tmp_dir.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    if keep > 0:
        for _, old in list_checkpoints(final_dir.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(path: str | Path, rank: int) -> dict[str, Any]:
    """Everything a rank needs to resume from checkpoint folder ``path``."""
    path = Path(path)
    trainer_file = path / "trainer.json"
    if not trainer_file.is_file():
        raise CheckpointError(path, "not a training checkpoint (no trainer.json)")
    with open(trainer_file, encoding="utf-8") as handle:
        trainer = json.load(handle)
    result: dict[str, Any] = {"trainer": trainer, "trainable": _load_safetensors(path / MODEL_FILE)}
    disc = path / "discriminator.safetensors"
    result["discriminator"] = _load_safetensors(disc) if disc.is_file() else None
    result["optimizers"] = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
    rng_file = path / f"rng-rank{rank}.pt"
    result["rng"] = torch.load(rng_file, map_location="cpu", weights_only=True) if rng_file.is_file() else None
    return result
