"""The training objective of HonestFace: every loss of the paper, weighted and switchable.

    L_G = w_mse * MSE + w_per * EA-DISTS (Eq. 9) + w_id * L_ID (Eq. 8)
          + w_mfa * L_MFA (Eq. 13) + w_adv * L_G^GAN (Eq. 5)

L_MFA's distance (LPIPS) and its heatmap weighting are switchable for the ablations of
Table 3b (``mfa_distance``, ``mfa_heatmaps``).
    L_D = L_D^GAN (Eq. 5), on forward-noised latents, alternated with L_G

Default weights (the paper gives none; public OSDFace reimplementations use these):
MSE 1, EA-DISTS 1, identity 0.1, adversarial 0.02, MFA 1. A weight of 0 switches a loss
off: its networks are not built and need no files.

Networks with weight files (VGG16, DISTS alpha/beta, LPIPS lin layers, ArcFace, AdaFace,
FAN) are read from the models folder; a missing file raises
:class:`~honestface.errors.MissingModelFileError` at start-up (switch the loss off to
train without it). ``pretrained: false`` builds random networks instead — for tests
only: the losses then carry no perceptual or identity meaning.

MSE is taken on images in [-1, 1] (the VAE's range, as in OSDFace); the perceptual and
identity losses on [0, 1] images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import strict_from_dict
from ..errors import ConfigError
from ..mfa import DEFAULT_K, mfa_loss, mfa_mask
from ..models.discriminator import (
    DiscriminatorConfig,
    LatentDiscriminator,
    discriminator_loss,
    forward_noise,
    generator_loss,
)
from .identity import IdentityLoss, check_jitter_strength, check_lowpass_sigma
from .perceptual import DISTS_FILE, LPIPS_FILE, VGG16_FILE, EdgeAwareDISTS, build_dists, build_lpips, build_vgg16

LOSS_NAMES = ("mse", "ea_dists", "identity", "mfa", "adversarial", "fidelity")
#: Distances MFA can compare the masked faces with (Eq. 13 uses LPIPS; Table 3b also DISTS and MSE)
MFA_DISTANCES = ("lpips", "dists", "mse")


class MSEDistance(nn.Module):
    """Per-image mean squared error ``(B,)`` on [-1, 1] images (as the MSE term), for
    MFA's MSE ablation; the inputs are [0, 1] images."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a * 2 - 1) - (b * 2 - 1)).pow(2).flatten(1).mean(dim=1)


