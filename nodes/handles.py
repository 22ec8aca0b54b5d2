"""What flows between HonestFace nodes, and the cache that keeps models between runs.

``HONESTFACE_MODEL`` is a :class:`ModelHandle` (the pipeline, wrapped in a ComfyUI
``ModelPatcher`` so ComfyUI's memory manager loads it onto the GPU when a node needs it and
offloads it when another model needs the room). ``FACE_ANALYSIS`` is a
:class:`FaceAnalysis` (landmarks, identity and detector backends). Loaded objects are cached
by their loader settings, here at module level (V3 nodes are classes without instances that
could hold them); the *Unload models* node (or ``unload_all``) empties the cache.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

import comfy.model_management as model_management
import comfy.model_patcher

class ModelCache:
    """Loaded models keyed by the settings that built them (one process-wide instance)."""

    def __init__(self) -> None:
        self._items: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                return self._items[key]
        value = build()
        with self._lock:
            self._items[key] = value
        return value

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
        return count


MODEL_CACHE = ModelCache()


def unload_all() -> int:
    """Forget every cached HonestFace model and let ComfyUI free device memory."""
    count = MODEL_CACHE.clear()
    model_management.unload_all_models()
    gc.collect()
    model_management.soft_empty_cache()
    return count


#: The Face Analysis Loader's recogniser choice that follows the model it is used with.
FROM_MODEL = "from model"
#: The recogniser of a "from model" analysis used where no model is connected (scoring):
#: dlib's, which works offline with the weights of its pip package.
RECOGNISER_WITHOUT_MODEL = "dlib"


@dataclass
class FaceAnalysis:
    """Face-analysis backends chosen by the *Face analysis loader* node.

    ``identity`` is None while the recogniser is ``"from model"``: the node that has both the
    analysis and a model asks :meth:`for_model` for the analysis with the recogniser that
    model was trained with (so the loaders may run in any order).
    """

    landmarks: Any  # honestface.face.LandmarkBackend
    identity: Any  # honestface.face.IdentityBackend, or None for FROM_MODEL
    detector: Any  # honestface.face.FaceDetector
    description: str = ""
    #: Builds (or takes from the cache) a recogniser by backend name; set for FROM_MODEL.
    load_identity: Callable[[str], Any] | None = field(default=None, repr=False)

    def for_model(self, trained_with: str | None) -> "FaceAnalysis":
        """This analysis with a recogniser: its own, or for FROM_MODEL the one named
        ``trained_with`` (a checkpoint's ``identity_backend``; None where no model is at
        hand: :data:`RECOGNISER_WITHOUT_MODEL`)."""
        if self.identity is not None:
            return self
        backend = trained_with or RECOGNISER_WITHOUT_MODEL
        source = "the model's" if trained_with else "no model connected"
        return replace(self, identity=self.load_identity(backend), load_identity=None,
                       description=self.description.replace(f"identity={FROM_MODEL}",
                                                            f"identity={backend} ({source})"))


@dataclass
class ModelHandle:
    """A loaded HonestFace (or OSDFace) pipeline and its ComfyUI memory-management wrapper
    (the ``HONESTFACE_MODEL`` value; the torch model is ``pipeline.model``)."""

    pipeline: Any  # honestface.pipeline.HonestFacePipeline
    module: torch.nn.Module  # the torch module holding every weight of the pipeline
    load_device: torch.device
    offload_device: torch.device
    dtype: torch.dtype
    description: str = ""
    patcher: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.patcher is None:
            self.patcher = comfy.model_patcher.ModelPatcher(
                self.module, load_device=self.load_device, offload_device=self.offload_device)

    def ready(self) -> Any:
        """Load the weights onto the compute device (ComfyUI decides what to offload)."""
        # Fully: our modules are plain torch layers, which ComfyUI's partial (low-VRAM) loading
        # cannot run with some weights left on the CPU.
        model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.pipeline
