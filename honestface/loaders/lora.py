"""UNet LoRA weights in the diffusers / OSDFace file format, to and from the peft adapter.

Files name the factors ``unet.<module>.lora_A.weight`` (rank, in) and
``unet.<module>.lora_B.weight`` (out, rank); peft's own state dict of the adapter is the
same without the ``unet.`` prefix (``get_peft_model_state_dict``), and
``set_peft_model_state_dict`` loads it. Loading here is strict: every adapter gets both
factors with their shapes, and no key is left over (no silent partial load).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

#: Prefix of UNet LoRA keys in the diffusers/OSDFace file format.
LORA_KEY_PREFIX = "unet."
ADAPTER = "default"


def _adapter_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    if ADAPTER not in getattr(unet, "peft_config", {}):
        raise ConfigError("the UNet has no LoRA adapter; call add_lora first")
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER)


def unet_lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights as ``unet.<module>.lora_{A,B}.weight`` tensors (copies);
    empty for a UNet without an adapter (rank 0: a bundled UNet trained in full)."""
    if ADAPTER not in getattr(unet, "peft_config", {}):
        return {}
    return {f"{LORA_KEY_PREFIX}{key}": value.detach().clone() for key, value in _adapter_state(unet).items()}


def load_unet_lora_state_dict(unet: nn.Module, state: dict[str, torch.Tensor], source: str = "LoRA weights") -> int:
    """Load ``unet.<module>.lora_{A,B}.weight`` keys into the UNet's adapter; returns the key count.

    Raises :class:`CheckpointError` on missing, unexpected or mis-shaped keys.
    """
    from peft import set_peft_model_state_dict

    own = _adapter_state(unet)
    expected = {f"{LORA_KEY_PREFIX}{key}" for key in own}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise CheckpointError(source, f"{len(missing)} LoRA keys missing, e.g. {missing[:3]}",
                              f"{len(expected)} keys unet.<module>.lora_A/lora_B.weight")
    if unexpected:
        raise CheckpointError(source, f"{len(unexpected)} LoRA keys match no UNet module, e.g. {unexpected[:3]}",
                              "keys of the UNet's LoRA layers")
    rank = unet.peft_config[ADAPTER].r
    for key, target in own.items():
        value = state[f"{LORA_KEY_PREFIX}{key}"]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(source, f"{LORA_KEY_PREFIX}{key} has shape {tuple(value.shape)}",
                                  f"shape {tuple(target.shape)} (LoRA rank {rank})")
    set_peft_model_state_dict(unet, {key: state[f"{LORA_KEY_PREFIX}{key}"].to(target.dtype)
                                     for key, target in own.items()}, adapter_name=ADAPTER)
    return len(expected)


def lora_targets_from_state(state: dict[str, torch.Tensor]) -> tuple[list[str], int]:
    """UNet module names (without ``unet.``) and the LoRA rank found in a LoRA state dict."""
    modules, ranks = set(), set()
    for key, value in state.items():
        for part in (".lora_A.weight", ".lora_B.weight"):
            if key.endswith(part):
                name = key[: -len(part)]
                modules.add(name[len(LORA_KEY_PREFIX):] if name.startswith(LORA_KEY_PREFIX) else name)
                if part == ".lora_A.weight":
                    ranks.add(int(value.shape[0]))
    if len(ranks) > 1:
        raise CheckpointError("LoRA weights", f"mixed LoRA ranks {sorted(ranks)}", "one rank for all layers")
    return sorted(modules), (ranks.pop() if ranks else 0)
