"""HonestFace checkpoints: one .safetensors with the trainable weights and the config."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from honestface.config import FORMAT_VERSION, HonestFaceConfig
from honestface.errors import CheckpointError, MissingModelFileError
from honestface.loaders.checkpoint import (build_model_from_checkpoint, config_from_checkpoint, load_checkpoint,
                                           save_checkpoint)
from honestface.models import HonestFaceModel, build_diffusers


def tiny_model(seed: int, config: HonestFaceConfig | None = None, lora: bool = True) -> HonestFaceModel:
    config = config or HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    torch.manual_seed(seed)
    model = HonestFaceModel(config, unet, vae, lora=lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "honestface_tiny.safetensors"
    model = tiny_model(seed=1)
    save_checkpoint(model, path, extra_metadata={"step": 42})
    return model, path


def test_checkpoint_holds_trainable_weights_and_config(saved):
    model, path = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["format"] == "honestface" and metadata["format_version"] == str(FORMAT_VERSION)
    assert metadata["lora_rank"] == "4" and metadata["identity_backend"] == "test" and metadata["step"] == "42"
    assert metadata["identity_dim"] == "16" and metadata["image_size"] == "64"
    assert HonestFaceConfig.from_dict(json.loads(metadata["config"])) == model.config
    assert config_from_checkpoint(path) == model.config
    assert keys == set(model.trainable_state_dict())
    assert any(k.startswith("unet.") and "lora_A" in k for k in keys)
    assert {"vre.projection.conv1.weight", "ide.identity_encoder.queries",
            "ide.feature_extractor.projection.weight"} <= keys
    assert not any(k.startswith(("vre.vq", "ide.feature_extractor.vgg", "vae.")) for k in keys)  # frozen parts


def test_round_trip_restores_identically(saved):
    model, path = saved
    unet, vae = build_diffusers(model.config, seed=0)
    # Frozen parts come from their own files: VGG16 (torchvision keys) and associate_2.ckpt.
    vgg = {f"features.{k}": v for k, v in model.ide.feature_extractor.vgg.features.state_dict().items()}
    loaded = build_model_from_checkpoint(path, unet, vae, vgg_state_dict=vgg).eval()
    loaded.vre.vq.load_state_dict(model.vre.vq.state_dict())
    lq = torch.rand(2, 3, 64, 64)
    refs = torch.rand(2, 3, 3, 64, 64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    embeddings = torch.randn(2, 3, 16)
    with torch.no_grad():
        expected = model(lq, refs, mask, identity_embeddings=embeddings)
        got = loaded(lq, refs, mask, identity_embeddings=embeddings)
    torch.testing.assert_close(got.prompt, expected.prompt)
    torch.testing.assert_close(got.image, expected.image)


def test_wrong_corrupt_and_mismatched_files(saved, tmp_path):
    model, path = saved
    target = tiny_model(seed=5)

    osdface_lora = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(model.restorer.lora_state_dict(), str(osdface_lora), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no HonestFace metadata"):
        load_checkpoint(target, osdface_lora)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_checkpoint(target, truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(target, garbage)

    pth = tmp_path / "weights.pth"
    torch.save(model.trainable_state_dict(), pth)
    with pytest.raises(CheckpointError, match="not a HonestFace checkpoint"):
        load_checkpoint(target, pth)

    with pytest.raises(MissingModelFileError, match="absent.safetensors"):
        load_checkpoint(target, tmp_path / "absent.safetensors")

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(path))
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if k != "ide.identity_encoder.queries"}, str(missing), metadata)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(target, missing)
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "ide.unknown": torch.zeros(1)}, str(extra), metadata)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(target, extra)

    other = HonestFaceConfig.from_preset("tiny")
    other.ide.feature_dim = 8
    with pytest.raises(CheckpointError, match="another configuration"):
        load_checkpoint(tiny_model(seed=6, config=other), path)

    newer = tmp_path / "newer.safetensors"
    save_file(state, str(newer), {**metadata, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(target, newer)
