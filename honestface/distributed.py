"""Splitting a command's inputs over the processes of a multi-process launch.

``accelerate launch -m honestface ...`` and ``torchrun -m honestface ...`` start one
process per GPU (or per CPU worker) with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment. :func:`current_processes` reads
them; every process takes its share of the work (:meth:`Processes.shard`) and the
results meet again through :meth:`Processes.gather`, which hands every process the list
of all processes' results (in rank order).

The process group uses the ``gloo`` backend whatever the device: only small Python
objects (outcomes, score rows) travel between processes, the images never do. Without
those variables (a plain ``honestface ...``) there is one process and nothing is set up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

from .errors import HonestFaceError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one launch."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that prints the summary and writes the report files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Work unit ``index`` is done here (units go round-robin over the processes)."""
        return index % self.world_size == self.rank

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items``: every ``world_size``-th one from ``rank``."""
        return [item for index, item in enumerate(items) if self.owns(index)]

    def device(self, name: str) -> str:
        """A device name for this process: "cuda" becomes this process's GPU, ``cuda:LOCAL_RANK``."""
        if self.is_distributed and name == "cuda":
            return f"cuda:{self.local_rank}"
        return name

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order (every process gets the whole list)."""
        if not self.is_distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def close(self) -> None:
        """Leave the process group (after the last :meth:`gather`)."""
        if self.is_distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise HonestFaceError(f"environment variable {name} must be an integer, got '{value}'") from None


def current_processes() -> Processes:
    """The launch this process belongs to (one process when no launcher set ``WORLD_SIZE``).

    Joins the process group on first use when there are several processes.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Processes()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not torch.distributed.is_available():
        raise HonestFaceError("this PyTorch build has no torch.distributed; run one process")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    return Processes(rank, world_size, local_rank)


__all__ = ["Processes", "current_processes"]
