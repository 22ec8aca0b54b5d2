"""Build a :class:`~honestface.models.HonestFaceModel` from files: resolve -> load -> report.

The one place that turns model files into a model, for the library
(:func:`honestface.pipeline.load_model`), the CLI, the ComfyUI loader node, the trainer and
the held-out benchmark:

1. :func:`resolve_model_files` finds every file once (names are looked up in
   ``<models>/honestface``, or by the caller's ``find``) and reads the checkpoint's config
   once, into a :class:`ModelFiles`;
2. :func:`build_model` loads them, without reading any config again;
3. the key counts of every file are logged and kept in ``model.load_report`` (lines).

What comes from where:

- a HonestFace checkpoint: its config and trainable weights. The parts it does not bundle
  (``config.bundled``) come from their own files: UNet/VAE from SD 2.1-base, the frozen VQ
  encoder from an OSDFace release folder, VGG16 from ``vgg`` / ``config.ide.vgg_file``;
- an OSDFace release folder alone: OSDFace on SD 2.1-base (VRE-only prompt, references
  ignored), with the preset whose ``token_dim`` fits the UNet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import HonestFaceConfig
from ..errors import ConfigError, MissingModelFileError

logger = logging.getLogger("honestface.loaders")

#: ``find(name, what) -> Path``: resolves a file or folder name of ``<models>/honestface``.
Finder = Callable[[str | Path, str], Path]
#: A model config made from the UNet's and the VAE's diffusers configs (when it is not in a checkpoint).
ConfigForBase = Callable[[dict, dict], HonestFaceConfig]

VQ_FILE = "associate_2.ckpt"


@dataclass
class ModelFiles:
    """Every file a model is built from, resolved, and the model config.

    Attributes:
        config: the model config, or a function of the UNet's and VAE's configs (known only
            once SD 2.1-base is loaded: OSDFace alone, a fresh training run).
        checkpoint: a HonestFace checkpoint (its trainable weights), or None.
        sd21: SD 2.1-base (diffusers folder or single file, as :func:`~honestface.loaders.sd21.load_sd21`
            takes it), or None when the config bundles its UNet and VAE.
        osdface_dir: an OSDFace release folder, or None.
        osdface_parts: what to load from it: ``("vq",)`` (the frozen VQ encoder) or all of
            ``("vq", "projection", "lora")``; the release's LoRA then decides which UNet
            modules carry an adapter (``strict=False``).
        vgg: torchvision VGG16 weights of the IDE, or None (bundled, or no IDE is run).
        models_dir: where names of SD 2.1-base files are looked up.
        accepts_references: False for OSDFace alone (its IDE is untrained).
    """

    config: HonestFaceConfig | ConfigForBase
    checkpoint: Path | None = None
    sd21: str | Path | None = None
    osdface_dir: Path | None = None
    osdface_parts: tuple[str, ...] = ("vq",)
    vgg: Path | None = None
    models_dir: str | Path | None = None
    accepts_references: bool = True


def library_finder(models_dir: str | Path | None) -> Finder:
    """Names in ``<models>/honestface`` (``models_dir`` or ``HONESTFACE_MODELS``), then the shipped models."""
    from ..paths import find_model_file

    return lambda name, what: find_model_file("honestface", name, models_dir, what=what)


def preset_for_unet(unet_config: dict, vae_config: dict | None = None) -> HonestFaceConfig:
    """The preset whose ``token_dim`` is the UNet's cross-attention width (``"sd21"``, ``"tiny"``)."""
    cross = int(unet_config["cross_attention_dim"])
    matching = [c for c in (HonestFaceConfig.from_preset(name) for name in ("sd21", "tiny")) if c.token_dim == cross]
    if not matching:
        raise ConfigError(f"no preset fits a UNet with cross_attention_dim {cross}; pass config=")
    return matching[0]


