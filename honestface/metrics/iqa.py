"""Learned image-quality metrics through pyiqa, strictly offline.

LPIPS, DISTS, CLIP-IQA, MANIQA, MUSIQ and FID (paper Sec. 4.1) are computed with
`pyiqa` (IQA-PyTorch) using its default variant of each metric. pyiqa normally
downloads weights on first use; HonestFace never lets it. Before a metric is built,
every weight file it needs is looked for, and a metric whose files are missing is
reported as unavailable with the list of missing files and where they belong.

Where the files are looked for (first complete folder wins):

1. ``<models>/pyiqa/`` (``--models-dir`` / ``HONESTFACE_MODELS``), laid out like the
   torch hub folder: ``pyiqa/<pyiqa weight>``, ``checkpoints/<torchvision weight>``,
   ``clip/RN50.pt``;
2. the torch hub folder itself (``torch.hub.get_dir()``, i.e. ``$TORCH_HOME/hub``,
   by default ``~/.cache/torch/hub``), which is where pyiqa keeps what it downloaded.

MANIQA's ViT backbone comes from timm through the Hugging Face cache
(``HF_HUB_CACHE``); it must already be there.

While a metric is built, the chosen folder is made the torch hub folder, Hugging Face
is switched to offline mode and the download functions of torch and pyiqa are replaced
by one that raises :class:`MissingModelFileError`, so nothing can reach the network.
pyiqa loads its ``.pth`` files with full unpickling: only point it at weight files you
trust.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..errors import HonestFaceError, MissingModelFileError
from ..paths import model_folders


@dataclass(frozen=True)
class PyiqaMetricSpec:
    """What one pyiqa metric needs on disk."""

    key: str  # HonestFace metric key
    pyiqa_name: str  # name for pyiqa.create_metric
    hub_files: tuple[str, ...]  # paths relative to a torch-hub-style folder
    hf_repos: tuple[str, ...] = ()  # Hugging Face model repos that must be cached
    full_reference: bool = True
    set_level: bool = False  # computed over two folders (FID), not per image


#: File names are pyiqa 0.1.x's (``pyiqa/archs/*_arch.py``) and torchvision's.
PYIQA_METRICS: dict[str, PyiqaMetricSpec] = {
    spec.key: spec
    for spec in (
        PyiqaMetricSpec(
            "lpips", "lpips", ("checkpoints/alexnet-owt-7be5be79.pth", "pyiqa/LPIPS_v0.1_alex-df73285e.pth")
        ),
        PyiqaMetricSpec(
            "lpips_vgg", "lpips-vgg", ("checkpoints/vgg16-397923af.pth", "pyiqa/LPIPS_v0.1_vgg-a78928a0.pth")
        ),
        PyiqaMetricSpec("dists", "dists", ("checkpoints/vgg16-397923af.pth", "pyiqa/DISTS_weights-f5e65c96.pth")),
        PyiqaMetricSpec("clipiqa", "clipiqa", ("clip/RN50.pt",), full_reference=False),
        PyiqaMetricSpec(
            "maniqa",
            "maniqa",
            ("pyiqa/ckpt_koniq10k.pt",),
            hf_repos=("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k",),
            full_reference=False,
        ),
        PyiqaMetricSpec("musiq", "musiq", ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",), full_reference=False),
        PyiqaMetricSpec("fid", "fid", ("pyiqa/pt_inception-2015-12-05-6726825d.pth",), set_level=True),
    )
}


@dataclass
class Availability:
    """Whether a metric can run here, and if not, why."""

    available: bool
    reason: str = ""
    hub_dir: Optional[Path] = None
    missing: tuple[str, ...] = ()  # hub-relative files missing from the most complete folder


def pyiqa_installed() -> bool:
    return importlib.util.find_spec("pyiqa") is not None


def hub_folders(models_dir: str | Path | None = None) -> list[Path]:
    """Torch-hub-style folders searched for pyiqa weights, in order."""
    folders = list(model_folders("pyiqa", models_dir))
    folders.append(Path(torch.hub.get_dir()))
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return Path(os.environ.get("HF_HUB_CACHE", Path.home() / ".cache" / "huggingface" / "hub"))


def _hf_repo_cached(repo_id: str) -> bool:
    snapshots = _hf_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return False
    weights = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any((snapshot / name).is_file() for snapshot in snapshots.iterdir() for name in weights)


def check_pyiqa_metric(key: str, models_dir: str | Path | None = None) -> Availability:
    """Can pyiqa metric ``key`` run offline here? Never imports pyiqa or touches the network."""
    spec = PYIQA_METRICS.get(key)
    if spec is None:
        raise HonestFaceError(f"unknown pyiqa metric '{key}'; known: {', '.join(PYIQA_METRICS)}")
    if not pyiqa_installed():
        return Availability(False, "pyiqa is not installed (pip install pyiqa)")
    folders = hub_folders(models_dir)
    best_missing: list[str] | None = None
    chosen: Path | None = None
    for folder in folders:
        missing = [name for name in spec.hub_files if not (folder / name).is_file()]
        if not missing:
            chosen = folder
            break
        if best_missing is None or len(missing) < len(best_missing):
            best_missing = missing
    if chosen is None:
        where = " or ".join(str(folder) for folder in folders)
        return Availability(
            False, f"weights not found: {', '.join(best_missing or [])} (looked in {where})", missing=tuple(best_missing or ())
        )
    missing_repos = [repo for repo in spec.hf_repos if not _hf_repo_cached(repo)]
    if missing_repos:
        return Availability(
            False, f"Hugging Face model {', '.join(missing_repos)} is not in the local cache {_hf_cache_dir()}"
        )
    return Availability(True, "", chosen)


def _refuse_download(url, *args, **kwargs):
    name = os.path.basename(str(url).split("?")[0]) or str(url)
    raise MissingModelFileError(name, torch.hub.get_dir(), "image-quality metric", "Downloads are disabled.")


@contextlib.contextmanager
def offline_hub(hub_dir: Path) -> Iterator[None]:
    """Make ``hub_dir`` the torch hub folder and forbid every download while inside."""
    import huggingface_hub
    import huggingface_hub.constants

    saved_hub = getattr(torch.hub, "_hub_dir", None)
    patches: list[tuple[object, str, object]] = []

    def patch(module, name, value):
        if module is not None and hasattr(module, name):
            patches.append((module, name, getattr(module, name)))
            setattr(module, name, value)

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    try:
        torch.hub.set_dir(str(hub_dir))
        os.environ["HF_HUB_OFFLINE"] = "1"
        patch(torch.hub, "download_url_to_file", _refuse_download)
        download_util = sys.modules.get("pyiqa.utils.download_util")
        patch(download_util, "DEFAULT_CACHE_DIR", str(hub_dir / "pyiqa"))
        patch(download_util, "download_url_to_file", _refuse_download)
        patch(download_util, "download_file_from_google_drive", _refuse_download)
        patch(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch(sys.modules.get(huggingface_hub.is_offline_mode.__module__), "HF_HUB_OFFLINE", True)
        yield
    finally:
        for module, name, value in reversed(patches):
            setattr(module, name, value)
        torch.hub._hub_dir = saved_hub
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


class PyiqaMetric:
    """One pyiqa metric, built offline from local weights.

    ``metric(restored, reference)`` for full-reference metrics and ``metric(restored)``
    for no-reference ones take (B, 3, H, W) RGB in [0, 1] and return (B,) float64;
    :meth:`folders` computes a set-level metric (FID) between two image folders.

    Raises:
        MissingModelFileError: when a weight file is missing (nothing is downloaded).
    """

    def __init__(self, key: str, models_dir: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        availability = check_pyiqa_metric(key, models_dir)
        self.spec = PYIQA_METRICS[key]
        if not availability.available:
            if not availability.missing:  # pyiqa or a Hugging Face model is missing
                raise HonestFaceError(f"{key}: {availability.reason}")
            raise MissingModelFileError(
                availability.missing[0], hub_folders(models_dir)[0], key,
                f"Missing: {', '.join(availability.missing)}. They are never downloaded.",
            )
        import pyiqa  # imported here: optional and heavy

        # The download module must be imported before it is patched.
        import pyiqa.utils.download_util

        self.device = torch.device(device)
        with offline_hub(availability.hub_dir):
            self._metric = pyiqa.create_metric(self.spec.pyiqa_name, device=self.device, as_loss=False)
        self.hub_dir = availability.hub_dir
        self.lower_is_better = bool(getattr(self._metric, "lower_better", False))

    @torch.no_grad()
    def __call__(self, restored: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.spec.set_level:
            raise HonestFaceError(f"{self.spec.key} is computed over folders; use .folders()")
        restored = restored.to(self.device, torch.float32).clamp(0, 1)
        if self.spec.full_reference:
            if reference is None:
                raise HonestFaceError(f"{self.spec.key} needs a reference image")
            value = self._metric(restored, reference.to(self.device, torch.float32).clamp(0, 1))
        else:
            value = self._metric(restored)
        return value.detach().reshape(restored.shape[0], -1)[:, 0].to("cpu", torch.float64)

    @torch.no_grad()
    def folders(self, restored_files: Sequence[Path], reference_files: Sequence[Path]) -> float:
        """Set-level metric between two lists of image files (linked into temporary folders)."""
        if not self.spec.set_level:
            raise HonestFaceError(f"{self.spec.key} is an image-level metric")
        with tempfile.TemporaryDirectory(prefix="honestface-fid-") as tmp:
            dirs = []
            for label, files in (("restored", restored_files), ("reference", reference_files)):
                folder = Path(tmp) / label
                folder.mkdir()
                for index, path in enumerate(files):
                    link = folder / f"{index:06d}{Path(path).suffix.lower()}"
                    try:
                        link.symlink_to(Path(path).resolve())
                    except OSError:
                        import shutil

                        shutil.copyfile(path, link)
                dirs.append(str(folder))
            with offline_hub(self.hub_dir):
                value = self._metric(dirs[0], dirs[1], verbose=False, num_workers=0)
        return float(value)


__all__ = [
    "Availability",
    "PYIQA_METRICS",
    "PyiqaMetric",
    "PyiqaMetricSpec",
    "check_pyiqa_metric",
    "hub_folders",
    "offline_hub",
    "pyiqa_installed",
]
