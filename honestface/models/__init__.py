"""The HonestFace model: VRE, IDE, fusion and the one-step restorer."""

from .color import adain_color_fix, color_correct, wavelet_color_fix
from .fusion import FUSIONS, build_fusion, register_fusion
from .honestface import HonestFaceModel, HonestFaceOutput, build_diffusers
from .ide import (FaceIdentityEncoder, FacialFeatureExtractor, IdentityEmbedder, IDEOutput, ReferenceTokens,
                  VGG16Features, crop_eye_patches, eye_boxes, select_reference)
from .restorer import OneStepRestorer, RestorerOutput, one_step_x0, training_alphas_cumprod
from .vre import VisualRepresentationEmbedder, select_distinct_codes

__all__ = [
    "HonestFaceModel", "HonestFaceOutput", "build_diffusers",
    "VisualRepresentationEmbedder", "select_distinct_codes",
    "IdentityEmbedder", "IDEOutput", "ReferenceTokens", "FacialFeatureExtractor", "FaceIdentityEncoder", "VGG16Features",
    "select_reference", "eye_boxes", "crop_eye_patches",
    "OneStepRestorer", "RestorerOutput", "one_step_x0", "training_alphas_cumprod",
    "FUSIONS", "build_fusion", "register_fusion",
    "adain_color_fix", "wavelet_color_fix", "color_correct",
]
