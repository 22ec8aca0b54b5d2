"""Safe reading of .pth/.ckpt/.safetensors weight files."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from honestface.errors import CheckpointError, MissingModelFileError
from honestface.loaders.safe_pickle import BlockedObject, load_checkpoint_object, load_tensors, restricted_load

MARKER = {"path": None}


def _write_marker(path: str, text: str) -> None:  # what a malicious pickle would call
    Path(path).write_text(text)


class Exploit:
    """Unpickling this calls ``_write_marker``: a loader that executes pickles leaves a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker, "executed"))


class TaggedTensor(torch.Tensor):
    """A tensor subclass: pickled through torch._tensor._rebuild_from_type_v2."""


class HyperParameters:
    """An arbitrary user class (like Lightning's AttributeDict or an OmegaConf container)."""

    def __init__(self) -> None:
        self.lr = 1e-4
        self.tensor = torch.ones(2)


def test_weights_only_file_round_trip(tmp_path):
    state = collections.OrderedDict(a=torch.randn(3, 4), b=torch.arange(5))
    torch.save(state, tmp_path / "w.pth")
    loaded = load_tensors(tmp_path / "w.pth")
    assert set(loaded) == {"a", "b"}
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])


def test_checkpoint_with_code_is_not_executed_and_tensors_survive(tmp_path):
    marker = tmp_path / "marker.txt"
    weight = torch.randn(4, 3)
    view_source = torch.arange(12.0).view(3, 4)
    checkpoint = {
        "state_dict": {"vqvae_LQ.quant_conv.weight": weight, "view": view_source[:, 1:3],
                       "param": torch.nn.Parameter(torch.full((2,), 7.0)),
                       "tagged": torch.arange(4.0).as_subclass(TaggedTensor)},
        "hyper_parameters": HyperParameters(),
        "callbacks": [Exploit(marker)],
        "epoch": 3,
    }
    path = tmp_path / "lightning.ckpt"
    torch.save(checkpoint, path)
    assert not marker.exists()

    # weights_only=True refuses this file; the loader must fall back without executing.
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    obj = load_checkpoint_object(path)
    assert not marker.exists(), "the pickle's code was executed"
    assert obj["epoch"] == 3
    assert isinstance(obj["hyper_parameters"], BlockedObject)
    assert isinstance(obj["callbacks"][0], BlockedObject)
    assert "test_safe_pickle._write_marker" in repr(obj["callbacks"][0])

    tensors = load_tensors(path)
    assert not marker.exists()
    assert set(tensors) == {"vqvae_LQ.quant_conv.weight", "view", "param", "tagged"}
    assert type(tensors["tagged"]) is torch.Tensor and torch.equal(tensors["tagged"], torch.arange(4.0))
    assert torch.equal(tensors["vqvae_LQ.quant_conv.weight"], weight)
    assert torch.equal(tensors["view"], view_source[:, 1:3])  # strided views rebuilt exactly
    assert torch.equal(tensors["param"], torch.full((2,), 7.0))

    _, blocked = restricted_load(path)
    assert any(name.endswith("Exploit") or name.endswith("_write_marker") for name in blocked)


def test_safetensors_and_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2, 2)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["x"], torch.ones(2, 2))

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((tmp_path / "w.safetensors").read_bytes()[:-5])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_tensors(truncated)

    torch.save({"a": torch.randn(100)}, tmp_path / "full.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_tensors(cut)

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_tensors(junk)

    torch.save({"not": "tensors"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_tensors(tmp_path / "empty.pth")

    with pytest.raises(MissingModelFileError, match="absent.pth"):
        load_tensors(tmp_path / "absent.pth")