def resolve_model_files(sd21: str | Path | None = None, checkpoint: str | Path | None = None,
                        osdface_dir: str | Path | None = None, models_dir: str | Path | None = None,
                        vgg: str | Path | None = None, config: HonestFaceConfig | str | None = None,
                        find: Finder | None = None, require_vq: bool = True) -> ModelFiles:
    """Resolve the files of a HonestFace checkpoint, or of an OSDFace release alone.

    ``osdface_dir`` is only looked up when the checkpoint needs it (its VQ encoder is not
    bundled); ``sd21`` is ignored (logged) when the checkpoint bundles its UNet and VAE.
    ``config`` (a preset name or config) is for an OSDFace release alone. ``require_vq=False``
    lets a checkpoint go without its OSDFace folder (the VQ encoder stays random: the trainer's
    tests).
    """
    find = find or library_finder(models_dir)
    if checkpoint is None and osdface_dir is None:
        raise ConfigError("give a HonestFace checkpoint and/or an OSDFace release folder")
    if checkpoint is None:
        if sd21 is None:
            raise ConfigError("OSDFace weights are a LoRA on Stable Diffusion 2.1-base: give the SD 2.1-base "
                              "diffusers folder or single file as well (--sd / sd21=)")
        model_config = HonestFaceConfig.from_preset(config) if isinstance(config, str) else config
        return ModelFiles(config=model_config or preset_for_unet, sd21=sd21,
                          osdface_dir=find(osdface_dir, "OSDFace release folder"),
                          osdface_parts=("vq", "projection", "lora"), models_dir=models_dir, accepts_references=False)

    from .checkpoint import config_from_checkpoint

    checkpoint = find(checkpoint, "HonestFace checkpoint")
    model_config = config_from_checkpoint(checkpoint)  # the one read of the stored config
    bundled = set(model_config.bundled)
    if "vq" not in bundled and osdface_dir is None and require_vq:
        raise MissingModelFileError(VQ_FILE, "<models>/honestface/OSDFace", "OSDFace VQ encoder",
                                    "A HonestFace checkpoint uses the frozen VQ encoder of the OSDFace release: "
                                    "put the release folder in <models>/honestface.")
    if not {"unet", "vae"} <= bundled:
        if sd21 is None:
            raise ConfigError(f"{checkpoint.name} is a LoRA on Stable Diffusion 2.1-base: give the SD 2.1-base "
                              "diffusers folder or single file as well (--sd / sd21=)")
    elif sd21 is not None:
        logger.info("%s bundles its UNet and VAE: the SD 2.1-base file %s is not used", checkpoint.name, sd21)
        sd21 = None
    vgg_path = None
    if "vgg" not in bundled and model_config.ide.use_ffe:  # without the FFE there is no VGG16
        vgg_path = find(vgg if vgg is not None else model_config.ide.vgg_file,
                        "VGG16 weights of the facial feature extractor")
    osdface = None if "vq" in bundled or osdface_dir is None else find(osdface_dir, "OSDFace release folder")
    return ModelFiles(config=model_config, checkpoint=checkpoint, sd21=sd21, osdface_dir=osdface, vgg=vgg_path,
                      models_dir=models_dir)


def build_model(files: ModelFiles, merge_lora: bool = True):
    """Load :class:`ModelFiles` into a :class:`~honestface.models.HonestFaceModel`.

    ``merge_lora`` folds the LoRA into the UNet weights (faster inference; not for training).
    A checkpoint without SD 2.1-base bundles its UNet and VAE; an OSDFace folder is needed
    unless the VQ encoder is bundled (else it stays random, with a warning: tests only).
    """
    from ..models.honestface import HonestFaceModel, build_diffusers
    from ..models.vgg import load_vgg16_state_dict
    from .checkpoint import load_checkpoint
    from .osdface import load_osdface
    from .sd21 import load_sd21

    lines: list[str] = []
    config = files.config
    bundled = set(config.bundled) if isinstance(config, HonestFaceConfig) else set()
    unet = vae = None
    if bundled & {"unet", "vae"}:
        unet, vae = build_diffusers(config, seed=None)
    if files.sd21 is not None:
        sd = load_sd21(files.sd21, models_dir=files.models_dir)
        unet = unet if "unet" in bundled else sd.unet
        vae = vae if "vae" in bundled else sd.vae
        lines += sd.report.lines()  # already logged by the SD loader
    if not isinstance(config, HonestFaceConfig):
        config = config(dict(unet.config), dict(vae.config))
    vgg_state = None if files.vgg is None else load_vgg16_state_dict(files.vgg)
    model = HonestFaceModel(config, unet, vae, vgg_state_dict=vgg_state, lora=False)
    if files.osdface_dir is not None:
        # strict=False: the release's LoRA decides which UNet layers carry adapters (a
        # difference from config.lora.target_modules is logged, never silently dropped).
        lines += load_osdface(model, files.osdface_dir, strict=False, parts=files.osdface_parts).lines()
    elif "vq" not in config.bundled:
        logger.warning("no OSDFace release folder given: the VRE's frozen VQ encoder stays random")
    if files.checkpoint is not None:
        lines.append(load_checkpoint(model, files.checkpoint, stored=config).line())
    model.accepts_references = files.accepts_references
    if merge_lora and model.restorer.lora_config is not None:
        model.restorer.merge_lora()
    model.load_report = lines
    return model


def load_model(sd21: str | Path | None = None, checkpoint: str | Path | None = None,
               osdface_dir: str | Path | None = None, models_dir: str | Path | None = None,
               vgg: str | Path | None = None, merge_lora: bool = True,
               config: HonestFaceConfig | str | None = None):
    """:func:`resolve_model_files` then :func:`build_model` (see the module doc)."""
    files = resolve_model_files(sd21=sd21, checkpoint=checkpoint, osdface_dir=osdface_dir, models_dir=models_dir,
                                vgg=vgg, config=config)
    return build_model(files, merge_lora=merge_lora)
