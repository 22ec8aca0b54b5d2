"""HonestFace nodes for ComfyUI (V3 schema): thin wrappers over the ``honestface`` library.

Imported by the repository's root ``__init__.py`` only inside ComfyUI (it needs
``folder_paths``, ``comfy`` and ``comfy_api``). The nodes hold no model logic.
"""

from .model_folders import register_model_folders

register_model_folders()

from .analysis_nodes import (  # noqa: E402  (folders must be registered first)
    HonestFaceALDScore,
    HonestFaceAlignFace,
    HonestFaceAnalysisLoader,
    HonestFaceMFAMask,
    HonestFaceUnloadModels,
)
from .restore_nodes import (  # noqa: E402
    HonestFaceIdentityEmbedder,
    HonestFaceModelLoader,
    HonestFaceReferenceSelector,
    HonestFaceRestoreAligned,
    HonestFaceRestorePhoto,
    HonestFaceVisualTokens,
)
from .v3 import ComfyExtension, io  # noqa: E402

#: Every node of the pack, in the order of the "Add Node" menu.
NODES: list[type[io.ComfyNode]] = [
    HonestFaceModelLoader,
    HonestFaceAnalysisLoader,
    HonestFaceIdentityEmbedder,
    HonestFaceVisualTokens,
    HonestFaceRestoreAligned,
    HonestFaceRestorePhoto,
    HonestFaceAlignFace,
    HonestFaceMFAMask,
    HonestFaceALDScore,
    HonestFaceReferenceSelector,
    HonestFaceUnloadModels,
]


class HonestFaceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> HonestFaceExtension:
    """What ComfyUI's loader calls (V3): the extension listing the nodes."""
    return HonestFaceExtension()


__all__ = ["NODES", "HonestFaceExtension", "comfy_entrypoint"]
