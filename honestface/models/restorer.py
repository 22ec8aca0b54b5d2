"""The one-step restorer (paper Eq. 3): VAE encode -> UNet at t = T_L -> x0 -> VAE decode.

    z_L = E(x_L) * s
    eps = UNet(z_L, T_L, p)
    z_H = (z_L - sqrt(1 - abar_T) * eps) / sqrt(abar_T)        (in float64, cast back)
    x_H = D(z_H / s).clamp(-1, 1)

``abar`` is SD 2.1-base's training schedule (scaled_linear betas 0.00085..0.012, 1000
steps), computed as diffusers computes it (float32 betas and cumulative product) and kept
in float64 for the step. The UNet carries a LoRA adapter (``peft``) that is trained and
can be merged into the base weights for inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..config import DiffusionConfig, LoRAConfig
from ..errors import ConfigError

def training_alphas_cumprod(config: DiffusionConfig) -> torch.Tensor:
    """(num_train_timesteps,) float64 cumulative products of SD's training schedule."""
    steps = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, steps, dtype=torch.float32) ** 2
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float32)
    else:
        raise ConfigError(f"unsupported beta schedule '{config.beta_schedule}'")
    return torch.cumprod(1.0 - betas, dim=0).double()


def one_step_x0(latent: torch.Tensor, noise_pred: torch.Tensor, alpha_cumprod: float | torch.Tensor) -> torch.Tensor:
    """Eq. 2/3 in float64 (float32 on devices without float64), cast back to ``latent.dtype``."""
    wide = torch.float32 if latent.device.type == "mps" else torch.float64
    abar = torch.as_tensor(alpha_cumprod, dtype=wide, device=latent.device)
    x0 = (latent.to(wide) - (1.0 - abar).sqrt() * noise_pred.to(wide)) / abar.sqrt()
    return x0.to(latent.dtype)


def _weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first weight: in bf16 on CPUs some parts keep float32
    (:mod:`honestface.acceleration`), so the VAE's halves may differ."""
    return next(module.parameters()).dtype


@dataclass
class RestorerOutput:
    image: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    latent_lq: torch.Tensor  # (B, 4, h, w) z_L (scaled)
    latent_restored: torch.Tensor  # (B, 4, h, w) z_H (scaled)
    noise_pred: torch.Tensor  # (B, 4, h, w) eps


class OneStepRestorer(nn.Module):
    """UNet2DConditionModel + AutoencoderKL run as one denoising step at ``config.timestep``."""

    def __init__(self, unet: nn.Module, vae: nn.Module, config: DiffusionConfig) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.config = config
        # A plain attribute, not a buffer: ``module.to(float16)`` must not round the schedule.
        self.alphas_cumprod = training_alphas_cumprod(config)
        self.vae.requires_grad_(False)
        self.lora_config: LoRAConfig | None = None

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    # ----------------------------------------------------------------- steps
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> z_L (B, 4, H/f, W/f), scaled by ``scaling_factor``."""
        posterior = self.vae.encode(images.to(_weight_dtype(self.vae.encoder))).latent_dist
        if self.config.latent_mode == "sample":
            latent = posterior.sample(generator=generator)
        else:
            latent = posterior.mode()
        return latent * self.scaling_factor

    def denoise(self, latent: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_L (B, 4, h, w), prompt (B, T, k) -> (z_H, eps)."""
        timestep = torch.full((latent.shape[0],), self.config.timestep, dtype=torch.long, device=latent.device)
        unet_dtype = next(self.unet.parameters()).dtype
        noise_pred = self.unet(latent.to(unet_dtype), timestep,
                               encoder_hidden_states=prompt.to(unet_dtype)).sample
        alpha = float(self.alphas_cumprod[self.config.timestep])
        return one_step_x0(latent, noise_pred.to(latent.dtype), alpha), noise_pred

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """z_H (scaled) -> (B, 3, H, W) in [-1, 1] (clamped)."""
        first = self.vae.post_quant_conv if self.vae.post_quant_conv is not None else self.vae.decoder
        image = self.vae.decode(latent.to(_weight_dtype(first)) / self.scaling_factor).sample
        # NCHW even when the VAE runs channels-last (honestface.acceleration): callers index it
        return image.clamp(-1.0, 1.0).contiguous()

    def forward(self, images: torch.Tensor, prompt: torch.Tensor,
                generator: torch.Generator | None = None) -> RestorerOutput:
        """(B, 3, H, W) in [-1, 1] and prompt (B, T, k) -> :class:`RestorerOutput`."""
        latent_lq = self.encode(images, generator)
        latent_restored, noise_pred = self.denoise(latent_lq, prompt)
        return RestorerOutput(self.decode(latent_restored), latent_lq, latent_restored, noise_pred)

    # ------------------------------------------------------------------ LoRA
    def add_lora(self, config: LoRAConfig, target_modules: Iterable[str] | None = None) -> None:
        """Inject a LoRA adapter (``peft``) into the UNet; ``lora_B`` starts at zero.

        By default the adapter goes on :func:`lora_module_names` of
        ``config.target_modules``; ``target_modules`` gives the full module names instead.
        """
        from peft import LoraConfig, inject_adapter_in_model

        if self.lora_config is not None:
            raise ConfigError("the UNet already has a LoRA adapter")
        if target_modules is None:
            targets = lora_module_names(self.unet, config.target_modules)
        else:
            targets = list(target_modules)
        if not targets:
            raise ConfigError(f"no UNet module matches the LoRA targets {list(config.target_modules)}")
        peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets,
                                 init_lora_weights="gaussian")
        inject_adapter_in_model(peft_config, self.unet, adapter_name="default")
        self.lora_config = config

    def _lora_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        return [(name, module) for name, module in self.unet.named_modules() if isinstance(module, LoraLayer)]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights in the diffusers/OSDFace format ``unet.<module>.lora_A.weight``."""
        from ..loaders.lora import unet_lora_state_dict

        return unet_lora_state_dict(self.unet)

    def load_lora_state_dict(self, state: dict[str, torch.Tensor], source: str = "LoRA weights") -> int:
        """Load ``unet.<module>.lora_{A,B}.weight`` keys (see :mod:`honestface.loaders.lora`)."""
        from ..loaders.lora import load_unet_lora_state_dict

        return load_unet_lora_state_dict(self.unet, state, source)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.unet.named_parameters() if "lora_" in name]

    def merge_lora(self) -> None:
        """Fold the adapter into the UNet weights (inference speed; results unchanged)."""
        for _, module in self._lora_layers():
            module.merge()

    def unmerge_lora(self) -> None:
        for _, module in self._lora_layers():
            module.unmerge()


def lora_module_names(unet: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the UNet's ``nn.Linear`` / ``nn.Conv2d`` modules that ``patterns`` select.

    peft's rule for a list of target names: a module is chosen when its full name equals
    a pattern or ends with ``"." + pattern``. (A substring match would also take
    ``conv_in`` for ``"conv"``: 258 modules on SD 2.1 instead of peft's 257.)
    """
    patterns = tuple(patterns)
    names = []
    for name, module in unet.named_modules():
        if type(module) not in (nn.Linear, nn.Conv2d):
            continue
        if name in patterns or any(name.endswith("." + pattern) for pattern in patterns):
            names.append(name)
    return names
