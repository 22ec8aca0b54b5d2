"""Configuration of the HonestFace model.

One :class:`HonestFaceConfig` describes everything needed to build the model: the sizes
of the visual representation embedder (VRE), of the identity embedder (IDE), the fusion
operator, the LoRA adapter, the one-step diffusion constants and the diffusers configs
of the UNet and the VAE. It round-trips through JSON (:meth:`HonestFaceConfig.to_dict` /
:meth:`HonestFaceConfig.from_dict`), which is how HonestFace checkpoints store it.

Two presets:

- ``"sd21"``: the real model (SD 2.1-base UNet/VAE, 512x512 faces, 1024-d tokens, the
  OSDFace VQ encoder). The UNet/VAE configs are read from the JSON files shipped in
  ``honestface/loaders/configs/sd21-base/``.
- ``"tiny"``: the same architecture with tiny widths (64x64 faces, 32-d tokens). It runs
  in seconds on a CPU and needs no files: tests and examples use it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

ConfigT = TypeVar("ConfigT")

#: Version of the checkpoint/config format written by this library.
FORMAT_VERSION = 1

#: Parts a checkpoint can carry in full (``HonestFaceConfig.bundled``), with the key prefix
#: of their tensors in the checkpoint.
BUNDLED_PARTS: dict[str, str] = {
    "unet": "unet",
    "vae": "vae",
    "vq": "vre.vq",
    "vgg": "ide.feature_extractor.vgg",
}

SD21_CONFIG_DIR = Path(__file__).resolve().parent / "loaders" / "configs" / "sd21-base"

#: UNet modules that carry LoRA in the OSDFace release: every ``nn.Linear`` / ``nn.Conv2d``
#: whose name *ends with* one of these patterns after a dot, peft's rule (attention
#: projections, feed-forward layers, transformer in/out projections, the ResNet and
#: resampling convolutions and ``conv_out``; not ``conv_in``, the time embedding or the
#: norms): 257 modules on SD 2.1-base. See :func:`honestface.models.restorer.lora_module_names`.
#: A release file with another set decides for itself (``load_osdface(strict=False)``).
OSDFACE_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv", "conv1", "conv2", "conv_shortcut", "conv_out",
)


def read_sd21_config(part: str) -> dict:
    """The shipped SD 2.1-base diffusers config of ``part`` ("unet", "vae" or "scheduler")."""
    names = {"unet": "unet/config.json", "vae": "vae/config.json",
             "scheduler": "scheduler/scheduler_config.json"}
    if part not in names:
        raise ConfigError(f"unknown SD 2.1-base config part '{part}'; known: {sorted(names)}")
    path = SD21_CONFIG_DIR / names[part]
    if not path.is_file():
        raise ConfigError(f"the packaged SD 2.1-base config is missing: {path}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclass
class VREConfig:
    """Visual representation embedder: DAEFR/OSDFace VQ encoder + token projection (Eq. 7).

    The encoder is a taming-style VQGAN encoder; with the defaults a 512x512 input gives a
    16x16 grid of ``z_channels`` features, each matched to the nearest of
    ``codebook_size`` codes. The ``num_tokens`` most confident distinct codes form
    ``p_L`` after the projection ``embed_dim -> projection_hidden -> token_dim``.
    """

    in_channels: int = 3
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2, 4, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    resolution: int = 512  # encoder input size; inputs are resized (bilinear) to it
    z_channels: int = 512
    embed_dim: int = 512  # code dimension (quant_conv output)
    codebook_size: int = 1024
    norm_groups: int = 32
    num_tokens: int = 77
    projection_hidden: int = 256
    #: The released OSDFace weights were trained on inputs normalised twice: the [-1, 1]
    #: image is resized to ``resolution`` and mapped again by ``(x - 0.5) / 0.5``, so the
    #: encoder sees values in [-3, 1]. Keep True for OSDFace/HonestFace weights; set False
    #: only for an encoder trained on plain [-1, 1] inputs.
    double_normalization: bool = True


@dataclass
class IDEConfig:
    """Identity embedder: facial feature extractor (FFE) + face identity encoder (FIE)."""

    identity_dim: int = 512  # embedding size of the identity backend (ArcFace: 512)
    num_feature_tokens: int = 4  # n1: colour + structure tokens for both eyes
    num_identity_tokens: int = 7  # n2
    #: Eye patch: box around landmarks 36-41 / 42-47, grown by ``eye_margin`` times the
    #: eye width on every side and made square, resized to ``eye_patch_size``.
    eye_patch_size: int = 64
    eye_margin: float = 0.5
    #: VGG16 stages (0-4: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3). The paper's
    #: "layer 0" / "layer 2" are read as stage indices: colour from relu1_2 (64 ch),
    #: structure from relu3_3 (256 ch).
    color_stage: int = 0
    structure_stage: int = 2
    structure_pool: int = 4  # structure features are pooled to pool x pool before the head
    feature_dim: int = 256  # size of each of the 4 eye embeddings before the joint projection
    vgg_file: str = "vgg16-397923af.pth"  # torchvision's VGG16 file, in <models>/honestface
    pool_heads: int = 4  # attention heads of the FIE pooling
    #: Landmarks used by the A-LD reference choice (Eq. 6): "eyes", "mouth", "all".
    selection_subset: str = "eyes"
    #: The IDE's two branches (paper Table 3c ablates them): the facial feature extractor
    #: (``p_F``, eye patches through VGG16) and the face identity encoder (``p_I``,
    #: recogniser embeddings). A branch switched off is not built, gives no tokens (the VRE
    #: keeps their places in the prompt) and needs no files (no VGG16 without the FFE).
    #: Both off is no IDE at all: that is ``fusion.name: vre_only``.
    use_ffe: bool = True
    use_fie: bool = True
    #: Subtract a stored mean embedding (``ide.identity_encoder.identity_center``, set from
    #: the training data) before normalising. Recognisers whose raw embeddings share a
    #: large common component (dlib's descriptor: cosine ~0.8 between different people)
    #: only tell people apart after centring.
    center_identity: bool = False


@dataclass
class FusionConfig:
    """How ``p_F``, ``p_I``, ``p_L`` become the prompt (see :mod:`honestface.models.fusion`)."""

    name: str = "concat"
    num_tokens: int = 77


@dataclass
class LoRAConfig:
    """LoRA adapter of the UNet (paper Sec. 4.1: rank 16, alpha 16).

    ``rank: 0`` means no adapter: only allowed when the UNet is bundled (trained in full
    and stored in the checkpoint, see ``HonestFaceConfig.bundled``).
    """

    rank: int = 16
    alpha: float = 16.0
    target_modules: tuple[str, ...] = OSDFACE_LORA_TARGETS


@dataclass
class DiffusionConfig:
    """Constants of the one-step update (Eq. 3) and SD 2.1-base's training schedule."""

    timestep: int = 399
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    #: "mode": the VAE posterior's mode (deterministic); "sample": a seeded sample.
    latent_mode: str = "mode"


