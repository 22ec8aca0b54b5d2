"""What a load did, and the checked copy of a state dict into a module.

:class:`FileReport` / :class:`LoadReport` count the keys every file gave and left out
(logged by the loaders, kept in ``model.load_report``); :class:`ComponentLoadReport` is the
SD 2.1 loader's per-component count; :func:`load_state_into` copies a
state dict into a module, requiring every key with its shape. Used by the loaders and by
the model's own ``load_trainable_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass
class FileReport:
    """How one file was used."""

    path: Path
    loaded: int
    ignored: int
    ignored_examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.path.name}: loaded {self.loaded} keys, ignored {self.ignored}"
        if self.ignored_examples:
            text += f" (e.g. {', '.join(self.ignored_examples)})"
        return text


@dataclass
class LoadReport:
    """Key counts of every file read by a loader."""

    files: list[FileReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f.line() for f in self.files]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)


@dataclass
class ComponentLoadReport:
    """What the SD 2.1 loader read from one source (a single file or a diffusers folder):
    tensors loaded per component, tensors ignored by group, notes."""

    source: str
    kind: str  # "single-file" or "diffusers"
    loaded: dict[str, tuple[int, int]] = field(default_factory=dict)  # component -> (loaded, expected)
    ignored: dict[str, int] = field(default_factory=dict)  # group -> number of tensors
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per component, then ignored groups and notes."""
        out = [f"{name}: {count}/{expected} tensors loaded from {self.source} ({self.kind})"
               for name, (count, expected) in self.loaded.items()]
        if self.ignored:
            groups = ", ".join(f"{count} {group}" for group, count in sorted(self.ignored.items()))
            out.append(f"ignored tensors: {groups}")
        out.extend(f"note: {note}" for note in self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> int:
    """Copy ``state`` into ``module`` requiring every parameter/buffer key with its shape.

    Returns the number of keys loaded; extra keys in ``state`` are the caller's business.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(path, f"{len(missing)} {what} keys missing, e.g. {missing[:3]}",
                              f"{len(own)} keys of the {what}")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(path, f"{what} key '{key}' has shape {tuple(state[key].shape)}",
                                  f"shape {tuple(value.shape)} (does the config match these weights?)")
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
    return len(own)
