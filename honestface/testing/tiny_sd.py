"""Tiny Stable Diffusion 2.1-style configs for tests and the tiny models folder.

Two sizes:

- :func:`tiny_sd21_configs` — the UNet/VAE of the ``"tiny"`` HonestFace preset
  (:meth:`honestface.config.HonestFaceConfig.from_preset`), so the tiny SD checkpoint and
  the tiny HonestFace checkpoint fit together;
- :func:`full_pattern_sd21_configs` — every structural feature of SD 2.1-base at toy
  widths: four block levels (3 cross-attention down blocks + 1 plain, mirrored up
  blocks), two layers per block, linear projections, per-level head counts, a 4-level
  VAE with two resnets per level. It exercises every branch of the LDM key mapping.
"""

from __future__ import annotations

import copy

from ..config import HonestFaceConfig, read_sd21_config


def tiny_sd21_configs() -> dict[str, dict]:
    """{"unet", "vae", "scheduler"} configs of the tiny preset (scheduler: SD 2.1-base's)."""
    preset = HonestFaceConfig.from_preset("tiny")
    return {"unet": copy.deepcopy(preset.unet), "vae": copy.deepcopy(preset.vae),
            "scheduler": read_sd21_config("scheduler")}


def full_pattern_sd21_configs(cross_attention_dim: int = 32) -> dict[str, dict]:
    """SD 2.1-base's configs with only the widths shrunk (see the module docstring)."""
    unet = read_sd21_config("unet")
    unet.update({
        "block_out_channels": [32, 32, 64, 64],
        "attention_head_dim": [1, 2, 4, 4],
        "norm_num_groups": 8,
        "cross_attention_dim": cross_attention_dim,
        "sample_size": 8,
    })
    vae = read_sd21_config("vae")
    vae.update({"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8, "sample_size": 64})
    return {"unet": unet, "vae": vae, "scheduler": read_sd21_config("scheduler")}
