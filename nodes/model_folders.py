"""HonestFace's model folders inside ComfyUI.

Registers the folders HonestFace reads (``models/honestface``, ``models/insightface``,
``models/face_alignment``, ``models/dlib``) with ComfyUI's ``folder_paths``
*additively*: folders a user added in ``extra_model_paths.yaml`` (loaded before custom
nodes) stay, and come first; ComfyUI's own entries (``checkpoints``, ``diffusers``) are
used as they are.

Face recognisers (AdaFace ``.ckpt``, arcface_torch ``.pth``) live under
``models/insightface/models/`` with the ONNX packs; the ``insightface`` folder is still
registered for ``.onnx`` only, so packs that list it (face swappers) see no PyTorch files,
and HonestFace lists those itself. ``models/facerestore_models`` (their old place) is
still read, with a deprecation warning, but no longer registered or extended: restore packs
list every file there as a restorer.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from honestface.errors import MissingModelFileError
from honestface.paths import MODEL_FOLDERS

#: ComfyUI folder name -> (sub-folder of ComfyUI's models dir, file extensions listed).
HONESTFACE_FOLDERS: dict[str, tuple[str, set[str]]] = {
    "honestface": ("honestface", {".safetensors", ".pth", ".ckpt", ".pt"}),
    "insightface": ("insightface", {".onnx"}),
    "face_alignment": ("face_alignment", {".pth", ".pt", ".zip", ".tar"}),
    "dlib": ("dlib", {".dat"}),
}

#: Deprecated ComfyUI folder of face recognisers (read, never registered).
LEGACY_RECOGNISER_FOLDER = "facerestore_models"

#: Library model kind (honestface.paths) -> ComfyUI folder name.
KIND_TO_COMFY = {
    "honestface": "honestface",
    "diffusers": "diffusers",
    "checkpoints": "checkpoints",
    "insightface": "insightface",
    "face_alignment": "face_alignment",
    "face_recognition": "insightface",
    "dlib": "dlib",
}


def register_model_folders() -> None:
    """Add HonestFace's folders to ``folder_paths`` without replacing what is there."""
    for name, (subfolder, extensions) in HONESTFACE_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, subfolder)
        if name in folder_paths.folder_names_and_paths:
            paths, existing = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            # An empty set means "every file" to ComfyUI; keep it that way.
            merged = set(existing) | extensions if existing else set(existing)
            folder_paths.folder_names_and_paths[name] = (paths, merged)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def comfy_folders(kind: str) -> list[Path]:
    """Every folder ComfyUI knows for a library model kind, in search order.

    For ``insightface`` and ``face_recognition`` this is the pack root ``.../insightface/models``
    the library expects.
    """
    folders = [Path(p) for p in folder_paths.get_folder_paths(KIND_TO_COMFY[kind])]
    if KIND_TO_COMFY[kind] == "insightface":
        folders = [p / "models" for p in folders]
    return folders


def models_root_for(kind: str, relative: str | None = None) -> Path:
    """A models root whose ``MODEL_FOLDERS[kind]`` sub-folder is one of ComfyUI's folders.

    The library's face-analysis factories take a models root (``<root>/insightface/models``,
    ``<root>/face_alignment``, ...). ComfyUI's folders for a kind may live under several
    roots (``extra_model_paths.yaml``): the first root whose folder holds ``relative`` (a
    file or pack name) wins; without ``relative``, the first root. Folders not named like
    the kind (e.g. a yaml entry ``insightface: my_faces``) cannot be expressed as a root
    and are skipped.
    """
    sub = Path(MODEL_FOLDERS[kind]).parts
    roots = [(folder, folder.parents[len(sub) - 1]) for folder in comfy_folders(kind)
             if folder.parts[-len(sub):] == sub]
    for folder, root in roots:
        if relative is None or (folder / relative).exists():
            return root
    if relative is None:
        return Path(folder_paths.models_dir)
    where = roots[0][0] if roots else Path(folder_paths.models_dir) / MODEL_FOLDERS[kind]
    raise MissingModelFileError(relative, where, f"{kind} model")


def list_files(comfy_name: str) -> list[str]:
    """Files ComfyUI lists for a folder name (relative names, sorted)."""
    try:
        return folder_paths.get_filename_list(comfy_name)
    except KeyError:
        return []


def list_files_with(comfy_name: str, extensions: tuple[str, ...]) -> list[str]:
    """Files with one of ``extensions`` under every folder of ``comfy_name`` (relative names,
    sorted), whatever extensions the folder is registered with; [] for an unknown name."""
    if comfy_name in folder_paths.folder_names_and_paths:
        folders = folder_paths.get_folder_paths(comfy_name)
    else:
        folders = [os.path.join(folder_paths.models_dir, comfy_name)]
    names = set()
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file() and path.name.lower().endswith(extensions):
                names.add(path.relative_to(folder).as_posix())
    return sorted(names)


def list_subfolders(comfy_name: str, must_contain: tuple[str, ...] = ()) -> list[str]:
    """Sub-folder names of every folder of ``comfy_name`` that contain all ``must_contain``."""
    names = set()
    for folder in folder_paths.get_folder_paths(comfy_name):
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if os.path.isdir(path) and all(os.path.exists(os.path.join(path, m)) for m in must_contain):
                names.add(entry)
    return sorted(names)


def find_in_folders(comfy_name: str, relative: str, what: str) -> Path:
    """Full path of a file or folder ``relative`` to one of the ``comfy_name`` folders."""
    folders = folder_paths.get_folder_paths(comfy_name)
    for folder in folders:
        path = Path(folder) / relative
        if path.exists():
            return path
    where = folders[0] if folders else os.path.join(folder_paths.models_dir, comfy_name)
    raise MissingModelFileError(relative, where, what)
