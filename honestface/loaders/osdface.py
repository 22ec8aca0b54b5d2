"""The OSDFace release folder: read (and, for tests and tiny model folders, write) it.

Stage-1 VRE training (``training/train_autoencoder.py``) writes ``associate_2.ckpt`` alone
(:func:`save_vq_checkpoint`), in the same format; a folder holding it is read like the
release's for the VQ encoder.

A release folder holds three files (formats as published):

- ``pytorch_lora_weights.safetensors``: UNet LoRA, keys ``unet.<module>.lora_A.weight`` /
  ``unet.<module>.lora_B.weight`` (rank 16, alpha 16; linear and 4-D conv layers);
- ``embedding_change_weights.pth``: the VRE projection, a plain ``torch.save`` state dict
  with keys ``conv1.weight`` (256, 512, 1), ``conv1.bias``, ``conv2.weight`` (1024, 256, 1),
  ``conv2.bias``;
- ``associate_2.ckpt``: a Lightning checkpoint; under ``["state_dict"]`` the VQ encoder is
  ``vqvae_LQ.encoder.*``, ``vqvae_LQ.quant_conv.*``, ``vqvae_LQ.quantize.embedding.weight``.
  Everything else (``vqvae.*``, ``vqvae_LQ.decoder.*``, losses, ...) is ignored.

Every load counts the keys it used and ignored (logged and returned as a
:class:`LoadReport`). A key the model needs that the file lacks, a key with the wrong
shape, or a LoRA key that names no UNet module raises :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..config import LoRAConfig
from ..errors import CheckpointError, MissingModelFileError
from ..paths import find_model_file
from .reports import FileReport, LoadReport, load_state_into
from .safe_pickle import load_tensors

logger = logging.getLogger("honestface.loaders")

LORA_FILE = "pytorch_lora_weights.safetensors"
PROJECTION_FILE = "embedding_change_weights.pth"
VQ_FILE = "associate_2.ckpt"
OSDFACE_FILES = (LORA_FILE, PROJECTION_FILE, VQ_FILE)
VQ_PREFIX = "vqvae_LQ."
#: The HQ dictionary's autoencoder in the same checkpoint (DAEFR's ``vqvae.*``); unused by the VRE.
HQ_PREFIX = "vqvae."
#: Default folder name of the release under ``<models>/honestface``.
DEFAULT_FOLDER = "OSDFace"


def _log(report: FileReport) -> FileReport:
    logger.info(report.line())
    return report


def _ignored(state: dict, used: set[str]) -> tuple[int, list[str]]:
    rest = sorted(k for k in state if k not in used)
    return len(rest), rest[:3]


def load_vq_encoder(vre, path: str | Path) -> FileReport:
    """``vqvae_LQ.{encoder,quant_conv,quantize}`` of ``associate_2.ckpt`` into ``vre.vq``."""
    path = Path(path)
    state = load_tensors(path, "OSDFace VQ encoder (associate_2.ckpt)")
    own = vre.vq.state_dict()
    wanted = {k[len(VQ_PREFIX):]: v for k, v in state.items()
              if k.startswith(VQ_PREFIX) and k[len(VQ_PREFIX):] in own}
    if not wanted:
        raise CheckpointError(path, "no 'vqvae_LQ.encoder/quant_conv/quantize' keys",
                              "the OSDFace VQ checkpoint associate_2.ckpt")
    loaded = load_state_into(vre.vq, wanted, path, "VQ encoder")
    ignored, examples = _ignored(state, {VQ_PREFIX + k for k in wanted})
    return _log(FileReport(path, loaded, ignored, examples))


def load_projection(vre, path: str | Path) -> FileReport:
    """``conv1.*`` / ``conv2.*`` of ``embedding_change_weights.pth`` into ``vre.projection``."""
    path = Path(path)
    state = load_tensors(path, "OSDFace VRE projection (embedding_change_weights.pth)", state_key=None)
    loaded = load_state_into(vre.projection, state, path, "VRE projection")
    ignored, examples = _ignored(state, set(vre.projection.state_dict()))
    return _log(FileReport(path, loaded, ignored, examples))


def load_lora(restorer, path: str | Path, config: LoRAConfig, strict: bool = True) -> FileReport:
    """UNet LoRA in the diffusers/OSDFace format into ``restorer``.

    Without an adapter on the UNet yet, one is added on exactly the file's modules (rank
    from the file, alpha from ``config``). With ``strict`` those modules must be the ones
    ``config.target_modules`` selects; without, a difference is logged as a warning (the
    file's modules must still be linear/conv layers of the UNet, each with both factors)
    and the adapter's config names the file's modules, so a checkpoint saved from this
    model rebuilds the same adapter. With an adapter already present, the file must match
    it key for key.
    """
    from ..models.restorer import lora_module_names
    from .lora import LORA_KEY_PREFIX, lora_targets_from_state

    path = Path(path)
    state = load_tensors(path, "LoRA weights")
    lora = {k: v for k, v in state.items() if k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")}
    if not lora:
        raise CheckpointError(path, "no LoRA keys", "keys unet.<module>.lora_A.weight / lora_B.weight")
    not_unet = [k for k in lora if not k.startswith(LORA_KEY_PREFIX)]
    if not_unet:
        raise CheckpointError(path, f"{len(not_unet)} LoRA keys outside the UNet, e.g. {not_unet[:2]}",
                              "keys starting with 'unet.'")
    modules, rank = lora_targets_from_state(lora)
    if restorer.lora_config is None:
        available = dict(restorer.unet.named_modules())
        unknown = [m for m in modules if type(available.get(m)) not in (nn.Linear, nn.Conv2d)]
        if unknown:
            raise CheckpointError(path, f"{len(unknown)} LoRA modules are not linear/conv layers of this UNet, "
                                  f"e.g. {unknown[:3]}", "an SD 2.1-base UNet LoRA")
        expected = set(lora_module_names(restorer.unet, config.target_modules))
        missing = sorted(expected - set(modules))
        extra = sorted(set(modules) - expected)
        if missing or extra:
            problem = (f"LoRA covers {len(modules)} modules: {len(missing)} expected ones missing "
                       f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})")
            if strict:
                raise CheckpointError(path, problem, f"LoRA on the {len(expected)} UNet modules matching "
                                      f"{list(config.target_modules)} (or load with strict=False)")
            logger.warning("%s: %s; using the file's modules", path.name, problem)
            # full module names select exactly these modules under peft's suffix rule
            config = replace(config, target_modules=tuple(modules))
        restorer.add_lora(replace(config, rank=rank), target_modules=modules)
    loaded = restorer.load_lora_state_dict(lora, source=str(path))
    ignored, examples = _ignored(state, set(lora))
    return _log(FileReport(path, loaded, ignored, examples))


def find_osdface_folder(name: str | Path = DEFAULT_FOLDER, models_dir: str | Path | None = None,
                        files: tuple[str, ...] = OSDFACE_FILES) -> Path:
    """The release folder (a path, or a name under ``<models>/honestface``) holding ``files``.

    ``files=(VQ_FILE,)`` accepts a folder with the VQ checkpoint alone, such as the output
    folder of stage-1 VRE training (``training/train_autoencoder.py``).
    """
    folder = find_model_file("honestface", name, models_dir, what="OSDFace release folder")
    if not folder.is_dir():
        raise CheckpointError(folder, "is not a folder", f"a folder holding {', '.join(files)}")
    for filename in files:
        if not (folder / filename).is_file():
            raise MissingModelFileError(filename, folder, "OSDFace release file")
    return folder


def load_osdface(model, folder: str | Path, strict: bool = True, parts=("vq", "projection", "lora")) -> LoadReport:
    """Load an OSDFace release folder into a :class:`~honestface.models.HonestFaceModel`.

    ``parts`` picks the files (a HonestFace checkpoint brings its own projection and LoRA
    and needs only ``("vq",)``). With ``strict=False`` the LoRA file decides which UNet
    modules carry the adapter and its rank; ``model.config.lora`` is updated to match.
    """
    folder = Path(folder)
    report = LoadReport()
    if "vq" in parts:
        report.files.append(load_vq_encoder(model.vre, _need(folder, VQ_FILE)))
    if "projection" in parts:
        report.files.append(load_projection(model.vre, _need(folder, PROJECTION_FILE)))
    if "lora" in parts:
        report.files.append(load_lora(model.restorer, _need(folder, LORA_FILE), model.config.lora, strict))
        model.config.lora = model.restorer.lora_config
    return report


def _need(folder: Path, filename: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise MissingModelFileError(filename, folder, "OSDFace release file")
    return path


def save_osdface(model, folder: str | Path, hyper_parameters: object | None = None,
                 extra_state: dict[str, torch.Tensor] | None = None) -> dict[str, Path]:
    """Write ``model``'s LoRA, VRE projection and VQ encoder as an OSDFace release folder.

    The VQ checkpoint is a Lightning-style dict (``epoch``, ``global_step``,
    ``state_dict`` with ``vqvae_LQ.*`` keys, ``hyper_parameters``); ``extra_state`` adds
    keys the loader must ignore (e.g. ``vqvae_LQ.decoder.*``). Files are written exactly
    in the released formats, so :func:`load_osdface` reads them back.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora = {k: v.contiguous() for k, v in model.restorer.lora_state_dict().items()}
    if not lora:
        raise CheckpointError(folder, "the model has no LoRA adapter to save", "a model built with lora=True")
    save_file(lora, str(folder / LORA_FILE), metadata={"format": "pt"})
    projection = {k: v.detach().clone() for k, v in model.vre.projection.state_dict().items()}
    torch.save(projection, folder / PROJECTION_FILE)
    save_vq_checkpoint(folder / VQ_FILE, lq=model.vre.vq, extra_state=extra_state, hyper_parameters=hyper_parameters)
    return {"lora": folder / LORA_FILE, "projection": folder / PROJECTION_FILE, "vq": folder / VQ_FILE}


def save_vq_checkpoint(path: str | Path, lq: nn.Module | None = None, hq: nn.Module | None = None,
                       extra_state: dict[str, torch.Tensor] | None = None, epoch: int = 0, global_step: int = 0,
                       hyper_parameters: object | None = None) -> Path:
    """Write VQ dictionaries as a Lightning-style checkpoint in the format of ``associate_2.ckpt``.

    ``state_dict`` holds ``vqvae_LQ.<key>`` for every key of ``lq`` (the VRE's
    ``encoder``/``quant_conv``/``quantize``, and a decoder if ``lq`` has one) and
    ``vqvae.<key>`` for ``hq`` (the HQ dictionary), plus ``extra_state`` as given; beside
    it ``epoch``, ``global_step``, ``hyper_parameters`` (plain containers only) and empty
    optimiser lists. :func:`load_vq_encoder` reads the ``vqvae_LQ`` part. Written to a
    temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    state: dict[str, torch.Tensor] = {}
    for prefix, module in ((HQ_PREFIX, hq), (VQ_PREFIX, lq)):
        if module is not None:
            state.update({prefix + k: v.detach().cpu().clone() for k, v in module.state_dict().items()})
    state.update({k: v.detach().cpu().clone() for k, v in (extra_state or {}).items()})
    if not state:
        raise CheckpointError(path, "nothing to write", "an LQ and/or HQ VQ module")
    checkpoint = {
        "epoch": int(epoch),
        "global_step": int(global_step),
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "optimizer_states": [],
        "lr_schedulers": [],
        "hyper_parameters": hyper_parameters if hyper_parameters is not None else {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(checkpoint, tmp)
    tmp.replace(path)
    return path


def load_vq_dictionary(autoencoder: nn.Module, path: str | Path, prefix: str = HQ_PREFIX) -> FileReport:
    """Every key of ``autoencoder`` (a :class:`~honestface.models.vq_autoencoder.VQAutoencoder`)
    from the ``prefix`` part of a VQ checkpoint (``vqvae.`` = the HQ dictionary, ``vqvae_LQ.``
    = the LQ one, decoder included)."""
    path = Path(path)
    state = load_tensors(path, "VQ dictionary checkpoint")
    wanted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not wanted:
        raise CheckpointError(path, f"no '{prefix}*' keys",
                              f"a VQ checkpoint with the {'HQ' if prefix == HQ_PREFIX else 'LQ'} dictionary "
                              "(the output of training/train_autoencoder.py)")
    loaded = load_state_into(autoencoder, wanted, path, f"VQ dictionary '{prefix}'")
    ignored, examples = _ignored(state, {prefix + k for k in autoencoder.state_dict()})
    return _log(FileReport(path, loaded, ignored, examples))
