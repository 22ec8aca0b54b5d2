"""Where model files live.

HonestFace uses ComfyUI's models layout everywhere, so one folder serves both the node
pack and the command line:

    <models>/honestface/            HonestFace checkpoints, OSDFace release folders, VGG16
    <models>/diffusers/<name>/      SD 2.1-base as a diffusers folder
    <models>/checkpoints/           SD 2.1-base as one .safetensors / .ckpt file
    <models>/insightface/models/<pack>/   face recognisers and detectors: insightface ONNX
                                    packs (buffalo_l, antelopev2), AdaFace .ckpt
                                    (``adaface/``), arcface_torch .pth (``arcface_torch/``)
    <models>/face_alignment/        FAN landmark weights
    <models>/dlib/                  dlib .dat models (optional: the pip package ships them)
    <models>/pyiqa/                 image-quality metric weights, laid out like the torch hub
                                    folder (pyiqa/, checkpoints/, clip/)
    <models>/metric_weights/        the networks of VQFR's evaluation scripts (``evaluate
                                    --protocol vqfr``): ArcFace ``resnet18_110.pth``, AWing
                                    ``alignment_WFLW_4HG.pth``; VQFR's own folder name

Face recognisers sit where ComfyUI's face packs keep theirs (ReActor, InstantID, PuLID and
cubiq's FaceAnalysis read ``models/insightface``; FaceAnalysis and LivePortrait read dlib
files from ``models/dlib``), never in ``facerestore_models/``, whose files face-restore
packs list as restorers. Files still found in ``facerestore_models/``
are used, with a deprecation warning logged once per file.

Outside ComfyUI the root is ``--models-dir`` or the ``HONESTFACE_MODELS`` environment
variable; inside ComfyUI the node pack passes ComfyUI's own folders. Nothing is ever
downloaded: a missing file raises :class:`MissingModelFileError` naming the folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from .errors import HonestFaceError, MissingModelFileError

logger = logging.getLogger("honestface.paths")

MODELS_ENV = "HONESTFACE_MODELS"

#: Weights that ship inside the package (the small demonstration model), found by name
#: after the user's folders: ``find_model_file("honestface", "honestface-nano.safetensors")``.
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NANO_WEIGHTS = "honestface-nano.safetensors"

#: Model kind -> sub-folder of the models root (ComfyUI's names where ComfyUI has one).
MODEL_FOLDERS: dict[str, str] = {
    "honestface": "honestface",
    "diffusers": "diffusers",
    "checkpoints": "checkpoints",
    "insightface": "insightface/models",
    "face_alignment": "face_alignment",
    "face_recognition": "insightface/models",
    "dlib": "dlib",
    "pyiqa": "pyiqa",
    "metric_weights": "metric_weights",
}

#: Earlier homes of a kind, still searched after the current folder (deprecated).
LEGACY_MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "face_recognition": ("facerestore_models",),
    "dlib": ("facerestore_models",),
}
_warned_legacy: set[Path] = set()


def default_models_root() -> Path | None:
    """The models root from ``HONESTFACE_MODELS``, or None when it is not set."""
    value = os.environ.get(MODELS_ENV)
    return Path(value).expanduser() if value else None


def model_folders(kind: str, models_dir: str | Path | None = None,
                  extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders searched for a model of ``kind``: ``extra`` first, then the models root."""
    if kind not in MODEL_FOLDERS:
        raise HonestFaceError(f"unknown model kind '{kind}'; known: {', '.join(MODEL_FOLDERS)}")
    folders = [Path(p).expanduser() for p in extra]
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_root()
    if root is not None:
        folders.append(root / MODEL_FOLDERS[kind])
    return folders


def legacy_model_folders(kind: str, models_dir: str | Path | None = None) -> list[Path]:
    """Deprecated folders still searched for ``kind`` (after :func:`model_folders`)."""
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_root()
    return [] if root is None else [root / sub for sub in LEGACY_MODEL_FOLDERS.get(kind, ())]


def note_legacy_location(kind: str, path: Path) -> Path:
    """``path``, after logging (once per file) that it sits in a deprecated folder of ``kind``."""
    if path not in _warned_legacy:
        _warned_legacy.add(path)
        logger.warning("%s is in %s/, a deprecated place for it (face-restore packs list that folder's files "
                       "as restorers); move it to <models>/%s/. It is still used from there for now.",
                       path, path.parent.name, MODEL_FOLDERS[kind])
    return path


def find_model_file(kind: str, name: str | Path, models_dir: str | Path | None = None,
                    extra: Iterable[str | Path] = (), what: str = "") -> Path:
    """Resolve ``name`` (an existing path, or a name relative to the ``kind`` folders).

    Deprecated folders of the kind (:data:`LEGACY_MODEL_FOLDERS`) are searched last, for
    ``name`` and for its bare file name; a file found there logs a warning once.

    Raises:
        MissingModelFileError: naming the file and the folder where it belongs.
    """
    candidate = Path(name).expanduser()
    if candidate.is_absolute() or candidate.exists():
        if candidate.exists():
            return candidate
        raise MissingModelFileError(candidate.name, candidate.parent, what)
    folders = model_folders(kind, models_dir, extra)
    searched = folders + ([PACKAGED_WEIGHTS_DIR] if kind == "honestface" else [])
    for folder in searched:
        if (folder / candidate).exists():
            return folder / candidate
    for folder in legacy_model_folders(kind, models_dir):
        for relative in dict.fromkeys((candidate, Path(candidate.name))):
            if (folder / relative).exists():
                return note_legacy_location(kind, folder / relative)
    if folders:
        where = folders[-1]
    else:
        where = Path(f"<models>/{MODEL_FOLDERS[kind]}")
    hint = "" if folders else f"Pass --models-dir or set {MODELS_ENV} to your models folder."
    raise MissingModelFileError(str(candidate), where, what, hint)
