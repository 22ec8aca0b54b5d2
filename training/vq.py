"""Stage 1 of the VRE: the HQ dictionary, then the LQ dictionary with the association loss.

The VRE (paper Eq. 7) is OSDFace's LQ embedder, whose weights the OSDFace release ships as
``associate_2.ckpt``. OSDFace trains it as DAEFR does (OSDFace issue #11):

1. ``vq-hq``: the HQ dictionary, a VQ autoencoder (:class:`~honestface.models.vq_autoencoder.VQAutoencoder`)
   that reconstructs clean faces (OSDFace: 50 epochs);
2. ``vq-lq``: the LQ dictionary, an autoencoder of the same shape that reconstructs the
   synthetic LQ of the same faces (``honestface.degradation``), first alone (10 epochs,
   ``model.association`` held back by ``model.start_steps``), then tied to the HQ
   dictionary by DAEFR's association loss (10 more epochs, weight 1): features of the LQ
   face and of its clean original are contrasted position by position, CLIP-style.
   While the association loss is on, the HQ autoencoder trains with it (``model.train_hq``,
   as in DAEFR's association stage), keeping its own reconstruction loss.

Losses of each autoencoder (weights in the config's ``model`` section, 0 = off): ``l1``
(and ``mse``) reconstruction on [-1, 1]; ``perceptual``, LPIPS-VGG (needs
``honestface/vgg16-397923af.pth`` and ``honestface/lpips_vgg.pth``; set 0 without them, or
``pretrained: false`` for tests); ``codebook`` ``||sg[z] - e||^2`` and ``commitment``
``beta ||z - sg[e]||^2`` (VQ-VAE, beta 0.25; DAEFR's code, after taming's early versions,
weights them the other way round: 1 on the commitment term, 0.25 on the codebook term);
``association`` (``vq-lq``). ``start_steps`` delays a loss to an optimiser step. DAEFR adds
a patch GAN on the decoder; the VRE keeps only the encoder and the codebook, so it is left
out here.

:class:`VQTask` holds the models and computes one step's losses; the loop, the
checkpoints and the logs are those of ``training/train_autoencoder.py``. The export is a
Lightning-style checkpoint in the format of ``associate_2.ckpt`` (``vqvae.*`` the HQ
dictionary, ``vqvae_LQ.*`` the LQ one, ``logit_scale``): ``vq-lq`` writes
``<output>/associate_2.ckpt``, which the VRE loader reads as it reads the release's, and
``vq-hq`` writes ``<output>/hq_dictionary.ckpt`` (no ``vqvae_LQ`` part) for ``vq-lq``'s
``model.hq_dictionary``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from honestface.config import HonestFaceConfig, VREConfig
from honestface.errors import ConfigError
from honestface.loaders.osdface import HQ_PREFIX, VQ_FILE, VQ_PREFIX, load_vq_dictionary, save_vq_checkpoint
from honestface.models.vq_autoencoder import VQAutoencoder, VQAutoencoderOutput, association_loss
from honestface.models.vre import encoder_input

logger = logging.getLogger("honestface.train")

VQ_KINDS = ("vq-hq", "vq-lq")
#: what each kind exports into its output folder
EXPORT_NAMES = {"vq-hq": "hq_dictionary.ckpt", "vq-lq": VQ_FILE}
#: CLIP's initial temperature 0.07, as DAEFR
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
LOGIT_SCALE_KEY = "logit_scale"
VQ_LOSS_NAMES = ("l1", "mse", "perceptual", "codebook", "commitment", "association")


def vre_config(preset: str, overrides: dict[str, Any]) -> VREConfig:
    """The VRE sizes of a HonestFace preset (``sd21``: the release's; ``tiny``: the CPU
    test model's) with ``overrides`` of :class:`~honestface.config.VREConfig` keys."""
    config = HonestFaceConfig.from_preset(preset)
    for key, value in overrides.items():
        if not hasattr(config.vre, key):
            raise ConfigError(f"model.vre: unknown VRE config key '{key}'; known: {sorted(asdict(config.vre))}")
        current = getattr(config.vre, key)
        setattr(config.vre, key, tuple(value) if isinstance(current, tuple) else value)
    config.validate()
    return config.vre


def check_vq_section(section) -> None:
    """Errors of the VQ fields of ``model`` (:class:`training.train_autoencoder.AutoencoderSection`)."""
    unknown = sorted(set(section.start_steps) - set(VQ_LOSS_NAMES))
    if unknown:
        raise ConfigError(f"model.start_steps names unknown loss(es) {unknown}; known: {list(VQ_LOSS_NAMES)}")
    section.start_steps = {name: int(step) for name, step in section.start_steps.items()}
    for name in VQ_LOSS_NAMES:
        if float(getattr(section, name)) < 0:
            raise ConfigError(f"model.{name} must be >= 0, got {getattr(section, name)}")
    if section.l1 + section.mse <= 0:
        raise ConfigError("model.l1 + model.mse must be > 0: the dictionaries learn from the reconstruction")
    if section.kind == "vq-lq" and not section.hq_dictionary:
        raise ConfigError("kind vq-lq needs model.hq_dictionary: the hq_dictionary.ckpt of a vq-hq run")


def loss_active(section, name: str, step: int) -> bool:
    """Weight above 0, and ``step`` at or past ``section.start_steps[name]``."""
    return float(getattr(section, name)) > 0 and step >= section.start_steps.get(name, 0)


class VQTask(nn.Module):
    """The autoencoders of one stage-1 kind and their losses.

    ``vq-hq``: ``hq`` is trained on clean faces. ``vq-lq``: ``lq`` is trained on their
    synthetic LQ, ``hq`` comes from ``model.hq_dictionary`` and ``logit_scale`` is the
    association loss's learnable temperature. :meth:`state_dict` (the training
    checkpoints) holds ``hq.*``, ``lq.*`` and ``logit_scale``; :meth:`export` writes them
    under the release's names (``vqvae.*``, ``vqvae_LQ.*``, ``logit_scale``).
    """

    def __init__(self, section, models_dir: str | Path | None = None) -> None:
        super().__init__()
        if section.kind not in VQ_KINDS:
            raise ConfigError(f"unknown VQ kind '{section.kind}'; known: {', '.join(VQ_KINDS)}")
        check_vq_section(section)
        self.kind = section.kind
        self.section = section
        self.config = vre_config(section.vre_preset, section.vre)
        self.hq = VQAutoencoder(self.config)
        self.lq = VQAutoencoder(self.config) if self.kind == "vq-lq" else None
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE)) if self.kind == "vq-lq" else None
        if self.kind == "vq-lq":
            load_vq_dictionary(self.hq, _existing(section.hq_dictionary, "model.hq_dictionary"), HQ_PREFIX)
            self.hq.requires_grad_(bool(section.train_hq))
        if section.init:
            self._load_init(_existing(section.init, "model.init"))
        # frozen and not part of the weights: kept outside the module tree (state_dict, checkpoints)
        self._lpips: list[nn.Module] = []
        if section.perceptual > 0:
            from honestface.losses import build_lpips

            self._lpips.append(build_lpips(section.pretrained, models_dir))

    # ----------------------------------------------------------------- weights
    def _load_init(self, path: Path) -> None:
        if self.kind == "vq-hq":
            load_vq_dictionary(self.hq, path, HQ_PREFIX)
            return
        load_vq_dictionary(self.lq, path, VQ_PREFIX)
        from honestface.loaders.safe_pickle import load_tensors

        state = load_tensors(path, "VQ dictionary checkpoint")
        if LOGIT_SCALE_KEY in state:
            with torch.no_grad():
                self.logit_scale.copy_(state[LOGIT_SCALE_KEY].reshape(()))

    def trained(self) -> VQAutoencoder:
        """The autoencoder this kind trains on its own data (``hq`` or ``lq``)."""
        return self.hq if self.lq is None else self.lq

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) faces in [0, 1] -> the trained autoencoder's reconstruction in [0, 1]
        (the input is the clean face for ``vq-hq``, the LQ face for ``vq-lq``)."""
        autoencoder = self.trained()
        was_training = autoencoder.training
        autoencoder.eval()
        out = autoencoder(encoder_input(images * 2.0 - 1.0, self.config))
        autoencoder.train(was_training)
        return (out.reconstruction.float().clamp(-1, 1) + 1.0) / 2.0

    def export(self, folder: str | Path, step: int, epoch: int, hyper_parameters: dict[str, Any]) -> Path:
        """Write ``associate_2.ckpt`` (``vq-lq``) or ``hq_dictionary.ckpt`` (``vq-hq``) into ``folder``."""
        path = Path(folder) / EXPORT_NAMES[self.kind]
        extra = {LOGIT_SCALE_KEY: self.logit_scale.detach()} if self.logit_scale is not None else None
        hyper = {"kind": self.kind, "vre": _plain(asdict(self.config)), **hyper_parameters}
        return save_vq_checkpoint(path, lq=self.lq, hq=self.hq, extra_state=extra, epoch=epoch,
                                  global_step=step, hyper_parameters=hyper)

    # ------------------------------------------------------------------ losses
    def _autoencoder_terms(self, autoencoder: VQAutoencoder, images: torch.Tensor, step: int,
                           prefix: str = "") -> tuple[dict[str, torch.Tensor], VQAutoencoderOutput]:
        """Reconstruction and VQ terms of one autoencoder on (B, 3, R, R) faces in [0, 1]."""
        config, section = self.config, self.section
        target = images * 2.0 - 1.0
        if target.shape[-2:] != (config.resolution, config.resolution):
            raise ConfigError(f"faces of {tuple(target.shape[-2:])} px, but the dictionaries are built for "
                              f"{config.resolution} px: set data.image_size to {config.resolution}")
        out = autoencoder(encoder_input(target, config))
        error = out.reconstruction.float() - target.float()
        terms: dict[str, torch.Tensor] = {}
        if loss_active(section, "l1", step):
            terms[prefix + "l1"] = error.abs().mean()
        if loss_active(section, "mse", step):
            terms[prefix + "mse"] = error.pow(2).mean()
        if self._lpips and loss_active(section, "perceptual", step):
            lpips = self._lpips[0]
            if lpips.lin0.device != images.device:
                lpips.to(images.device)
            terms[prefix + "perceptual"] = lpips((out.reconstruction.float() + 1) / 2, images.float()).mean()
        if loss_active(section, "codebook", step):
            terms[prefix + "codebook"] = out.quantized.codebook_loss
        if loss_active(section, "commitment", step):
            terms[prefix + "commitment"] = out.quantized.commitment_loss
        return terms, out

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(terms.values())).device)
        for name, value in terms.items():
            total = total + float(getattr(self.section, name.removeprefix("hq_"))) * value
        return total

    def losses(self, gt: torch.Tensor, lq: torch.Tensor | None, step: int) -> tuple[dict[str, torch.Tensor],
                                                                                    dict[str, float]]:
        """One micro-batch: loss terms (with ``"total"``) and logged statistics.

        Args:
            gt: (B, 3, R, R) clean faces in [0, 1].
            lq: (B, 3, R, R) their synthetic LQ in [0, 1] (``vq-lq``; ignored by ``vq-hq``).
            step: the optimiser step (for ``model.start_steps``).
        """
        if self.lq is None:
            terms, out = self._autoencoder_terms(self.hq, gt, step)
            stats = {"codes/perplexity": float(out.quantized.perplexity)}
        else:
            if lq is None:
                raise ConfigError("kind vq-lq needs the LQ faces of the batch")
            terms, out = self._autoencoder_terms(self.lq, lq, step)
            stats = {"codes/perplexity": float(out.quantized.perplexity)}
            if loss_active(self.section, "association", step):
                hq_trained = bool(self.section.train_hq)
                with torch.set_grad_enabled(hq_trained and torch.is_grad_enabled()):
                    if hq_trained:  # DAEFR's association stage trains the HQ autoencoder with its own losses
                        hq_terms, hq_out = self._autoencoder_terms(self.hq, gt, step, prefix="hq_")
                        terms.update(hq_terms)
                        hq_features = hq_out.features
                    else:
                        hq_features = self.hq.encode(encoder_input(gt * 2.0 - 1.0, self.config))
                terms["association"] = association_loss(hq_features, out.features, self.logit_scale)
                stats["association/accuracy"] = association_accuracy(hq_features.detach(), out.features.detach())
                stats["association/logit_scale"] = float(self.logit_scale.detach())
        terms["total"] = self._weighted(terms)
        return terms, stats


def association_accuracy(hq_features: torch.Tensor, lq_features: torch.Tensor) -> float:
    """Share of positions whose LQ feature is most similar (cosine) to its own HQ feature
    among all positions of the batch: the association loss's retrieval accuracy."""
    c = hq_features.shape[1]
    hq = F.normalize(hq_features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    lq = F.normalize(lq_features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    hits = (lq @ hq.t()).argmax(dim=1) == torch.arange(hq.shape[0], device=hq.device)
    return float(hits.float().mean())


def _existing(name: str | Path, what: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        from honestface.errors import MissingModelFileError

        raise MissingModelFileError(path.name, path.parent, f"{what} (a stage-1 VQ checkpoint)")
    return path


def _plain(value: Any) -> Any:
    """Tuples as lists: the checkpoint's hyper-parameters stay plain containers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
