"""Latent discriminator for the adversarial loss (paper Eq. 5).

The paper takes "the discriminator presented in OSDFace" without spelling it out. As in
public reimplementations, it is the encoder half of the frozen diffusion UNet (time
embedding, ``conv_in``, the down blocks and the mid block, with the *base* SD weights,
i.e. without the generator's LoRA) carrying its own LoRA adapter, and a small MLP head on
the spatially averaged mid-block features. It judges forward-noised latents
``F(z, t) = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (Eq. 1) at random timesteps ``t``,
so the UNet's time conditioning is used as it was pre-trained.

The cross-attention blocks need a prompt; the discriminator is unconditional and feeds
them one learned token (initialised at zero).

Losses are the non-saturating GAN losses of Eq. 5 written with ``softplus`` on logits:
``L_G = softplus(-D(fake))``, ``L_D = softplus(D(fake)) + softplus(-D(real))``
(``-log sigmoid(x) = softplus(-x)``).

Trainable: the LoRA adapter, the head and the null token. Latents: (B, 4, h, w),
scaled by the VAE scaling factor like the generator's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import OSDFACE_LORA_TARGETS
from ..errors import ConfigError


@dataclass
class DiscriminatorConfig:
    """Sizes of the latent discriminator (LoRA rank 16 / alpha 16 like the generator's)."""

    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = OSDFACE_LORA_TARGETS
    head_hidden: int = 256
    #: forward-noising timesteps are drawn uniformly from [t_min, t_max]
    t_min: int = 0
    t_max: int = 999


def base_unet_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's weights without any LoRA adapter (``peft`` ``base_layer`` keys unwrapped)."""
    state = {}
    for key, value in unet.state_dict().items():
        if "lora_" in key or "lora_magnitude" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


class LatentDiscriminator(nn.Module):
    """UNet encoder half + LoRA + MLP head: ``forward(latents, timesteps) -> (B,)`` logits.

    Args:
        unet: the generator's ``UNet2DConditionModel`` (with or without LoRA). Its
            config and base weights are copied; the generator itself is not touched.
        config: :class:`DiscriminatorConfig`.
    """

    def __init__(self, unet: nn.Module, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel
        from peft import LoraConfig, inject_adapter_in_model

        self.config = config = config or DiscriminatorConfig()
        if not 0 <= config.t_min <= config.t_max:
            raise ConfigError(f"discriminator timesteps need 0 <= t_min <= t_max, got {config.t_min}, {config.t_max}")
        unet_config = dict(unet.config)
        encoder = UNet2DConditionModel.from_config(unet_config)
        base = base_unet_state_dict(unet)
        keep = ("time_proj.", "time_embedding.", "conv_in.", "down_blocks.", "mid_block.")
        encoder.load_state_dict({k: v for k, v in base.items() if k.startswith(keep)}, strict=False)
        self.time_proj = encoder.time_proj
        self.time_embedding = encoder.time_embedding
        self.conv_in = encoder.conv_in
        self.down_blocks = encoder.down_blocks
        self.mid_block = encoder.mid_block
        del encoder
        self.requires_grad_(False)

        targets = [t for t in config.lora_targets]
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets,
                                 init_lora_weights="gaussian")
        inject_adapter_in_model(peft_config, self, adapter_name="default")
        for name, parameter in self.named_parameters():
            parameter.requires_grad_("lora_" in name)

        cross_dim = unet_config["cross_attention_dim"]
        cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
        self.null_prompt = nn.Parameter(torch.zeros(1, 1, int(cross_dim)))
        mid_channels = int(unet_config["block_out_channels"][-1])
        self.head = nn.Sequential(
            nn.Linear(mid_channels, config.head_hidden), nn.SiLU(), nn.Linear(config.head_hidden, 1)
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """latents (B, 4, h, w), timesteps (B,) int -> logits (B,)."""
        dtype = self.conv_in.weight.dtype
        t_emb = self.time_proj(timesteps.to(latents.device)).to(dtype)
        emb = self.time_embedding(t_emb)
        prompt = self.null_prompt.to(dtype).expand(latents.shape[0], -1, -1)
        hidden = self.conv_in(latents.to(dtype))
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, _ = block(hidden_states=hidden, temb=emb, encoder_hidden_states=prompt)
            else:
                hidden, _ = block(hidden_states=hidden, temb=emb)
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                hidden = self.mid_block(hidden, emb, encoder_hidden_states=prompt)
            else:
                hidden = self.mid_block(hidden, emb)
        pooled = hidden.float().mean(dim=(2, 3))
        return self.head.float()(pooled).squeeze(1)


def forward_noise(latents: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                  noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 1: ``sqrt(abar_t) z + sqrt(1 - abar_t) eps`` per sample; (B, C, h, w)."""
    abar = alphas_cumprod.to(latents.device)[timesteps.to(latents.device)].to(latents.dtype).view(-1, 1, 1, 1)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype,
                            device=generator.device if generator is not None else latents.device).to(latents.device)
    return abar.sqrt() * latents + (1.0 - abar).sqrt() * noise


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating L_G = -E log D(fake) (Eq. 5)."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = -E log(1 - D(fake)) - E log D(real) (Eq. 5)."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


__all__ = ["DiscriminatorConfig", "LatentDiscriminator", "base_unet_state_dict", "discriminator_loss",
           "forward_noise", "generator_loss"]
