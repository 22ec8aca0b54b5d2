"""Face-analysis nodes: the backend loader, face alignment, MFA mask preview, A-LD scores.

MFA Mask and A-LD Score show their overlay on the node itself (``ui.images``, like Preview
Image) besides returning it, so they are output nodes: they run, and show it, even when
nothing is connected to them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from honestface.errors import ImageError, NoFaceError
from honestface.face import IDENTITY_BACKENDS, LANDMARK_BACKENDS, require_landmarks
from honestface.visualize import GREEN, RED, draw_points

from .comfy_io import (DEVICE_CHOICES, comfy_progress, comfy_to_images, images_to_comfy, masks_to_comfy,
                       resolve_device, save_previews)
from .handles import MODEL_CACHE, FaceAnalysis, unload_all
from .model_folders import LEGACY_RECOGNISER_FOLDER, list_files_with, models_root_for

CATEGORY = "HonestFace"

LANDMARK_CHOICES = list(LANDMARK_BACKENDS)
IDENTITY_CHOICES = list(IDENTITY_BACKENDS)
DETECTOR_CHOICES = ["dlib-hog", "dlib-mmod", "insightface"]

#: Model kind whose folders hold each backend's weights (dlib's come with its pip package).
_LANDMARK_KIND = {"dlib": "dlib", "fan": "face_alignment"}
_IDENTITY_KIND = {"dlib": "dlib", "dlib-torch": "dlib", "arcface-onnx": "insightface",
                  "arcface-torch": "insightface", "adaface": "face_recognition"}
_RECOGNISER_EXTENSIONS = (".pth", ".ckpt", ".pt")


DEFAULT_MODEL = "default"


def identity_model_choices() -> list[str]:
    """Recogniser weight files: ONNX, .pth and .ckpt files under models/insightface, then
    .pth/.ckpt files in the deprecated facerestore_models (so older workflows still load)."""
    current = list_files_with("insightface", (".onnx", *_RECOGNISER_EXTENSIONS))
    legacy = [f for f in list_files_with(LEGACY_RECOGNISER_FOLDER, _RECOGNISER_EXTENSIONS) if f not in current]
    return [DEFAULT_MODEL] + current + legacy


def resolve_identity_model(name: str):
    import folder_paths

    from honestface.errors import MissingModelFileError
    from honestface.paths import note_legacy_location

    for folder in folder_paths.get_folder_paths("insightface"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    legacy = (folder_paths.get_folder_paths(LEGACY_RECOGNISER_FOLDER)
              if LEGACY_RECOGNISER_FOLDER in folder_paths.folder_names_and_paths
              else [os.path.join(folder_paths.models_dir, LEGACY_RECOGNISER_FOLDER)])
    for folder in legacy:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return str(note_legacy_location("face_recognition", Path(path)))
    raise MissingModelFileError(name, os.path.join(folder_paths.get_folder_paths("insightface")[0], "models"),
                                "face recogniser weights")


def build_face_analysis(landmark_backend: str, identity_backend: str, detector: str, device: str,
                        identity_model: str = DEFAULT_MODEL) -> FaceAnalysis:
    from honestface.face import load_face_detector, load_identity_backend, load_landmark_backend

    torch_device = str(resolve_device(device))
    landmarks = load_landmark_backend(landmark_backend, models_dir=models_root_for(_LANDMARK_KIND[landmark_backend]),
                                      device=torch_device)
    extra = {}
    if identity_model != DEFAULT_MODEL and not identity_backend.startswith("dlib"):
        extra["model"] = resolve_identity_model(identity_model)
    identity = load_identity_backend(identity_backend, models_dir=models_root_for(_IDENTITY_KIND[identity_backend]),
                                     device=torch_device, **extra)
    family, _, variant = detector.partition("-")
    detector_kind = "insightface" if family == "insightface" else "dlib"
    face_detector = load_face_detector(family, models_dir=models_root_for(detector_kind), device=torch_device,
                                       **({"model": variant} if variant else {}))
    return FaceAnalysis(landmarks=landmarks, identity=identity, detector=face_detector,
                        description=f"landmarks={landmark_backend}, identity={identity_backend}, detector={detector}")


class HonestFaceAnalysisLoader:
    DESCRIPTION = ("Loads the face-analysis backends HonestFace uses: 68-point landmarks (and their heatmaps), "
                   "a face recogniser for identity embeddings, and a face detector for whole photos. "
                   "dlib works offline with the weights of its pip package; FAN weights go in models/face_alignment, "
                   "ArcFace ONNX packs in models/insightface/models/<pack>, AdaFace and arcface_torch files next to them "
                   "(models/insightface/models/adaface/, .../arcface_torch/). "
                   "Loaded backends are cached until 'HonestFace Unload Models' runs.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FACE_ANALYSIS",)
    RETURN_NAMES = ("face_analysis",)
    OUTPUT_TOOLTIPS = ("Landmark, identity and detector backends for the other HonestFace nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "landmark_backend": (LANDMARK_CHOICES, {"default": "dlib", "tooltip":
                "68-point landmarks and heatmaps: dlib (offline) or face-alignment's FAN (weights in models/face_alignment)."}),
            "identity_backend": (IDENTITY_CHOICES, {"default": "dlib", "tooltip":
                "Face recogniser for identity embeddings: dlib 128-d (offline; dlib-torch runs the same network in "
                "PyTorch, batched and on the GPU), ArcFace (insightface ONNX pack or the same network in PyTorch) "
                "or AdaFace. Must match what the HonestFace checkpoint was trained with (the built-in nano model: "
                "dlib-torch)."}),
            "identity_model": (identity_model_choices(), {"default": DEFAULT_MODEL, "tooltip":
                "Weights of the face recogniser: default (ArcFace: insightface/models/buffalo_l/w600k_r50.onnx), "
                "another insightface ONNX file, or an arcface_torch .pth / AdaFace .ckpt from models/insightface "
                "(models/facerestore_models, their old place, is still read). "
                "Ignored by dlib."}),
            "detector": (DETECTOR_CHOICES, {"default": "dlib-hog", "tooltip":
                "Face detector for whole photos: dlib HOG (fast), dlib MMOD CNN (more robust, slower on CPU) or "
                "insightface SCRFD (models/insightface/models/buffalo_l/det_10g.onnx; 5 points, refined by the "
                "landmark backend)."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip":
                "auto: the device ComfyUI uses for models; cpu: keep the backends on the CPU."}),
        }}

    def load(self, landmark_backend, identity_backend, identity_model, detector, device):
        key = ("face_analysis", landmark_backend, identity_backend, identity_model, detector, device)
        analysis = MODEL_CACHE.get(key, lambda: build_face_analysis(landmark_backend, identity_backend, detector,
                                                                    device, identity_model))
        return (analysis,)


class HonestFaceAlignFace:
    DESCRIPTION = ("Finds faces in photos and returns FFHQ-style aligned crops (the input HonestFace restores, "
                   "and the form references must have). One crop per photo: the face at face_index "
                   "(0 = largest).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("aligned_faces",)
    OUTPUT_TOOLTIPS = ("Aligned face crops, size x size, one per input photo.",)
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From 'HonestFace Face Analysis Loader'."}),
            "images": ("IMAGE", {"tooltip": "Photos (a batch); each must contain a face."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8, "tooltip":
                "Side of the aligned square crop in pixels (HonestFace works at 512)."}),
            "face_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip":
                "Which face of each photo: 0 = the largest, 1 = the next, ..."}),
        }}

    def align(self, face_analysis, images, size, face_index):
        from honestface.face.align import align_face

        photos = comfy_to_images(images, "images")
        progress = comfy_progress(photos.shape[0])
        crops = []
        for i, photo in enumerate(photos):
            faces = face_analysis.detector.detect(photo)
            if len(faces) <= face_index:
                raise NoFaceError(f"image {i} of the batch has {len(faces)} face(s); face_index {face_index} does not exist")
            landmarks = torch.as_tensor(faces[face_index].landmarks, dtype=torch.float32)
            crop, _ = align_face(photo, landmarks, size)
            crops.append(crop.reshape(3, size, size))
            progress(i + 1, photos.shape[0])
        return (images_to_comfy(torch.stack(crops)),)


class HonestFaceMFAMask:
    DESCRIPTION = ("Masked face alignment (MFA, paper Eq. 10-11): averages the landmark heatmaps of each face, "
                   "sharpens them with 1 - exp(-k M) and min-max normalises, giving the mask of the regions "
                   "(eyes, brows, nose, mouth, contour) the MFA loss attends to. Outputs the MASK and an overlay, "
                   "which the node also shows.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MASK", "IMAGE")
    RETURN_NAMES = ("mask", "overlay")
    OUTPUT_TOOLTIPS = ("MFA attention mask in [0, 1], same size as the faces.",
                       "The faces tinted where the mask is high (also shown on the node).")
    FUNCTION = "mask"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From 'HonestFace Face Analysis Loader' (its landmark backend makes the heatmaps)."}),
            "images": ("IMAGE", {"tooltip": "Aligned faces (a batch), e.g. the low-quality inputs."}),
            "k": ("FLOAT", {"default": 10.0, "min": 0.01, "max": 1000.0, "step": 0.5, "tooltip":
                "Sharpening constant k of Eq. 11; larger values widen and saturate the mask (paper: 10)."}),
            "overlay_strength": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "How strongly the overlay preview tints the masked regions."}),
        }}

    def mask(self, face_analysis, images, k, overlay_strength):
        from honestface.mfa import mask_overlay, mfa_mask_from_images

        faces = comfy_to_images(images, "images")
        progress = comfy_progress(faces.shape[0])
        masks = []
        for i in range(faces.shape[0]):
            masks.append(mfa_mask_from_images(faces[i:i + 1], face_analysis.landmarks, k=k))
            progress(i + 1, faces.shape[0])
        mask = torch.cat(masks).float()
        overlay = mask_overlay(faces, mask, alpha=overlay_strength)
        previews = save_previews(overlay, "HonestFace/mfa_mask")
        return {"ui": {"images": previews}, "result": (masks_to_comfy(mask), images_to_comfy(overlay))}


def _landmarks(face_analysis: FaceAnalysis, images: torch.Tensor, what: str) -> torch.Tensor:
    with torch.no_grad():
        points = face_analysis.landmarks.landmarks(images).float().cpu()
    return require_landmarks(points, what)


class HonestFaceALDScore:
    DESCRIPTION = ("Scores restored faces against ground truth or a reference of the same person: "
                   "ALD-e and ALD-m (affine landmark distance, paper Eq. 14-15, on eyes+brows and the outer lip), "
                   "L2-LD (mean landmark distance in pixels of the restored image) and Deg. (angle between identity "
                   "embeddings). Lower is better for all four. With batches the values are means over the batch. "
                   "The node shows the landmarks: restored (green) and reference (red).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "FLOAT", "IMAGE", "STRING")
    RETURN_NAMES = ("ALD_e", "ALD_m", "L2_LD", "Deg", "landmarks_overlay", "report")
    OUTPUT_TOOLTIPS = ("A-LD on eyes and brows (landmarks 17-26, 36-47).",
                       "A-LD on the outer lip contour (landmarks 48-59).",
                       "Mean Euclidean landmark distance in pixels of the restored image.",
                       "Angle in degrees between the identity embeddings.",
                       "The restored faces with their landmarks (green) and the reference's (red); also shown "
                       "on the node.",
                       "The four values as text, one line per image.")
    FUNCTION = "score"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "From 'HonestFace Face Analysis Loader' (landmarks and identity)."}),
            "restored": ("IMAGE", {"tooltip": "Restored aligned faces (a batch)."}),
            "reference": ("IMAGE", {"tooltip": "Ground truth or reference faces: one image, or one per restored face."}),
        }}

    def score(self, face_analysis, restored, reference):
        from honestface.metrics.identity import identity_angle_degrees
        from honestface.metrics.landmark import affine_landmark_distance, l2_landmark_distance
        from honestface.metrics.registry import METRICS

        restored_images = comfy_to_images(restored, "restored")
        reference_images = comfy_to_images(reference, "reference")
        batch = restored_images.shape[0]
        if reference_images.shape[0] not in (1, batch):
            raise ImageError(f"reference has {reference_images.shape[0]} images; give 1 or one per restored face ({batch})")
        if reference_images.shape[0] == 1 and batch > 1:
            reference_images = reference_images.expand(batch, -1, -1, -1)
        progress = comfy_progress(3)
        restored_points = _landmarks(face_analysis, restored_images, "the restored faces")
        reference_points = _landmarks(face_analysis, reference_images, "the reference faces")
        progress(1, 3)
        # Landmarks of the reference in the restored image's pixel frame (both are aligned crops).
        scale = torch.tensor([restored_images.shape[-1] / reference_images.shape[-1],
                              restored_images.shape[-2] / reference_images.shape[-2]])
        reference_points = reference_points * scale
        ald_e = affine_landmark_distance(restored_points, reference_points, subset="eyes")
        ald_m = affine_landmark_distance(restored_points, reference_points, subset="mouth")
        l2 = l2_landmark_distance(restored_points, reference_points)
        with torch.no_grad():
            embeddings_restored = face_analysis.identity.embed(restored_images).float().cpu()
            embeddings_reference = face_analysis.identity.embed(reference_images).float().cpu()
        degrees = identity_angle_degrees(embeddings_restored, embeddings_reference)
        progress(2, 3)
        overlay = draw_points(restored_images, reference_points, RED)
        overlay = draw_points(overlay, restored_points, GREEN)
        # Named as the evaluation tables name them: with the backend where it is not the paper's.
        backends = (face_analysis.landmarks.name,) * 3 + (face_analysis.identity.name,)
        names = [METRICS[key].column + METRICS[key].qualifier(backend)
                 for key, backend in zip(("ald_e", "ald_m", "l2ld", "deg"), backends)]
        lines = [f"image {i}: {names[0]} {float(ald_e[i]):.4f}  {names[1]} {float(ald_m[i]):.4f}  "
                 f"{names[2]} {float(l2[i]):.3f}  {names[3]} {float(degrees[i]):.2f}" for i in range(batch)]
        progress(3, 3)
        values = [float(v.double().mean()) for v in (ald_e, ald_m, l2, degrees)]
        for name, value in zip(names, values):
            if not math.isfinite(value):
                raise NoFaceError(f"{name} is not finite: a landmark or identity backend failed on a face")
        previews = save_previews(overlay, "HonestFace/ald_landmarks")
        return {"ui": {"images": previews}, "result": (*values, images_to_comfy(overlay), "\n".join(lines))}


class HonestFaceUnloadModels:
    DESCRIPTION = ("Frees every HonestFace model cached by the loader nodes and asks ComfyUI to move loaded models "
                   "off the GPU. Connect any output to 'trigger' to run it after the node that makes that output. "
                   "ComfyUI's own cache of node outputs keeps the last loader results until the graph changes "
                   "(or until 'Free model and node cache' in the menu).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("models_unloaded",)
    OUTPUT_TOOLTIPS = ("How many cached HonestFace models were released.",)
    FUNCTION = "unload"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}, "optional": {
            "trigger": ("*", {"tooltip": "Optional: any output; makes this node run after the node that produces it."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types=None, **kwargs):
        return True  # 'trigger' accepts any type

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run

    def unload(self, trigger=None):
        count = unload_all()
        return {"ui": {"text": [f"released {count} HonestFace model(s)"]}, "result": (count,)}
