"""Key names of the original latent-diffusion (LDM) checkpoints versus diffusers.

Stable Diffusion 2.1-base ships as one file (``v2-1_512-ema-pruned.safetensors`` /
``.ckpt``, what ComfyUI keeps in ``models/checkpoints/``) whose tensors use the names of
the original LDM code: the UNet under ``model.diffusion_model.`` and the VAE under
``first_stage_model.``. diffusers names the same tensors differently. This module maps a
diffusers key to its LDM key, in both directions, for the UNet2DConditionModel /
AutoencoderKL layouts that SD 1.x/2.x use:

UNet (``L`` = layers_per_block, block level ``i``, layer ``j``)::

    conv_in                              input_blocks.0.0
    time_embedding.linear_1 / linear_2   time_embed.0 / time_embed.2
    down_blocks.i.resnets.j              input_blocks.{1 + i(L+1) + j}.0
    down_blocks.i.attentions.j           input_blocks.{1 + i(L+1) + j}.1
    down_blocks.i.downsamplers.0.conv    input_blocks.{1 + i(L+1) + L}.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1    middle_block.0 / .1 / .2
    up_blocks.i.resnets.j                output_blocks.{i(L+1) + j}.0       (j <= L)
    up_blocks.i.attentions.j             output_blocks.{i(L+1) + j}.1
    up_blocks.i.upsamplers.0             output_blocks.{i(L+1) + L}.{1 or 2}  (2 after an attention)
    conv_norm_out / conv_out             out.0 / out.2
    resnet: norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
         -> in_layers.0 in_layers.2 emb_layers.1 out_layers.0 out_layers.3 skip_connection
    transformer blocks (norm, proj_in, transformer_blocks.k.*, proj_out): same names

VAE (``n`` = number of levels; the decoder's levels are numbered in reverse)::

    encoder.down_blocks.i.resnets.j          encoder.down.i.block.j
    encoder.down_blocks.i.downsamplers.0     encoder.down.i.downsample
    decoder.up_blocks.i.resnets.j            decoder.up.{n-1-i}.block.j
    decoder.up_blocks.i.upsamplers.0         decoder.up.{n-1-i}.upsample
    *.mid_block.resnets.0 / resnets.1        *.mid.block_1 / block_2
    *.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
                                             *.mid.attn_1.{norm,q,k,v,proj_out}
    *.conv_norm_out                          *.norm_out
    resnet conv_shortcut                     nin_shortcut

The VAE's mid-block attention projections are 1x1 convolutions in LDM files, weight
(C, C, 1, 1), and linear layers in diffusers, weight (C, C): :func:`to_ldm_tensor` and
:func:`from_ldm_tensor` convert the shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

#: Prefix of the UNet's tensors in an LDM checkpoint.
UNET_PREFIX = "model.diffusion_model."
#: Prefix of the VAE's tensors in an LDM checkpoint.
VAE_PREFIX = "first_stage_model."
#: Prefix of the text encoder (OpenCLIP for SD 2.x) in an LDM checkpoint; HonestFace ignores it.
TEXT_ENCODER_PREFIX = "cond_stage_model."

_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_UNET_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _config_value(config: Mapping[str, Any] | Any, name: str) -> Any:
    if isinstance(config, Mapping):
        return config[name]
    return getattr(config, name)


def _rename_inner(rest: str, names: Mapping[str, str]) -> str:
    """Rename the first component(s) of ``rest`` ('conv1.weight' -> 'in_layers.2.weight')."""
    for old, new in names.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type or block_type.startswith("Attn")


def unet_key_to_ldm(key: str, config: Mapping[str, Any] | Any) -> str:
    """The LDM name (without :data:`UNET_PREFIX`) of a diffusers UNet2DConditionModel key.

    Args:
        key: a key of ``UNet2DConditionModel.state_dict()``, e.g.
            ``"down_blocks.1.resnets.0.conv1.weight"``.
        config: the UNet's config (``unet.config`` or the dict of ``config.json``).

    Raises:
        KeyError: for a key outside the SD 1.x/2.x UNet layout.
    """
    layers = _config_value(config, "layers_per_block")
    if not isinstance(layers, int):
        raise KeyError(f"per-block layers_per_block {layers!r} is not an SD 1.x/2.x layout")
    up_types = list(_config_value(config, "up_block_types"))

    for old, new in _UNET_TOP_LEVEL.items():
        if key.startswith(old + "."):
            return new + key[len(old):]

    match = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if match:
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = 1 + level * (layers + 1) + index
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_rename_inner(rest, _UNET_RESNET_NAMES)}"
        return f"input_blocks.{block}.1.{rest}"
    match = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if match:
        block = 1 + int(match[1]) * (layers + 1) + layers
        return f"input_blocks.{block}.0.op.{match[2]}"

    match = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if match:
        kind, index, rest = match[1], int(match[2]), match[3]
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_inner(rest, _UNET_RESNET_NAMES)}"
        return f"middle_block.1.{rest}"

    match = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if match:
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        block = level * (layers + 1) + index
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_rename_inner(rest, _UNET_RESNET_NAMES)}"
        return f"output_blocks.{block}.1.{rest}"
    match = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)
    if match:
        level = int(match[1])
        block = level * (layers + 1) + layers
        position = 2 if _has_attention(up_types[level]) else 1
        return f"output_blocks.{block}.{position}.{match[2]}"

    raise KeyError(f"no LDM name for UNet key '{key}'")


def vae_key_to_ldm(key: str, config: Mapping[str, Any] | Any) -> str:
    """The LDM name (without :data:`VAE_PREFIX`) of a diffusers AutoencoderKL key.

    Raises:
        KeyError: for a key outside the SD AutoencoderKL layout.
    """
    levels = len(_config_value(config, "block_out_channels"))
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    match = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not match:
        raise KeyError(f"no LDM name for VAE key '{key}'")
    part, rest = match[1], match[2]

    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest[len('conv_norm_out.'):]}"

    sub = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
    if sub:
        return f"{part}.mid.block_{int(sub[1]) + 1}.{_rename_inner(sub[2], _VAE_RESNET_NAMES)}"
    sub = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if sub:
        renamed = _rename_inner(sub[1], _VAE_ATTENTION_NAMES)
        if renamed == sub[1]:
            raise KeyError(f"no LDM name for VAE key '{key}'")
        return f"{part}.mid.attn_1.{renamed}"

    if part == "encoder":
        sub = re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
        if sub:
            return f"encoder.down.{sub[1]}.block.{sub[2]}.{_rename_inner(sub[3], _VAE_RESNET_NAMES)}"
        sub = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", rest)
        if sub:
            return f"encoder.down.{sub[1]}.downsample.{sub[2]}"
    else:
        sub = re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest)
        if sub:
            level = levels - 1 - int(sub[1])
            return f"decoder.up.{level}.block.{sub[2]}.{_rename_inner(sub[3], _VAE_RESNET_NAMES)}"
        sub = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest)
        if sub:
            level = levels - 1 - int(sub[1])
            return f"decoder.up.{level}.upsample.{sub[2]}"

    raise KeyError(f"no LDM name for VAE key '{key}'")


def is_vae_attention_projection(key: str) -> bool:
    """True for a diffusers VAE key whose LDM tensor is a 1x1 conv weight (C, C, 1, 1)."""
    return bool(re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight", key))


def to_ldm_tensor(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as the LDM file stores it (VAE attention: (C, C) -> (C, C, 1, 1))."""
    if is_vae_attention_projection(key) and tensor.ndim == 2:
        return tensor[:, :, None, None]
    return tensor


