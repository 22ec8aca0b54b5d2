"""The OSDFace release folder: written in the released formats, read back with key counts."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from honestface.config import HonestFaceConfig
from honestface.errors import CheckpointError, MissingModelFileError
from honestface.loaders.osdface import (LORA_FILE, PROJECTION_FILE, VQ_FILE, find_osdface_folder, load_osdface,
                                        save_osdface)
from honestface.models import HonestFaceModel, build_diffusers


class LightningHyperParameters:
    """Stands for OmegaConf / AttributeDict objects real Lightning checkpoints carry."""

    def __init__(self) -> None:
        self.learning_rate = 4.5e-6


def tiny_model(seed: int, lora: bool = True) -> HonestFaceModel:
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    torch.manual_seed(seed)
    model = HonestFaceModel(config, unet, vae, lora=lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or name.startswith("vre."):
                parameter.copy_(torch.randn_like(parameter) * 0.05 + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "honestface" / "OSDFace"
    model = tiny_model(seed=1)
    extra = {"vqvae_LQ.decoder.conv_in.weight": torch.randn(4, 4), "vqvae_LQ.post_quant_conv.weight": torch.randn(4),
             "vqvae.quantize.embedding.weight": torch.randn(8, 4), "loss.logvar": torch.zeros(())}
    save_osdface(model, folder, hyper_parameters=LightningHyperParameters(), extra_state=extra)
    return model, folder


def test_release_files_have_the_published_formats(release):
    model, folder = release
    lora = load_file(str(folder / LORA_FILE))
    assert all(k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in lora)
    projection = torch.load(folder / PROJECTION_FILE, weights_only=True)
    assert sorted(projection) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
    assert projection["conv1.weight"].shape == (16, 32, 1) and projection["conv2.weight"].shape == (32, 16, 1)
    with pytest.raises(Exception):  # a Lightning checkpoint with objects: weights_only refuses it
        torch.load(folder / VQ_FILE, weights_only=True)


def test_load_counts_keys_and_reproduces_the_model(release, caplog):
    source, folder = release
    target = tiny_model(seed=2, lora=False)
    with caplog.at_level(logging.INFO, logger="honestface.loaders"):
        report = load_osdface(target, folder)
    vq_keys = len(target.vre.vq.state_dict())
    lora_keys = len(source.restorer.lora_state_dict())
    assert report.lines() == [
        f"{VQ_FILE}: loaded {vq_keys} keys, ignored 4 (e.g. loss.logvar, vqvae.quantize.embedding.weight, "
        "vqvae_LQ.decoder.conv_in.weight)",
        f"{PROJECTION_FILE}: loaded 4 keys, ignored 0",
        f"{LORA_FILE}: loaded {lora_keys} keys, ignored 0",
    ]
    assert [r.getMessage() for r in caplog.records] == report.lines()
    for key, value in source.vre.state_dict().items():
        assert torch.equal(target.vre.state_dict()[key], value), key
    lq = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(lq)
        got = target(lq)
    torch.testing.assert_close(got.image, expected.image)
    torch.testing.assert_close(got.prompt, expected.prompt)


def test_folder_lookup_and_missing_files(release, tmp_path):
    _, folder = release
    assert find_osdface_folder("OSDFace", models_dir=folder.parents[1]) == folder
    with pytest.raises(MissingModelFileError, match="Nope"):
        find_osdface_folder("Nope", models_dir=folder.parents[1])
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / LORA_FILE).write_bytes((folder / LORA_FILE).read_bytes())
    with pytest.raises(MissingModelFileError, match=PROJECTION_FILE):
        find_osdface_folder(partial)
    with pytest.raises(MissingModelFileError, match=VQ_FILE):
        load_osdface(tiny_model(3, lora=False), partial)


def _copy_release(folder, target):
    target.mkdir()
    for name in (LORA_FILE, PROJECTION_FILE, VQ_FILE):
        (target / name).write_bytes((folder / name).read_bytes())
    return target


def test_missing_or_mismatched_keys_are_errors(release, tmp_path, caplog):
    _, folder = release
    lora = load_file(str(folder / LORA_FILE))

    broken = _copy_release(folder, tmp_path / "missing_b")
    save_file({k: v for i, (k, v) in enumerate(sorted(lora.items())) if i != 1}, str(broken / LORA_FILE))
    with pytest.raises(CheckpointError, match=LORA_FILE):
        load_osdface(tiny_model(3, lora=False), broken)

    dropped = _copy_release(folder, tmp_path / "missing_module")
    module = sorted(lora)[0].rsplit(".lora_", 1)[0]
    save_file({k: v for k, v in lora.items() if not k.startswith(module + ".")}, str(dropped / LORA_FILE))
    with pytest.raises(CheckpointError, match="expected ones missing"):
        load_osdface(tiny_model(3, lora=False), dropped)
    # Non-strict loading adapts to exactly the file's modules, and says so.
    with caplog.at_level(logging.WARNING, logger="honestface.loaders"):
        report = load_osdface(tiny_model(3, lora=False), dropped, strict=False)
    assert report.files[-1].loaded == len(lora) - 2
    assert any("1 expected ones missing" in r.getMessage() for r in caplog.records)

    alien = _copy_release(folder, tmp_path / "alien")
    save_file({**lora, "unet.no_such_block.lora_A.weight": torch.zeros(4, 4),
               "unet.no_such_block.lora_B.weight": torch.zeros(4, 4)}, str(alien / LORA_FILE))
    with pytest.raises(CheckpointError, match="not linear/conv layers"):
        load_osdface(tiny_model(3, lora=False), alien)

    wrong = _copy_release(folder, tmp_path / "wrong_projection")
    torch.save({"conv1.weight": torch.zeros(16, 99, 1), "conv1.bias": torch.zeros(16),
                "conv2.weight": torch.zeros(32, 16, 1), "conv2.bias": torch.zeros(32)}, wrong / PROJECTION_FILE)
    with pytest.raises(CheckpointError, match="conv1.weight"):
        load_osdface(tiny_model(3, lora=False), wrong)

    no_vq = _copy_release(folder, tmp_path / "no_vq")
    torch.save({"state_dict": {"vqvae.encoder.conv_in.weight": torch.zeros(1)}}, no_vq / VQ_FILE)
    with pytest.raises(CheckpointError, match="vqvae_LQ"):
        load_osdface(tiny_model(3, lora=False), no_vq)

    # An adapter of another configuration (different modules) refuses the file.
    with pytest.raises(CheckpointError):
        model = tiny_model(3, lora=False)
        model.restorer.add_lora(model.config.lora, target_modules=["conv_in"])
        load_osdface(model, folder)
