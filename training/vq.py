"""Stage 1 of the VRE: the HQ dictionary, then the LQ dictionary with the association loss.

The VRE (paper Eq. 7) is OSDFace's LQ embedder, whose weights the OSDFace release ships as
``associate_2.ckpt``. OSDFace trains it as DAEFR does (OSDFace issue #11):

1. ``vq-hq``: the HQ dictionary, a VQ autoencoder (:class:`~honestface.models.vq_autoencoder.VQAutoencoder`)
   that reconstructs clean faces (OSDFace: 50 epochs);
2. ``vq-lq``: the LQ dictionary, an autoencoder of the same shape that reconstructs the
   synthetic LQ of the same faces (``honestface.degradation``), first alone (10 epochs,
   ``losses.association`` held back by ``losses.start_steps``), then tied to the HQ
   dictionary by DAEFR's association loss (10 more epochs, weight 1): features of the LQ
   face and of its clean original are contrasted position by position, CLIP-style.
   While the association loss is on, the HQ autoencoder trains with it (``model.train_hq``,
   as in DAEFR's association stage), keeping its own reconstruction loss.

Losses of each autoencoder: L1 reconstruction on [-1, 1], LPIPS-VGG (``losses.perceptual``;
0 = off, needed when the VGG16/LPIPS files are absent), codebook ``||sg[z] - e||^2`` and
commitment ``beta ||z - sg[e]||^2`` (VQ-VAE, beta 0.25). DAEFR adds a patch GAN on the
decoder; the VRE keeps only the encoder and the codebook, so it is left out here.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from honestface.config import HonestFaceConfig, VREConfig, strict_from_dict
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
VQ_LOSS_NAMES = ("l1", "perceptual", "codebook", "commitment", "association")


@dataclass
class VQModelSection:
    """The dictionaries' architecture and starting weights.

    Attributes:
        preset: the VRE sizes of this HonestFace preset (``sd21``: the release's encoder,
            512 px, 16x16 grid, 1024 codes of 512; ``tiny``: the CPU test model's).
        overrides: changes to that :class:`~honestface.config.VREConfig` (e.g.
            ``{codebook_size: 512}``); stage 2 must then use the same ones
            (``model.overrides`` with ``vre.`` keys).
        hq_dictionary: ``vq-lq``: the ``vq-hq`` run's ``hq_dictionary.ckpt`` (or any
            checkpoint of that format with a ``vqvae.*`` part, such as an ``associate_2.ckpt``).
        train_hq: ``vq-lq``: train the HQ autoencoder with the association loss while it is
            on (DAEFR's association stage); False keeps the HQ dictionary frozen.
        init: start weights from a checkpoint of this format (``vq-hq``: its ``vqvae.*``
            part; ``vq-lq``: its ``vqvae_LQ.*`` part, decoder included, and ``logit_scale``
            if present), e.g. to continue a finished run with other settings.
    """

    preset: str = "sd21"
    overrides: dict[str, Any] = field(default_factory=dict)
    hq_dictionary: str | None = None
    train_hq: bool = True
    init: str | None = None

    def vre_config(self) -> VREConfig:
        config = HonestFaceConfig.from_preset(self.preset)
        for key, value in self.overrides.items():
            if not hasattr(config.vre, key):
                raise ConfigError(f"model.overrides: unknown VRE config key '{key}'; known: "
                                  f"{sorted(asdict(config.vre))}")
            current = getattr(config.vre, key)
            setattr(config.vre, key, tuple(value) if isinstance(current, tuple) else value)
        config.validate()
        return config.vre


@dataclass
class VQLossSection:
    """Loss weights of stage 1 (0 switches a term off).

    ``l1``: reconstruction |x_hat - x| on [-1, 1]; ``perceptual``: LPIPS-VGG (needs
    ``honestface/vgg16-397923af.pth`` and ``honestface/lpips_vgg.pth`` unless
    ``pretrained: false``, test only); ``codebook``, ``commitment``: the VQ-VAE terms
    (beta = 0.25); ``association``: DAEFR's HQ-LQ contrast (``vq-lq`` only).
    ``start_steps``: per loss name, the optimiser step from which it counts (OSDFace: the
    association loss after the LQ dictionary's first 10 epochs).
    """

    l1: float = 1.0
    perceptual: float = 1.0
    codebook: float = 1.0
    commitment: float = 0.25
    association: float = 1.0
    pretrained: bool = True
    start_steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.start_steps) - set(VQ_LOSS_NAMES))
        if unknown:
            raise ConfigError(f"losses.start_steps names unknown loss(es) {unknown}; known: {list(VQ_LOSS_NAMES)}")
        self.start_steps = {name: int(step) for name, step in self.start_steps.items()}
        for name in VQ_LOSS_NAMES:
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"losses.{name} must be >= 0, got {getattr(self, name)}")

    def active(self, name: str, step: int) -> bool:
        return float(getattr(self, name)) > 0 and step >= self.start_steps.get(name, 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "VQLossSection":
        return strict_from_dict(cls, data, "the VQ loss options")


class VQTask(nn.Module):
    """The autoencoders of one stage-1 kind and their losses.

    ``vq-hq``: ``hq`` is trained on clean faces. ``vq-lq``: ``lq`` is trained on their
    synthetic LQ, ``hq`` comes from ``model.hq_dictionary`` and ``logit_scale`` is the
    association loss's learnable temperature. Parameter names of :meth:`state_dict` are
    those of the exported checkpoint (``vqvae.*``, ``vqvae_LQ.*``, ``logit_scale``).
    """

    def __init__(self, kind: str, model: VQModelSection, losses: VQLossSection,
                 models_dir: str | Path | None = None) -> None:
        super().__init__()
        if kind not in VQ_KINDS:
            raise ConfigError(f"unknown VQ kind '{kind}'; known: {', '.join(VQ_KINDS)}")
        self.kind = kind
        self.model_section = model
        self.loss_config = losses
        self.config = model.vre_config()
        self.hq = VQAutoencoder(self.config)
        self.lq = VQAutoencoder(self.config) if kind == "vq-lq" else None
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE)) if kind == "vq-lq" else None
        if kind == "vq-lq":
            if not model.hq_dictionary:
                raise ConfigError("kind vq-lq needs model.hq_dictionary: the hq_dictionary.ckpt of a vq-hq run")
            load_vq_dictionary(self.hq, _existing(model.hq_dictionary, "model.hq_dictionary"), HQ_PREFIX)
            self.hq.requires_grad_(bool(model.train_hq))
        if model.init:
            self._load_init(_existing(model.init, "model.init"))
        self.lpips = None
        if losses.perceptual > 0:
            from honestface.losses import build_lpips

            self.lpips = build_lpips(losses.pretrained, models_dir)

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
        # the LPIPS networks are frozen buffers and parameters with requires_grad False
        modules = [m for m in (self.hq, self.lq) if m is not None]
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        if self.logit_scale is not None:
            params.append(self.logit_scale)
        return params

    def export_state(self) -> dict[str, torch.Tensor]:
        """Every weight under its exported name (what :meth:`load_export_state` reads back)."""
        state = {HQ_PREFIX + k: v for k, v in self.hq.state_dict().items()}
        if self.lq is not None:
            state.update({VQ_PREFIX + k: v for k, v in self.lq.state_dict().items()})
            state[LOGIT_SCALE_KEY] = self.logit_scale.detach()
        return {k: v.detach().clone() for k, v in state.items()}

    def load_export_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        from honestface.errors import CheckpointError

        own = self.export_state()
        missing = sorted(set(own) - set(state))
        if missing:
            raise CheckpointError(source, f"{len(missing)} VQ keys missing, e.g. {missing[:3]}",
                                  f"a {self.kind} training checkpoint of the same sizes")
        with torch.no_grad():
            self.hq.load_state_dict({k[len(HQ_PREFIX):]: state[k] for k in own if k.startswith(HQ_PREFIX)})
            if self.lq is not None:
                self.lq.load_state_dict({k[len(VQ_PREFIX):]: state[k] for k in own if k.startswith(VQ_PREFIX)})
                self.logit_scale.copy_(state[LOGIT_SCALE_KEY].reshape(()))

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
        config, losses = self.config, self.loss_config
        target = images * 2.0 - 1.0
        if target.shape[-2:] != (config.resolution, config.resolution):
            raise ConfigError(f"faces of {tuple(target.shape[-2:])} px, but the dictionaries are built for "
                              f"{config.resolution} px: set data.image_size to {config.resolution}")
        out = autoencoder(encoder_input(target, config))
        reconstruction = out.reconstruction.float()
        terms: dict[str, torch.Tensor] = {}
        if losses.active("l1", step):
            terms[prefix + "l1"] = (reconstruction - target.float()).abs().mean()
        if self.lpips is not None and losses.active("perceptual", step):
            terms[prefix + "perceptual"] = self.lpips((reconstruction + 1) / 2, images.float()).mean()
        if losses.active("codebook", step):
            terms[prefix + "codebook"] = out.quantized.codebook_loss
        if losses.active("commitment", step):
            terms[prefix + "commitment"] = out.quantized.commitment_loss
        return terms, out

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(terms.values())).device)
        for name, value in terms.items():
            total = total + float(getattr(self.loss_config, name.removeprefix("hq_"))) * value
        return total

    def losses(self, gt: torch.Tensor, lq: torch.Tensor | None, step: int) -> tuple[dict[str, torch.Tensor],
                                                                                    dict[str, float]]:
        """One micro-batch: loss terms (with ``"total"``) and logged statistics.

        Args:
            gt: (B, 3, R, R) clean faces in [0, 1].
            lq: (B, 3, R, R) their synthetic LQ in [0, 1] (``vq-lq``; ignored by ``vq-hq``).
            step: the optimiser step (for ``losses.start_steps``).
        """
        if self.lq is None:
            terms, out = self._autoencoder_terms(self.hq, gt, step)
            stats = {"codes/perplexity": float(out.quantized.perplexity)}
        else:
            if lq is None:
                raise ConfigError("kind vq-lq needs the LQ faces of the batch")
            terms, out = self._autoencoder_terms(self.lq, lq, step)
            stats = {"codes/perplexity": float(out.quantized.perplexity)}
            if self.loss_config.active("association", step):
                hq_trained = bool(self.model_section.train_hq)
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