def from_ldm_tensor(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as diffusers expects it (VAE attention: (C, C, 1, 1) -> (C, C))."""
    if is_vae_attention_projection(key) and tensor.ndim == 4:
        return tensor[:, :, 0, 0]
    return tensor


def unet_to_ldm_state_dict(state_dict: Mapping[str, torch.Tensor],
                           config: Mapping[str, Any] | Any) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict under its LDM names, prefixed with :data:`UNET_PREFIX`."""
    return {UNET_PREFIX + unet_key_to_ldm(key, config): tensor for key, tensor in state_dict.items()}


def vae_to_ldm_state_dict(state_dict: Mapping[str, torch.Tensor],
                          config: Mapping[str, Any] | Any) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict under its LDM names and shapes, prefixed with :data:`VAE_PREFIX`."""
    return {VAE_PREFIX + vae_key_to_ldm(key, config): to_ldm_tensor(key, tensor)
            for key, tensor in state_dict.items()}


def ldm_names(diffusers_keys: list[str] | tuple[str, ...], config: Mapping[str, Any] | Any,
              component: str) -> dict[str, str]:
    """Map each diffusers key of ``component`` ("unet" or "vae") to its full LDM key.

    Loading goes through this map in reverse: the model's own keys are enumerated and
    each is looked up under its LDM name, so nothing is guessed from the file.
    """
    if component == "unet":
        return {key: UNET_PREFIX + unet_key_to_ldm(key, config) for key in diffusers_keys}
    if component == "vae":
        return {key: VAE_PREFIX + vae_key_to_ldm(key, config) for key in diffusers_keys}
    raise ValueError(f"component must be 'unet' or 'vae', not {component!r}")