def _tiny_unet_config() -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 32,
        "attention_head_dim": [2, 4],
        "norm_num_groups": 8,
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def _tiny_vae_config() -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    }


@dataclass
class FidelityConfig:
    """The automatic-fidelity estimator (:mod:`honestface.models.fidelity`; not in the paper).

    Attributes:
        enabled: the model has one (then the pipeline blends ``x + w (R - x)`` by default).
        resolution: side (px) at which it looks at the input and the restoration (the
            model's size: at half of it a clean and a soft face look alike).
        channels: hidden units of its perceptron.
    """

    enabled: bool = False
    resolution: int = 128
    channels: int = 16


@dataclass
class HonestFaceConfig:
    """Everything needed to build :class:`honestface.models.HonestFaceModel`.

    ``token_dim`` (k) must equal the UNet's ``cross_attention_dim``. ``unet`` and ``vae``
    are diffusers config dicts (``UNet2DConditionModel.from_config`` /
    ``AutoencoderKL.from_config``); weights come from the loaders.
    """

    preset: str = "sd21"
    image_size: int = 512
    token_dim: int = 1024
    vre: VREConfig = field(default_factory=VREConfig)
    ide: IDEConfig = field(default_factory=IDEConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    identity_backend: str = "arcface-onnx"
    #: Colour correction after decoding: "none", "wavelet" or "adain" (w.r.t. the LQ input).
    color_correction: str = "none"
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    #: Parts whose complete weights are this model's own: trained with it and stored in
    #: its checkpoint instead of coming from their own files (SD 2.1-base, the OSDFace VQ
    #: encoder, torchvision's VGG16). Any of ``BUNDLED_PARTS``: "unet", "vae", "vq", "vgg".
    #: Small models trained from scratch bundle everything; the paper's model bundles nothing.
    bundled: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION

    # ----------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str) -> "HonestFaceConfig":
        """``"sd21"`` (the real model) or ``"tiny"`` (CPU tests)."""
        if name == "sd21":
            config = cls(preset="sd21", unet=read_sd21_config("unet"), vae=read_sd21_config("vae"))
            scheduler = read_sd21_config("scheduler")
            config.diffusion.beta_start = float(scheduler.get("beta_start", 0.00085))
            config.diffusion.beta_end = float(scheduler.get("beta_end", 0.012))
            config.diffusion.beta_schedule = str(scheduler.get("beta_schedule", "scaled_linear"))
            config.diffusion.num_train_timesteps = int(scheduler.get("num_train_timesteps", 1000))
            config.token_dim = int(config.unet["cross_attention_dim"])
            config.validate()
            return config
        if name == "tiny":
            config = cls(
                preset="tiny",
                image_size=64,
                token_dim=32,
                vre=VREConfig(base_channels=16, channel_multipliers=(1, 2, 2), resolution=64,
                              z_channels=32, embed_dim=32, codebook_size=128, norm_groups=8,
                              projection_hidden=16),
                ide=IDEConfig(identity_dim=16, eye_patch_size=32, structure_pool=2, feature_dim=16,
                              pool_heads=2),
                lora=LoRAConfig(rank=4, alpha=4.0),
                identity_backend="test",
                unet=_tiny_unet_config(),
                vae=_tiny_vae_config(),
            )
            config.validate()
            return config
        raise ConfigError(f"unknown preset '{name}'; known: sd21, tiny")

    # ------------------------------------------------------------- validation
    def validate(self) -> "HonestFaceConfig":
        """Check the sizes fit together; raises :class:`ConfigError`."""
        if self.unet and int(self.unet.get("cross_attention_dim", self.token_dim)) != self.token_dim:
            raise ConfigError(f"token_dim {self.token_dim} != UNet cross_attention_dim "
                              f"{self.unet.get('cross_attention_dim')}")
        downsample = 2 ** (len(self.vre.channel_multipliers) - 1)
        if self.vre.resolution % downsample:
            raise ConfigError(f"VRE resolution {self.vre.resolution} is not divisible by {downsample}")
        grid = (self.vre.resolution // downsample) ** 2
        if self.vre.num_tokens > grid:
            raise ConfigError(f"VRE asks for {self.vre.num_tokens} tokens but the grid has {grid} positions")
        if not 0 <= self.diffusion.timestep < self.diffusion.num_train_timesteps:
            raise ConfigError(f"timestep {self.diffusion.timestep} outside [0, {self.diffusion.num_train_timesteps})")
        if self.diffusion.latent_mode not in ("mode", "sample"):
            raise ConfigError(f"latent_mode must be 'mode' or 'sample', got '{self.diffusion.latent_mode}'")
        if self.color_correction not in ("none", "wavelet", "adain"):
            raise ConfigError(f"color_correction must be none, wavelet or adain, got '{self.color_correction}'")
        if self.fusion.num_tokens != self.vre.num_tokens:
            raise ConfigError(f"fusion.num_tokens {self.fusion.num_tokens} != vre.num_tokens {self.vre.num_tokens}")
        for stage in (self.ide.color_stage, self.ide.structure_stage):
            if not 0 <= stage <= 4:
                raise ConfigError(f"VGG16 stage {stage} outside 0..4")
        if not (self.ide.use_ffe or self.ide.use_fie):
            raise ConfigError("ide.use_ffe and ide.use_fie are both off: for a model without an IDE "
                              "set fusion.name to vre_only instead")
        if self.ide.center_identity and not self.ide.use_fie:
            raise ConfigError("ide.center_identity needs the face identity encoder: set ide.use_fie to true")
        if "vgg" in self.bundled and not self.ide.use_ffe:
            raise ConfigError("a bundled VGG16 belongs to the facial feature extractor: set ide.use_ffe "
                              "to true or remove 'vgg' from bundled")
        unknown = sorted(set(self.bundled) - set(BUNDLED_PARTS))
        if unknown:
            raise ConfigError(f"unknown bundled part(s) {unknown}; known: {sorted(BUNDLED_PARTS)}")
        if self.lora.rank < 0:
            raise ConfigError(f"LoRA rank must be >= 0, got {self.lora.rank}")
        if self.lora.rank == 0 and "unet" not in self.bundled:
            raise ConfigError("LoRA rank 0 (no adapter) needs the UNet to be bundled: "
                              "nothing of a pretrained UNet would be trained")
        if self.lora.rank > 0 and "unet" in self.bundled:
            raise ConfigError("a bundled UNet is trained in full: set lora.rank to 0")
        if ("unet" in self.bundled or "vae" in self.bundled) and not (self.unet and self.vae):
            raise ConfigError("a bundled UNet/VAE needs the 'unet' and 'vae' configs")
        return self

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HonestFaceConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a dict, got {type(data).__name__}")
        data = copy.deepcopy(data)
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ConfigError(f"config format version {version} is newer than this library ({FORMAT_VERSION})")
        sections = {name: section_reader(section, f"config section '{name}'") for name, section in
                    (("vre", VREConfig), ("ide", IDEConfig), ("fusion", FusionConfig), ("lora", LoRAConfig),
                     ("diffusion", DiffusionConfig), ("fidelity", FidelityConfig))}
        return strict_from_dict(cls, data, "config", sections).validate()

    @classmethod
    def from_json(cls, text: str) -> "HonestFaceConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config is not valid JSON: {error}") from error
        return cls.from_dict(data)


def strict_from_dict(cls: type[ConfigT], data: Mapping[str, Any] | None, what: str,
                     sections: Mapping[str, Callable[[Any], Any]] | None = None) -> ConfigT:
    """A config dataclass from a plain dict (JSON, YAML), strictly.

    Unknown keys raise :class:`ConfigError` naming them and the known ones; ``None`` gives
    the defaults; a list becomes a tuple where the field's default is a tuple (JSON has no
    tuples); ``sections`` builds nested configs from their values (``{"lora": ...}``).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = [key for key in data if key not in known]
    if unknown:
        names = ", ".join(repr(str(key)) for key in unknown)
        raise ConfigError(f"unknown key {names} in {what}; known: {', '.join(sorted(known))}")
    sections = sections or {}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            value = sections[key](value)
        elif isinstance(value, list) and isinstance(_field_default(known[key]), tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _field_default(item) -> Any:
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:
        return item.default_factory()
    return None


def section_reader(section_cls: type, what: str) -> Callable[[Any], Any]:
    """``value -> section_cls`` for :func:`strict_from_dict`'s ``sections``."""
    return lambda value: strict_from_dict(section_cls, value, what)
