"""HonestFace checkpoints: one ``.safetensors`` file with the trainable weights.

Contents:

- tensors: the UNet LoRA (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, the same
  keys as the OSDFace release), the VRE projection (``vre.projection.conv1.*``, ...),
  the IDE heads (``ide.feature_extractor.*_head.*``, ``ide.feature_extractor.projection.*``,
  ``ide.identity_encoder.*``) and the fusion's parameters (none for ``"concat"``);
- metadata (strings): ``format`` = ``"honestface"``, ``format_version``, ``config`` (the
  full :class:`~honestface.config.HonestFaceConfig` as JSON), and for quick inspection
  ``image_size``, ``token_dim``, ``identity_backend``, ``identity_dim``, ``lora_rank``,
  ``lora_alpha``.

Frozen parts (SD 2.1-base, the VQ encoder of ``associate_2.ckpt``, VGG16) are not
stored; they come from their own files, except the parts the config bundles
(``config.bundled``): their complete weights are stored under ``unet.*``, ``vae.*``,
``vre.vq.*`` and ``ide.feature_extractor.vgg.*``, and such a checkpoint needs no other
file for them. Weights may be stored in float16 (``save_checkpoint(dtype=...)``); they
are cast to the model's dtype on loading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import FORMAT_VERSION, HonestFaceConfig
from ..errors import CheckpointError, ConfigError, MissingModelFileError
from .reports import FileReport

logger = logging.getLogger("honestface.loaders")

CHECKPOINT_FORMAT = "honestface"
EXPECTED = "a HonestFace checkpoint (.safetensors with 'format': 'honestface' metadata)"


def checkpoint_metadata(config: HonestFaceConfig) -> dict[str, str]:
    """The metadata strings stored with a checkpoint of ``config``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": config.to_json(),
        "image_size": str(config.image_size),
        "token_dim": str(config.token_dim),
        "identity_backend": config.identity_backend,
        "identity_dim": str(config.ide.identity_dim),
        "lora_rank": str(config.lora.rank),
        "lora_alpha": str(config.lora.alpha),
    }


def save_checkpoint(model, path: str | Path, extra_metadata: dict[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model.trainable_state_dict()`` and its config to ``path`` (.safetensors).

    ``dtype`` (e.g. ``torch.float16``) stores the floating-point tensors in that type:
    half the size, for shipping small models.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(path, "wrong file suffix", "a .safetensors path")
    state = {}
    for key, value in model.trainable_state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    metadata = checkpoint_metadata(model.config)
    if dtype is not None:
        metadata["dtype"] = str(dtype).replace("torch.", "")
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a HonestFace checkpoint, checked for format and version."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(path.name, path.parent, "HonestFace checkpoint")
    if path.suffix != ".safetensors":
        raise CheckpointError(path, f"'{path.suffix}' is not a HonestFace checkpoint file", EXPECTED)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(path, f"unreadable or truncated ({error})", EXPECTED) from error
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise CheckpointError(path, "has no HonestFace metadata (an OSDFace LoRA file or another model?)", EXPECTED)
    version = int(metadata.get("format_version", "0") or 0)
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(path, f"format version {version}", f"version 1..{FORMAT_VERSION}")
    return metadata


def config_from_checkpoint(path: str | Path) -> HonestFaceConfig:
    """The :class:`HonestFaceConfig` stored in a checkpoint."""
    metadata = read_checkpoint_metadata(path)
    try:
        return HonestFaceConfig.from_json(metadata["config"])
    except ConfigError as error:
        raise CheckpointError(path, f"stored config is invalid: {error}", EXPECTED) from error


def read_checkpoint_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (its metadata is read by :func:`config_from_checkpoint`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(path, f"unreadable or truncated ({error})", EXPECTED) from error


def read_checkpoint(path: str | Path) -> tuple[HonestFaceConfig, dict[str, torch.Tensor]]:
    """(config, tensors) of a checkpoint."""
    return config_from_checkpoint(path), read_checkpoint_tensors(path)


def _same_architecture(stored: HonestFaceConfig, current: HonestFaceConfig) -> list[str]:
    differences = []
    for name in ("image_size", "token_dim"):
        if getattr(stored, name) != getattr(current, name):
            differences.append(f"{name} {getattr(stored, name)} != {getattr(current, name)}")
    for section in ("ide", "fusion", "lora"):
        a, b = getattr(stored, section), getattr(current, section)
        if a != b:
            differences.append(f"{section} {a} != {b}")
    if stored.vre.embed_dim != current.vre.embed_dim or stored.vre.projection_hidden != current.vre.projection_hidden:
        differences.append("VRE projection sizes differ")
    if tuple(stored.bundled) != tuple(current.bundled):
        differences.append(f"bundled parts {list(stored.bundled)} != {list(current.bundled)}")
    for part in ("unet", "vae"):
        if part in stored.bundled and _plain(getattr(stored, part)) != _plain(getattr(current, part)):
            differences.append(f"the bundled {part.upper()} configs differ")
    if "vq" in stored.bundled and stored.vre != current.vre:
        differences.append("the bundled VQ encoder configs differ")
    return differences


def _plain(diffusers_config: dict) -> dict:
    """A diffusers config without its private ``_*`` entries (class name, versions)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(diffusers_config).items()
            if not k.startswith("_")}


def load_checkpoint(model, path: str | Path, stored: HonestFaceConfig | None = None) -> FileReport:
    """Load a checkpoint's trainable weights into ``model`` (adds the LoRA adapter if absent).

    ``stored`` is the checkpoint's config when the caller has read it already (it is then
    not read again).

    Raises :class:`CheckpointError` when the stored config does not describe ``model``,
    or on missing, unexpected or mis-shaped keys.
    """
    path = Path(path)
    if stored is None:
        stored, state = read_checkpoint(path)
    else:
        state = read_checkpoint_tensors(path)
    differences = _same_architecture(stored, model.config)
    if differences:
        raise CheckpointError(path, "was trained for another configuration: " + "; ".join(differences),
                              "a checkpoint of this model configuration")
    if model.restorer.lora_config is None and stored.lora.rank > 0:
        model.restorer.add_lora(stored.lora)
    loaded = model.load_trainable_state_dict(state, source=str(path))
    report = FileReport(path, loaded, 0)
    logger.info(report.line())
    return report


def build_model_from_checkpoint(path: str | Path, unet, vae, vgg_state_dict=None):
    """A :class:`~honestface.models.HonestFaceModel` built from the checkpoint's config.

    The VQ encoder stays random until :func:`honestface.loaders.osdface.load_vq_encoder`.
    """
    from ..models.honestface import HonestFaceModel

    config = config_from_checkpoint(path)
    model = HonestFaceModel(config, unet, vae, vgg_state_dict=vgg_state_dict, lora=False)
    load_checkpoint(model, path, stored=config)
    return model


def describe_checkpoint(path: str | Path) -> str:
    """One line per metadata field (for ``honestface`` CLI listings)."""
    metadata = read_checkpoint_metadata(path)
    shown = {k: v for k, v in metadata.items() if k != "config"}
    return json.dumps(shown, sort_keys=True)
