"""The HonestFace model: VRE + IDE + fusion -> prompt; one-step restorer -> restored face.

Everything here is batched and differentiable with respect to the trainable parts (LoRA,
VRE projection, IDE heads, fusion); the VAE, the VQ encoder and VGG16 are frozen, unless
the config bundles them (``HonestFaceConfig.bundled``: a model trained from scratch, whose
UNet/VAE/VQ/VGG weights are its own and are trained and stored with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import BUNDLED_PARTS, HonestFaceConfig
from ..errors import ConfigError, ImageError
from .color import color_correct
from .fidelity import FidelityEstimator
from .fusion import build_fusion
from .ide import IdentityEmbedder, ReferenceTokens
from .restorer import OneStepRestorer
from .vre import VisualRepresentationEmbedder


@dataclass
class HonestFaceOutput:
    """Result of :meth:`HonestFaceModel.forward`."""

    image: torch.Tensor  # (B, 3, H, W) restored face in [0, 1]
    latent_lq: torch.Tensor  # (B, 4, h, w) z_L = E(x_L) * s
    latent_restored: torch.Tensor  # (B, 4, h, w) z_H (Eq. 3), what the latent GAN sees
    noise_pred: torch.Tensor  # (B, 4, h, w) eps of the UNet
    prompt: torch.Tensor  # (B, n, k) fused prompt p
    reference_index: torch.Tensor  # (B,) r0 of Eq. 6 (-1 where the element has no reference)
    vre_valid: torch.Tensor  # (B, n3) bool, which VRE tokens hold a code
    #: (B,) automatic fidelity w in [0, 1] (models with ``config.fidelity.enabled``; not
    #: applied to ``image``: the pipeline blends ``lq + w (image - lq)``), else None
    fidelity: torch.Tensor | None = None


class HonestFaceModel(nn.Module):
    """``forward(lq, references, ...) -> HonestFaceOutput``.

    Sub-modules: ``vre`` (:class:`VisualRepresentationEmbedder`), ``ide``
    (:class:`IdentityEmbedder`), ``fusion`` (see :mod:`honestface.models.fusion`),
    ``restorer`` (:class:`OneStepRestorer`, holding ``unet`` and ``vae``).

    Args:
        config: sizes; ``config.token_dim`` must equal the UNet's cross-attention width.
        unet: a diffusers ``UNet2DConditionModel`` (weights already loaded).
        vae: a diffusers ``AutoencoderKL``.
        vgg_state_dict: torchvision VGG16 weights for the FFE; None keeps a random VGG
            (tests only; real use loads ``config.ide.vgg_file``).
        lora: add the LoRA adapter (``config.lora``) to the UNet (never with rank 0).
    """

    def __init__(self, config: HonestFaceConfig, unet: nn.Module, vae: nn.Module,
                 vgg_state_dict: dict[str, torch.Tensor] | None = None, lora: bool = True) -> None:
        super().__init__()
        config.validate()
        cross = getattr(getattr(unet, "config", None), "cross_attention_dim", config.token_dim)
        if int(cross) != config.token_dim:
            raise ConfigError(f"UNet cross_attention_dim {cross} != config.token_dim {config.token_dim}")
        self.config = config
        self.vre = VisualRepresentationEmbedder(config.vre, config.token_dim)
        self.vre.vq.requires_grad_(False)
        self.ide = IdentityEmbedder(config.ide, config.token_dim, vgg_state_dict)
        self.fusion = build_fusion(config.fusion, config.token_dim)
        self.restorer = OneStepRestorer(unet, vae, config.diffusion)
        self.fidelity = FidelityEstimator(config.fidelity) if config.fidelity.enabled else None
        #: False for OSDFace weights (untrained IDE): references are then ignored.
        self.accepts_references = True
        #: Key-count lines of the files the model was loaded from (set by the loaders).
        self.load_report: list[str] = []
        #: Replaced whenever trainable weights are loaded: reference tokens encoded under
        #: another stamp (:class:`~honestface.pipeline.ReferenceSet`) are encoded again.
        self.encoding_stamp = object()
        if lora and config.lora.rank > 0:
            self.restorer.add_lora(config.lora)

    # ------------------------------------------------------------------ parts
    @property
    def unet(self) -> nn.Module:
        return self.restorer.unet

    @property
    def vae(self) -> nn.Module:
        return self.restorer.vae

    def bundled_modules(self) -> dict[str, nn.Module]:
        """The parts of ``config.bundled``, keyed by their checkpoint prefix."""
        parts = {"unet": lambda: self.unet, "vae": lambda: self.vae, "vq": lambda: self.vre.vq,
                 "vgg": lambda: self.ide.feature_extractor.vgg}  # no FFE: no VGG (validate() sees to it)
        return {BUNDLED_PARTS[name]: parts[name]() for name in BUNDLED_PARTS if name in self.config.bundled}

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose weights a HonestFace checkpoint stores (besides the UNet LoRA)."""
        modules = {"vre.projection": self.vre.projection}
        ffe = self.ide.feature_extractor
        if ffe is not None:
            modules.update({"ide.feature_extractor.color_head": ffe.color_head,
                            "ide.feature_extractor.structure_head": ffe.structure_head,
                            "ide.feature_extractor.projection": ffe.projection})
        if self.ide.identity_encoder is not None:
            modules["ide.identity_encoder"] = self.ide.identity_encoder
        if self.fidelity is not None:
            modules["fidelity"] = self.fidelity
        return {**modules, "fusion": self.fusion, **self.bundled_modules()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA + VRE projection + IDE heads + fusion + bundled parts (what the optimiser updates)."""
        params = list(self.restorer.lora_parameters())
        for module in self.trainable_modules().values():
            params.extend(module.parameters())
        return params

    def set_trainable(self) -> None:
        """Freeze everything, then unfreeze :meth:`trainable_parameters`."""
        self.requires_grad_(False)
        for parameter in self.trainable_parameters():
            parameter.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Flat state dict: ``unet.<module>.lora_{A,B}.weight`` + ``<module>.<param>`` of the heads."""
        state = self.restorer.lora_state_dict()
        for prefix, module in self.trainable_modules().items():
            for key, value in module.state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().clone()
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "trainable weights") -> int:
        """Inverse of :meth:`trainable_state_dict` (strict: missing, unexpected or mis-shaped
        keys raise :class:`~honestface.errors.CheckpointError`). Returns the keys loaded."""
        from ..errors import CheckpointError
        from ..loaders.reports import load_state_into

        loaded, used = 0, set()
        self.encoding_stamp = object()
        if self.config.lora.rank > 0:
            if self.restorer.lora_config is None:
                self.restorer.add_lora(self.config.lora)
            lora = {k: v for k, v in state.items() if k.startswith("unet.")}
            loaded = self.restorer.load_lora_state_dict(lora, source=source)
            used = set(lora)
        for prefix, module in self.trainable_modules().items():
            own = module.state_dict()
            if not own:
                continue
            part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            loaded += load_state_into(module, part, source, prefix)
            used.update(f"{prefix}.{k}" for k in own)
        unexpected = sorted(set(state) - used)
        if unexpected:
            raise CheckpointError(source, f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}",
                                  "only the keys of this model's trainable parts")
        return loaded

    # ---------------------------------------------------------------- forward
    def encode_references(self, references: torch.Tensor, reference_mask: torch.Tensor | None = None,
                          reference_landmarks: torch.Tensor | None = None,
                          identity_embeddings: torch.Tensor | None = None) -> ReferenceTokens:
        """The reference side of the conditioning, computed once per reference set.

        Args:
            references: (B, N, 3, S, S) padded references in [0, 1].
            reference_mask: (B, N) bool, True for real references (default: all real).
            reference_landmarks: (B, N, 68, 2), NaN where unknown, or None.
            identity_embeddings: (B, N, D) identity embeddings of the references, or None.

        Returns:
            :class:`~honestface.models.ide.ReferenceTokens` for :meth:`forward`'s ``conditioning``.
        """
        if reference_mask is None:
            reference_mask = torch.ones(references.shape[:2], dtype=torch.bool, device=references.device)
        first = next(self.ide.parameters())
        return self.ide.encode(references.to(device=first.device, dtype=first.dtype),
                               reference_mask.to(first.device), reference_landmarks,
                               None if identity_embeddings is None else identity_embeddings.to(first.device))

    def prompt(self, lq: torch.Tensor, references: torch.Tensor | None = None,
               reference_mask: torch.Tensor | None = None,
               lq_landmarks: torch.Tensor | None = None,
               reference_landmarks: torch.Tensor | None = None,
               identity_embeddings: torch.Tensor | None = None,
               conditioning: ReferenceTokens | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt (B, n, k), reference index (B,), VRE valid mask (B, n3).

        Elements without any reference get the VRE-only prompt ``p_L`` (exactly OSDFace);
        so does every element when ``accepts_references`` is False (OSDFace weights).
        Arguments as in :meth:`forward`.
        """
        return self._prompt(lq * 2.0 - 1.0, references, reference_mask, lq_landmarks, reference_landmarks,
                            identity_embeddings, conditioning)

    def _prompt(self, lq_signed: torch.Tensor, references: torch.Tensor | None,
                reference_mask: torch.Tensor | None, lq_landmarks: torch.Tensor | None,
                reference_landmarks: torch.Tensor | None, identity_embeddings: torch.Tensor | None,
                conditioning: ReferenceTokens | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`prompt` of LQ faces already in [-1, 1], (B, 3, S, S)."""
        batch = lq_signed.shape[0]
        vre = self.vre(lq_signed)
        p_visual = vre.tokens
        none_index = torch.full((batch,), -1, dtype=torch.long, device=lq_signed.device)
        if not self.accepts_references:
            return p_visual, none_index, vre.valid
        if conditioning is None:
            if references is None or references.shape[1] == 0:
                return p_visual, none_index, vre.valid
            if reference_mask is None:
                reference_mask = torch.ones(references.shape[:2], dtype=torch.bool, device=lq_signed.device)
            if not bool(reference_mask.any()):
                return p_visual, none_index, vre.valid
            conditioning = self.encode_references(references, reference_mask, reference_landmarks,
                                                  identity_embeddings)
        elif conditioning.mask.shape[0] != batch:
            raise ImageError(f"conditioning holds {conditioning.mask.shape[0]} faces' references, lq has {batch}")
        has_reference = conditioning.mask.to(lq_signed.device).any(dim=1)
        if not bool(has_reference.any()):
            return p_visual, none_index, vre.valid
        ide = self.ide.choose(conditioning, lq_landmarks)
        fused = self.fusion(ide.feature_tokens.to(p_visual.dtype), ide.identity_tokens.to(p_visual.dtype), p_visual)
        prompt = torch.where(has_reference[:, None, None], fused, p_visual[:, : fused.shape[1]])
        index = torch.where(has_reference, ide.reference_index.to(none_index.device), none_index)
        return prompt, index, vre.valid

    def forward(self, lq: torch.Tensor, references: torch.Tensor | None = None,
                reference_mask: torch.Tensor | None = None,
                lq_landmarks: torch.Tensor | None = None,
                reference_landmarks: torch.Tensor | None = None,
                identity_embeddings: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                color_correction: str | None = None,
                conditioning: ReferenceTokens | None = None) -> HonestFaceOutput:
        """Restore a batch of aligned LQ faces (differentiable; used for training).

        Args:
            lq: (B, 3, S, S) LQ faces in [0, 1], S = ``config.image_size``.
            references: (B, N, 3, S, S) padded references in [0, 1], or None (OSDFace mode).
            reference_mask: (B, N) bool, True for real references (default: all real).
            lq_landmarks: (B, 68, 2) pixel landmarks of the LQ faces (Eq. 6), or None.
            reference_landmarks: (B, N, 68, 2), NaN where unknown, or None.
            identity_embeddings: (B, N, D) identity embeddings of the references, or None.
            generator: seeds the VAE posterior sample when ``latent_mode == "sample"``.
            color_correction: override of ``config.color_correction``.
            conditioning: the references already encoded (:meth:`encode_references`, B rows);
                then ``references``, ``reference_mask``, ``reference_landmarks`` and
                ``identity_embeddings`` are not used. Same result as passing them.
        """
        size = self.config.image_size
        if lq.dim() != 4 or lq.shape[1] != 3 or tuple(lq.shape[-2:]) != (size, size):
            raise ImageError(f"lq must have shape (B, 3, {size}, {size}), got {tuple(lq.shape)}")
        if references is not None and (references.dim() != 5 or references.shape[0] != lq.shape[0]
                                       or references.shape[2] != 3):
            raise ImageError(f"references must have shape (B, N, 3, H, W) with B = {lq.shape[0]}, "
                             f"got {tuple(references.shape)}")
        lq_signed = lq * 2.0 - 1.0  # the VRE, the VAE and the colour correction all work in [-1, 1]
        prompt, index, valid = self._prompt(lq_signed, references, reference_mask, lq_landmarks,
                                            reference_landmarks, identity_embeddings, conditioning)
        restored = self.restorer(lq_signed, prompt, generator)
        image = restored.image.to(lq.dtype)
        method = self.config.color_correction if color_correction is None else color_correction
        if method != "none":
            image = color_correct(image, lq_signed, method).clamp(-1.0, 1.0)
        image = (image + 1.0) / 2.0
        # the estimator learns from the restoration, it does not shape it
        fidelity = None if self.fidelity is None else self.fidelity(lq, image.detach().clamp(0, 1))
        return HonestFaceOutput(image=image, latent_lq=restored.latent_lq,
                                latent_restored=restored.latent_restored, noise_pred=restored.noise_pred,
                                prompt=prompt, reference_index=index, vre_valid=valid, fidelity=fidelity)


def build_diffusers(config: HonestFaceConfig, seed: int | None = 0) -> tuple[nn.Module, nn.Module]:
    """Freshly initialised UNet and VAE from ``config.unet`` / ``config.vae`` (seeded when
    ``seed`` is not None): bundled parts before their weights are loaded, tests, examples."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if seed is not None:
        torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({k: v for k, v in config.unet.items() if not k.startswith("_")})
    vae = AutoencoderKL.from_config({k: v for k, v in config.vae.items() if not k.startswith("_")})
    return unet, vae
