"""HonestFace nodes for ComfyUI: thin wrappers over the ``honestface`` library.

Imported by the repository's root ``__init__.py`` only inside ComfyUI (it needs
``folder_paths`` and ``comfy``). The nodes hold no model logic.
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

NODE_CLASS_MAPPINGS = {
    "HonestFaceModelLoader": HonestFaceModelLoader,
    "HonestFaceAnalysisLoader": HonestFaceAnalysisLoader,
    "HonestFaceIdentityEmbedder": HonestFaceIdentityEmbedder,
    "HonestFaceVisualTokens": HonestFaceVisualTokens,
    "HonestFaceRestoreAligned": HonestFaceRestoreAligned,
    "HonestFaceRestorePhoto": HonestFaceRestorePhoto,
    "HonestFaceAlignFace": HonestFaceAlignFace,
    "HonestFaceMFAMask": HonestFaceMFAMask,
    "HonestFaceALDScore": HonestFaceALDScore,
    "HonestFaceReferenceSelector": HonestFaceReferenceSelector,
    "HonestFaceUnloadModels": HonestFaceUnloadModels,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "HonestFaceModelLoader": "HonestFace Model Loader",
    "HonestFaceAnalysisLoader": "HonestFace Face Analysis Loader",
    "HonestFaceIdentityEmbedder": "HonestFace Identity Embedder (IDE)",
    "HonestFaceVisualTokens": "HonestFace Visual Tokens (VRE)",
    "HonestFaceRestoreAligned": "HonestFace Restore (aligned face)",
    "HonestFaceRestorePhoto": "HonestFace Restore (whole photo)",
    "HonestFaceAlignFace": "HonestFace Align Face",
    "HonestFaceMFAMask": "HonestFace MFA Mask Preview",
    "HonestFaceALDScore": "HonestFace A-LD Score",
    "HonestFaceReferenceSelector": "HonestFace Reference Selector (A-LD)",
    "HonestFaceUnloadModels": "HonestFace Unload Models",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