@dataclass
class LossConfig:
    """Weights of the losses and what their networks are built from.

    Attributes:
        mse, ea_dists, identity, mfa, adversarial: weights (0 = off).
        fidelity: weight of the automatic-fidelity estimator's loss (not in the paper; models
            with ``config.fidelity.enabled``): squared error of its ``w`` against the best
            blend weight of each face, ``w* = clamp(<R - x, y - x> / |R - x|^2, 0, 1)``
            (``x`` input, ``R`` detached restoration, ``y`` ground truth: the ``w`` that
            minimises the error of ``x + w (R - x)``). Only the estimator learns from it.
            (The error of the blend itself gives gradients of the order of the squared
            pixel change, below Adam's epsilon: the estimator never moved.)
        pretrained: load real weights (default). ``False`` = random networks, tests only.
        identity_backends: recognisers of the identity ensemble (names of
            :func:`honestface.face.load_identity_backend`).
        mfa_landmarks: landmark backend whose heatmaps of x_L build the MFA mask.
        mfa_k: sharpening constant of Eq. 11 (10 in the paper).
        mfa_normalize_raw: divide M_raw by its per-image maximum before Eq. 11 (not in the
            paper, off by default; see :func:`honestface.mfa.mfa_mask`).
        mfa_distance: what Eq. 13 compares the masked faces with: ``"lpips"`` (the paper),
            ``"dists"`` (plain DISTS, not edge-aware) or ``"mse"`` (Table 3b's ablations).
        mfa_heatmaps: weight MFA by the heatmap mask of Eq. 10-12 (the paper). ``False``
            (Table 3b's ablation) uses a mask of ones: the distance on the whole face, and
            no landmark network is built.
        vgg_file, dists_file, lpips_file: weight files in ``<models>/honestface``.
        discriminator: :class:`DiscriminatorConfig` of the latent discriminator.
        backend_options: extra keyword arguments per backend name (e.g. model file names).
        start_steps: per loss name, the optimiser step from which the loss counts (e.g.
            ``{identity: 1200}``: train on the others first); unlisted losses count from 0.
        identity_jitter: alignment jitter of the identity loss (relative scale, rotation in
            radians and shift in image sizes, each up to this value; 0 = off); see
            :class:`~honestface.losses.identity.IdentityLoss`.
        identity_lowpass: Gaussian blur (sigma in pixels of a 128 px face) of both faces
            before the identity loss's recognisers, so no pattern finer than a face's
            features can please them (0 = off; see ``IdentityLoss``).
    """

    mse: float = 1.0
    ea_dists: float = 1.0
    identity: float = 0.1
    mfa: float = 1.0
    adversarial: float = 0.02
    fidelity: float = 0.0
    pretrained: bool = True
    identity_backends: tuple[str, ...] = ("arcface-torch", "adaface")
    mfa_landmarks: str = "fan"
    mfa_k: float = DEFAULT_K
    mfa_normalize_raw: bool = False
    mfa_distance: str = "lpips"
    mfa_heatmaps: bool = True
    vgg_file: str = VGG16_FILE
    dists_file: str = DISTS_FILE
    lpips_file: str = LPIPS_FILE
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    start_steps: dict[str, int] = field(default_factory=dict)
    identity_jitter: float = 0.0
    identity_lowpass: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.discriminator, dict):
            known = {f.name for f in fields(DiscriminatorConfig)}
            unknown = sorted(set(self.discriminator) - known)
            if unknown:
                raise ConfigError(f"unknown discriminator option(s) {unknown}; known: {sorted(known)}")
            options = dict(self.discriminator)
            if "lora_targets" in options:
                options["lora_targets"] = tuple(options["lora_targets"])
            self.discriminator = DiscriminatorConfig(**options)
        if isinstance(self.identity_backends, str):
            self.identity_backends = (self.identity_backends,)
        self.identity_backends = tuple(self.identity_backends)
        for name in LOSS_NAMES:
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if self.mfa_distance not in MFA_DISTANCES:
            raise ConfigError(f"mfa_distance must be one of {', '.join(MFA_DISTANCES)}, got '{self.mfa_distance}'")
        if self.identity > 0 and not self.identity_backends:
            raise ConfigError("identity loss is on but identity_backends is empty")
        unknown = sorted(set(self.start_steps) - set(LOSS_NAMES))
        if unknown:
            raise ConfigError(f"start_steps names unknown loss(es) {unknown}; known: {list(LOSS_NAMES)}")
        self.start_steps = {name: int(step) for name, step in self.start_steps.items()}
        if any(step < 0 for step in self.start_steps.values()):
            raise ConfigError(f"start_steps must be >= 0, got {self.start_steps}")
        self.identity_jitter = check_jitter_strength(self.identity_jitter, "identity_jitter")
        self.identity_lowpass = check_lowpass_sigma(self.identity_lowpass, "identity_lowpass")

    def enabled(self, name: str) -> bool:
        return float(getattr(self, name)) > 0

    def active(self, name: str, step: int | None = None) -> bool:
        """Enabled, and (when ``step`` is given) past its start step."""
        return self.enabled(name) and (step is None or step >= self.start_steps.get(name, 0))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["identity_backends"] = list(self.identity_backends)
        data["discriminator"]["lora_targets"] = list(self.discriminator.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "LossConfig":
        return strict_from_dict(cls, data, "the loss options")


def optimal_blend_weight(lq: torch.Tensor, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) weight ``w`` in [0, 1] minimising ``|lq + w (restored - lq) - target|^2`` per image."""
    change = (restored.float() - lq.float()).flatten(1)
    wanted = (target.float() - lq.float()).flatten(1)
    return ((change * wanted).sum(1) / change.pow(2).sum(1).clamp_min(1e-12)).clamp(0, 1)


def build_identity_backend(name: str, pretrained: bool, models_dir: str | Path | None,
                           device: str | torch.device, options: dict[str, Any] | None = None):
    """A recogniser of the identity ensemble.

    ``pretrained=False`` (tests only) builds a small randomly initialised iresnet behind
    the PyTorch ArcFace backend, whatever ``name`` is (AdaFace is an iresnet as well);
    each name gets its own seed so the ensemble members differ.
    """
    if not pretrained:
        import zlib

        from ..face.arcface import ArcFaceTorch
        from ..face.iresnet import IResNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(name.encode()))
            network = IResNet(layers=(1, 1, 1, 1), widths=(16, 32, 32, 64), num_features=128)
        backend = ArcFaceTorch(network)
        backend.name = f"{name} (random, test only)"
        return backend.to(device)
    from ..face import load_identity_backend

    return load_identity_backend(name, models_dir=models_dir, device=str(device), **dict(options or {}))


def build_landmark_backend(name: str, models_dir: str | Path | None, device: str | torch.device,
                           options: dict[str, Any] | None = None):
    from ..face import load_landmark_backend

    return load_landmark_backend(name, models_dir=models_dir, device=str(device), **dict(options or {}))


class TrainingObjective(nn.Module):
    """All losses of the paper. Build with :meth:`build`.

    ``generator_losses(...)`` returns a dict of the unweighted terms and ``"total"``
    (weighted sum); ``discriminator_losses(...)`` the GAN discriminator term.
    """

    def __init__(self, config: LossConfig, alphas_cumprod: torch.Tensor,
                 ea_dists: nn.Module | None = None, mfa_distance: nn.Module | None = None,
                 identity: IdentityLoss | None = None, heatmap_backend=None,
                 discriminator: LatentDiscriminator | None = None) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)
        self.ea_dists = ea_dists
        #: Eq. 13's distance ``(a, b) -> (B,)`` on [0, 1] images: LPIPS, or an ablation's
        self.mfa_distance = mfa_distance
        self.identity = identity
        self.heatmap_backend = heatmap_backend
        self.discriminator = discriminator
        needed = {"ea_dists": ea_dists, "identity": identity, "mfa": mfa_distance, "adversarial": discriminator}
        for name, network in needed.items():
            if config.enabled(name) and network is None:
                raise ConfigError(f"loss '{name}' is on but its network was not given")
        if config.enabled("mfa") and config.mfa_heatmaps and heatmap_backend is None:
            raise ConfigError("the MFA loss weights by heatmaps but no landmark backend was given")

    @classmethod
    def build(cls, config: LossConfig, unet: nn.Module, alphas_cumprod: torch.Tensor,
              models_dir: str | Path | None = None, device: str | torch.device = "cpu",
              heatmap_options: dict[str, Any] | None = None) -> "TrainingObjective":
        """Build the networks of every enabled loss (``unet``: the generator's, for the discriminator).

        ``heatmap_options`` are added to the MFA landmark backend's options (the trainer
        passes ``{"detect": False}`` for aligned crops).
        """
        vgg = None
        mfa_vgg = config.enabled("mfa") and config.mfa_distance != "mse"
        if config.enabled("ea_dists") or mfa_vgg:
            vgg = build_vgg16(config.pretrained, models_dir, config.vgg_file)
        ea_dists = mfa_distance = identity = heatmaps = discriminator = None
        dists = None
        if config.enabled("ea_dists") or (config.enabled("mfa") and config.mfa_distance == "dists"):
            dists = build_dists(config.pretrained, models_dir, config.dists_file, vgg=vgg)
        if config.enabled("ea_dists"):
            ea_dists = EdgeAwareDISTS(dists)
        if config.enabled("mfa"):
            if config.mfa_distance == "lpips":
                mfa_distance = build_lpips(config.pretrained, models_dir, config.lpips_file, vgg=vgg)
            else:
                mfa_distance = dists if config.mfa_distance == "dists" else MSEDistance()
            if config.mfa_heatmaps:
                options = {**(config.backend_options.get(config.mfa_landmarks) or {}), **(heatmap_options or {})}
                heatmaps = build_landmark_backend(config.mfa_landmarks, models_dir, device, options)
        if config.enabled("identity"):
            identity = IdentityLoss([
                build_identity_backend(name, config.pretrained, models_dir, device, config.backend_options.get(name))
                for name in config.identity_backends
            ], jitter=config.identity_jitter, lowpass=config.identity_lowpass)
        if config.enabled("adversarial"):
            discriminator = LatentDiscriminator(unet, config.discriminator)
        return cls(config, alphas_cumprod, ea_dists, mfa_distance, identity, heatmaps, discriminator).to(device)

    def train(self, mode: bool = True) -> "TrainingObjective":
        super().train(mode)
        for frozen in (self.ea_dists, self.mfa_distance, self.identity):
            if frozen is not None:
                frozen.eval()
        return self

    # ------------------------------------------------------------------ masks
    def mfa_active(self, step: int | None = None) -> bool:
        """Whether L_MFA is computed at ``step`` (its network is built and its start reached)."""
        return self.mfa_distance is not None and self.config.active("mfa", step)

    def mfa_masks(self, lq: torch.Tensor, found: list[bool] | None = None) -> torch.Tensor | None:
        """(B, 1, H, W) MFA masks from the heatmaps of the LQ faces (no gradient).

        A face whose landmarks were not found has all-zero heatmaps, so its mask is zero
        and its L_MFA term vanishes; when ``found`` is a list, one flag per face (False
        for such a face) is appended to it, so the caller can count the misses. Without
        heatmap weighting (``mfa_heatmaps: false``) the mask is all ones and nothing is counted.
        """
        if self.mfa_distance is not None and not self.config.mfa_heatmaps:
            return lq.new_ones(lq.shape[0], 1, *lq.shape[-2:], dtype=torch.float32)
        if self.heatmap_backend is None:
            return None
        with torch.no_grad():
            heatmaps = self.heatmap_backend.heatmaps(lq.detach().float().clamp(0, 1))
        heatmaps = heatmaps.to(lq.device, torch.float32)
        if found is not None:
            finite = torch.isfinite(heatmaps).flatten(1).all(dim=1)
            found.extend((finite & (heatmaps.abs().flatten(1).amax(dim=1) > 0)).tolist())
        heatmaps = torch.nan_to_num(heatmaps, nan=0.0)
        return mfa_mask(heatmaps, k=self.config.mfa_k, size=lq.shape[-2:], normalize_raw=self.config.mfa_normalize_raw)

    # ----------------------------------------------------------------- losses
    def _random_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        low, high = self.config.discriminator.t_min, self.config.discriminator.t_max
        high = min(high, self.alphas_cumprod.shape[0] - 1)
        return torch.randint(low, high + 1, (batch,)).to(device)

    def generator_losses(self, restored: torch.Tensor, target: torch.Tensor,
                         latent_restored: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None, step: int | None = None,
                         lq: torch.Tensor | None = None,
                         fidelity: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Unweighted terms and their weighted ``"total"``.

        Args:
            restored: (B, 3, H, W) x_hat_H in [0, 1] (with gradient).
            target: (B, 3, H, W) x_H in [0, 1].
            latent_restored: (B, 4, h, w) z_hat_H, needed by the adversarial term.
            mask: (B, 1, H, W) MFA mask of the LQ input (see :meth:`mfa_masks`).
            step: the optimiser step; losses whose ``start_steps`` entry is later are skipped.
            lq: (B, 3, H, W) x_L in [0, 1] and fidelity: (B,) the model's automatic fidelity
                ``w``, for the fidelity term.
        """
        config = self.config
        target = target.to(restored.dtype)
        terms: dict[str, torch.Tensor] = {}
        if config.active("mse", step):
            terms["mse"] = F.mse_loss(restored.float() * 2 - 1, target.float() * 2 - 1)
        if self.ea_dists is not None and config.active("ea_dists", step):
            terms["ea_dists"] = self.ea_dists(restored.float(), target.float()).mean()
        if self.identity is not None and config.active("identity", step):
            terms["identity"] = self.identity(restored.float(), target.float()).mean()
        if self.mfa_active(step):
            if mask is None:
                raise ConfigError("the MFA loss needs the mask of the LQ input")
            terms["mfa"] = mfa_loss(restored.float(), target.float(), mask, self.mfa_distance)
        if self.discriminator is not None and config.active("adversarial", step):
            if latent_restored is None:
                raise ConfigError("the adversarial loss needs the restored latent")
            timesteps = self._random_timesteps(latent_restored.shape[0], latent_restored.device)
            noisy = forward_noise(latent_restored.float(), timesteps, self.alphas_cumprod)
            # D's weights get gradients here too; the trainer zeroes them before the D step.
            terms["adversarial"] = generator_loss(self.discriminator(noisy, timesteps))
        if config.active("fidelity", step):
            if fidelity is None or lq is None:
                raise ConfigError("losses.fidelity needs a model with a fidelity estimator "
                                  "(model.overrides: fidelity.enabled: true)")
            terms["fidelity"] = F.mse_loss(fidelity.float(), optimal_blend_weight(lq, restored.detach(), target))
        total = sum(float(getattr(config, name)) * value for name, value in terms.items())
        terms["total"] = total if isinstance(total, torch.Tensor) else restored.new_zeros(())
        return terms

    def discriminator_losses(self, latent_fake: torch.Tensor, latent_real: torch.Tensor) -> torch.Tensor:
        """Eq. 5's L_D on F(z_hat_H, t) (detached) and F(E(x_H), t) at random t."""
        if self.discriminator is None:
            raise ConfigError("the adversarial loss is off: there is no discriminator")
        batch = latent_fake.shape[0]
        t_fake = self._random_timesteps(batch, latent_fake.device)
        t_real = self._random_timesteps(batch, latent_real.device)
        fake = forward_noise(latent_fake.detach().float(), t_fake, self.alphas_cumprod)
        real = forward_noise(latent_real.detach().float(), t_real, self.alphas_cumprod)
        return discriminator_loss(self.discriminator(real, t_real), self.discriminator(fake, t_fake))
