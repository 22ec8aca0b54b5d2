"""Models that carry their own UNet/VAE/VQ/VGG (``config.bundled``): config rules, the
checkpoint round trip (float32 and float16) through the user-facing loader with no other
file, the identity centre, and training such a model with the real trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from honestface.config import HonestFaceConfig
from honestface.errors import CheckpointError, ConfigError
from honestface.loaders.checkpoint import read_checkpoint_metadata, save_checkpoint
from honestface.models.honestface import HonestFaceModel, build_diffusers
from honestface.models.ide import FaceIdentityEncoder
from honestface.pipeline import load_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "training" / "configs" / "tiny.yaml"
ALL_PARTS = ("unet", "vae", "vq", "vgg")

torch.set_num_threads(1)


def bundled_config(**changes) -> HonestFaceConfig:
    config = HonestFaceConfig.from_preset("tiny")
    config.bundled = ALL_PARTS
    config.lora.rank = 0
    for key, value in changes.items():
        setattr(config, key, value)
    return config.validate()


def bundled_model(seed: int = 0, config: HonestFaceConfig | None = None) -> HonestFaceModel:
    config = config or bundled_config()
    unet, vae = build_diffusers(config, seed)
    torch.manual_seed(seed + 1)
    return HonestFaceModel(config, unet, vae).eval()


def faces(batch: int = 2, size: int = 64, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lq = torch.rand(batch, 3, size, size, generator=generator)
    refs = torch.rand(batch, 2, 3, size, size, generator=generator)
    return lq, refs


def test_config_rules_for_bundled_parts():
    config = HonestFaceConfig.from_preset("tiny")
    config.lora.rank = 0
    with pytest.raises(ConfigError, match="needs the UNet to be bundled"):
        config.validate()
    config = HonestFaceConfig.from_preset("tiny")
    config.bundled = ("unet",)
    with pytest.raises(ConfigError, match="lora.rank to 0"):
        config.validate()
    config.bundled = ("unet", "text_encoder")
    config.lora.rank = 0
    with pytest.raises(ConfigError, match="unknown bundled part"):
        config.validate()
    config = bundled_config()
    again = HonestFaceConfig.from_json(config.to_json())
    assert again.bundled == ALL_PARTS and again == config


def test_bundled_parts_are_trainable_and_stored():
    model = bundled_model()
    assert model.restorer.lora_config is None  # rank 0: no adapter
    model.set_trainable()
    trainable = {id(p) for p in model.trainable_parameters()}
    for part in (model.unet, model.vae, model.vre.vq, model.ide.feature_extractor.vgg):
        assert all(id(p) in trainable and p.requires_grad for p in part.parameters())
    state = model.trainable_state_dict()
    assert {k.split(".")[0] for k in state} >= {"unet", "vae", "vre", "ide"}
    assert len([k for k in state if k.startswith("unet.")]) == len(model.unet.state_dict())
    assert len([k for k in state if k.startswith("ide.feature_extractor.vgg.")]) == len(
        model.ide.feature_extractor.vgg.state_dict())


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_bundled_checkpoint_loads_without_any_other_file(tmp_path, monkeypatch, dtype):
    monkeypatch.delenv("HONESTFACE_MODELS", raising=False)
    model = bundled_model(seed=5)
    path = save_checkpoint(model, tmp_path / "small.safetensors", dtype=dtype)
    if dtype is not None:
        assert read_checkpoint_metadata(path)["dtype"] == "float16"
        # the reference: the same model with its stored weights rounded to float16
        with torch.no_grad():
            for value in list(model.parameters()) + list(model.buffers()):
                value.copy_(value.to(torch.float16).to(value.dtype))
    loaded = load_model(checkpoint=path).eval()
    assert loaded.config == model.config
    assert any("small.safetensors" in line for line in loaded.load_report)
    lq, refs = faces()
    with torch.no_grad():
        expected = model(lq, refs).image
        actual = loaded(lq, refs).image
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_loading_into_another_architecture_is_refused(tmp_path):
    model = bundled_model()
    path = save_checkpoint(model, tmp_path / "small.safetensors")
    other = bundled_config()
    other.unet = {**other.unet, "block_out_channels": [32, 32]}
    from honestface.loaders.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="bundled UNET configs differ"):
        load_checkpoint(bundled_model(config=other), path)
    unbundled = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(unbundled)
    with pytest.raises(CheckpointError, match="bundled parts"):
        load_checkpoint(HonestFaceModel(unbundled, unet, vae), path)


def test_a_checkpoint_without_bundled_unet_still_asks_for_sd21(tmp_path):
    config = HonestFaceConfig.from_preset("tiny")
    config.bundled = ("vq", "vgg")
    unet, vae = build_diffusers(config)
    path = save_checkpoint(HonestFaceModel(config, unet, vae), tmp_path / "lora.safetensors")
    with pytest.raises(ConfigError, match="SD 2.1-base"):
        load_model(checkpoint=path)


def test_identity_centre_is_subtracted_before_normalising():
    config = bundled_config()
    config.ide.center_identity = True
    plain_config = bundled_config()
    centred = FaceIdentityEncoder(config.ide, config.token_dim)
    plain = FaceIdentityEncoder(plain_config.ide, plain_config.token_dim)
    plain.load_state_dict({k: v for k, v in centred.state_dict().items() if k != "identity_center"})
    centre = torch.randn(config.ide.identity_dim)
    centred.identity_center.copy_(centre)
    embeddings = torch.randn(2, 3, config.ide.identity_dim) + centre
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(centred(embeddings, mask), plain(embeddings - centre, mask))
    assert "identity_center" in centred.state_dict()


def test_training_a_bundled_model_from_scratch(celeba_subset, tmp_path, monkeypatch):
    from training.config import load_config
    from training.train import Trainer

    monkeypatch.delenv("HONESTFACE_MODELS", raising=False)
    config = load_config(TINY, [
        f"data.roots=[{celeba_subset}]", f"output_dir={tmp_path}", "data.val_fraction=0.2",
        "data.min_references=1", "train.max_steps=2", "train.val_every=0", "train.checkpoint_every=0",
        "train.log_every=0", "train.export_dtype=float16", "train.export_color_correction=wavelet",
        "losses.ea_dists=0", "losses.mfa=0", "losses.adversarial=0",
        # the offline identity loss of nano.yaml: dlib's network in PyTorch, real weights
        "losses.identity=0.5", "losses.identity_backends=[dlib-torch]", "losses.pretrained=true",
        "model.landmarks=dlib", "model.landmark_options={aligned_fallback: true}", "model.identity=dlib-torch",
        "model.overrides={bundled: [unet, vae, vq, vgg], lora.rank: 0, ide.identity_dim: 128, "
        "ide.center_identity: true, identity_backend: dlib-torch}",
    ])
    trainer = Trainer(config)
    assert trainer.objective.identity.names == ["dlib-torch"]
    centre = trainer.model.ide.identity_encoder.identity_center.clone()
    assert centre.norm() > 0.1  # dlib descriptors share a large common part
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    summary = trainer.run()
    assert all(0 < row["loss/identity"] < 1 for row in trainer.history)
    for prefix in ("restorer.unet.", "restorer.vae.decoder.", "ide.feature_extractor.vgg."):
        moved = [n for n, p in trainer.model.named_parameters()
                 if n.startswith(prefix) and not torch.equal(p.detach(), before[n])]
        assert moved, f"no parameter of {prefix} was trained"
    torch.testing.assert_close(trainer.model.ide.identity_encoder.identity_center, centre)

    # the per-file cache gives what the backends give
    cached = dict(trainer._reference_cache)
    assert cached
    path, (points, vector) = next(iter(cached.items()))
    image = trainer.train_set._read(Path(path))[None]
    torch.testing.assert_close(points, trainer.landmarks.landmarks(image).float()[0])
    torch.testing.assert_close(vector, trainer.identity.embed(image).float()[0])

    export = Path(summary["export"])
    assert read_checkpoint_metadata(export)["dtype"] == "float16"
    assert trainer.model.config.color_correction == "none"  # training ran without it
    loaded = load_model(checkpoint=export).eval()
    assert loaded.config.color_correction == "wavelet"  # the export's inference default
    loaded.config.color_correction = "none"
    torch.testing.assert_close(loaded.ide.identity_encoder.identity_center, centre.to(torch.float16).float())
    lq, refs = faces()
    trainer.model.eval()
    with torch.no_grad():
        for value in list(trainer.model.parameters()) + list(trainer.model.buffers()):
            value.copy_(value.to(torch.float16).to(value.dtype))
        identity = torch.randn(2, 2, 128)
        expected = trainer.model(lq, refs, identity_embeddings=identity).image
        actual = loaded(lq, refs, identity_embeddings=identity).image
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
