"""Config presets and their JSON round trip; reduced precision through the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from honestface.config import SD21_CONFIG_DIR, HonestFaceConfig
from honestface.errors import ConfigError


def test_sd21_preset_reads_the_packaged_diffusers_configs():
    config = HonestFaceConfig.from_preset("sd21")
    unet = json.loads((SD21_CONFIG_DIR / "unet" / "config.json").read_text())
    vae = json.loads((SD21_CONFIG_DIR / "vae" / "config.json").read_text())
    assert config.unet == unet and config.vae == vae
    assert config.token_dim == unet["cross_attention_dim"] == 1024
    assert config.image_size == 512 and config.vre.resolution == 512
    assert config.vre.channel_multipliers == (1, 2, 2, 2, 4, 8) and config.vre.codebook_size == 1024
    assert (config.lora.rank, config.lora.alpha) == (16, 16.0)
    assert (config.diffusion.timestep, config.diffusion.beta_start, config.diffusion.beta_end) == (399, 0.00085, 0.012)
    assert (config.ide.num_feature_tokens, config.ide.num_identity_tokens, config.fusion.num_tokens) == (4, 7, 77)


@pytest.mark.parametrize("preset", ["sd21", "tiny"])
def test_json_round_trip(preset):
    config = HonestFaceConfig.from_preset(preset)
    text = json.dumps(config.to_dict())
    again = HonestFaceConfig.from_json(text)
    assert again == config
    assert isinstance(again.vre.channel_multipliers, tuple)


def test_invalid_configs_are_config_errors():
    data = HonestFaceConfig.from_preset("tiny").to_dict()
    with pytest.raises(ConfigError, match="unknown key .surprise. in config"):
        HonestFaceConfig.from_dict({**data, "surprise": 1})
    with pytest.raises(ConfigError, match="unknown key 'rnak'"):
        HonestFaceConfig.from_dict({**data, "lora": {"rnak": 3}})
    with pytest.raises(ConfigError, match="token_dim"):
        HonestFaceConfig.from_dict({**data, "token_dim": 64})
    with pytest.raises(ConfigError, match="timestep"):
        HonestFaceConfig.from_dict({**data, "diffusion": {**data["diffusion"], "timestep": 1000}})
    with pytest.raises(ConfigError, match="newer"):
        HonestFaceConfig.from_dict({**data, "format_version": 99})
    with pytest.raises(ConfigError, match="unknown preset"):
        HonestFaceConfig.from_preset("sdxl")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HonestFaceConfig.from_json("{")


def test_bfloat16_pipeline_runs_close_to_float32():
    from honestface.models import HonestFaceModel, build_diffusers
    from honestface.pipeline import HonestFacePipeline

    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    model = HonestFaceModel(config, unet, vae)
    lq, refs = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    full = HonestFacePipeline(model).restore(lq, [refs, None])
    low = HonestFacePipeline(model, dtype=torch.bfloat16).restore(lq, [refs, None])
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert float((low - full).abs().mean()) < 0.05
    # The schedule survives the dtype cast.
    assert model.restorer.alphas_cumprod.dtype == torch.float64


def test_every_config_dataclass_reads_dicts_strictly():
    """One rule for every config read from JSON/YAML: unknown keys are named, JSON lists
    become the tuples the dataclass holds, nothing given means the defaults."""
    from honestface.degradation import DegradationConfig
    from honestface.losses import LossConfig
    from training.config import TrainConfig
    from training.data import DataConfig

    for config_cls in (HonestFaceConfig, DegradationConfig, LossConfig, DataConfig, TrainConfig):
        with pytest.raises(ConfigError, match="unknown key 'typo'.*known: "):
            config_cls.from_dict({"typo": 1})
    with pytest.raises(ConfigError, match="unknown key 'lr_typo' in config section 'optim'"):
        TrainConfig.from_dict({"optim": {"lr_typo": 1.0}})
    assert DegradationConfig.from_dict(None) == DegradationConfig()
    random_tiny = {"init": "random", "preset": "tiny"}
    assert TrainConfig.from_dict({"model": random_tiny, "optim": {"betas": [0.5, 0.9]}}).optim.betas == (0.5, 0.9)
    assert HonestFaceConfig.from_dict({**HonestFaceConfig.from_preset("tiny").to_dict(),
                                       "bundled": ["vgg"]}).bundled == ("vgg",)
