"""Face-analysis nodes: the backend loader, face alignment, the facial-region (MFA) mask and
the landmark / identity scores.

The mask and score nodes show their overlay on the node itself (V3 UI output, like Preview
Image) besides returning it, so they are output nodes: they run, and show it, even when
nothing is connected to them.
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path

import torch

from honestface.errors import HonestFaceError, ImageError, NoFaceError
from honestface.face import IDENTITY_BACKENDS, LANDMARK_BACKENDS, require_landmarks
from honestface.visualize import GREEN, RED, draw_points

from .comfy_io import (DEVICE_CHOICES, comfy_progress, comfy_to_images, images_to_comfy, masks_to_comfy,
                       preview_on_node, resolve_device)
from .handles import FROM_MODEL, MODEL_CACHE, RECOGNISER_WITHOUT_MODEL, FaceAnalysis, unload_all
from .model_folders import LEGACY_RECOGNISER_FOLDER, list_files_with, models_root_for
from .v3 import CATEGORY, FaceAnalysisType, io, ui

LANDMARK_CHOICES = list(LANDMARK_BACKENDS)
#: "from model" first: a new loader follows the model it is used with; saved workflows keep
#: the backend they name.
IDENTITY_CHOICES = [FROM_MODEL] + list(IDENTITY_BACKENDS)
DETECTOR_CHOICES = ["dlib-hog", "dlib-mmod", "insightface"]

#: Model kind whose folders hold each backend's weights (dlib's come with its pip package).
_LANDMARK_KIND = {"dlib": "dlib", "fan": "face_alignment"}
_IDENTITY_KIND = {"dlib": "dlib", "dlib-torch": "dlib", "arcface-onnx": "insightface",
                  "arcface-torch": "insightface", "adaface": "face_recognition"}
_RECOGNISER_EXTENSIONS = (".pth", ".ckpt", ".pt")

DEFAULT_MODEL = "default"

#: What to do when no face is found in an image a node needs one in.
FACE_ADVICE = ("use an image where the face is clearly visible, or try the face detector 'dlib-mmod' or "
               "'insightface' on the Face Analysis Loader")


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


def build_identity(identity_backend: str, identity_model: str, device: str):
    """One recogniser, cached by its settings."""
    from honestface.face import load_identity_backend

    if identity_backend not in _IDENTITY_KIND:
        raise HonestFaceError(f"the model was trained with the face recogniser '{identity_backend}', which this node "
                              f"pack does not know; choose one of {', '.join(IDENTITY_BACKENDS)} as the face "
                              "recogniser on the Face Analysis Loader")

    def build():
        extra = {}
        if identity_model != DEFAULT_MODEL and not identity_backend.startswith("dlib"):
            extra["model"] = resolve_identity_model(identity_model)
        return load_identity_backend(identity_backend, models_dir=models_root_for(_IDENTITY_KIND[identity_backend]),
                                     device=str(resolve_device(device)), **extra)

    return MODEL_CACHE.get(("identity", identity_backend, identity_model, device), build)


def build_face_analysis(landmark_backend: str, identity_backend: str, detector: str, device: str,
                        identity_model: str = DEFAULT_MODEL) -> FaceAnalysis:
    """The loader's backends. With ``identity_backend`` "from model" the recogniser is loaded
    later, by the node that also has the model (:meth:`FaceAnalysis.for_model`)."""
    from honestface.face import load_face_detector, load_landmark_backend

    torch_device = str(resolve_device(device))
    landmarks = load_landmark_backend(landmark_backend, models_dir=models_root_for(_LANDMARK_KIND[landmark_backend]),
                                      device=torch_device)
    load_identity = partial(build_identity, identity_model=identity_model, device=device)
    identity = None if identity_backend == FROM_MODEL else load_identity(identity_backend)
    family, _, variant = detector.partition("-")
    detector_kind = "insightface" if family == "insightface" else "dlib"
    face_detector = load_face_detector(family, models_dir=models_root_for(detector_kind), device=torch_device,
                                       **({"model": variant} if variant else {}))
    return FaceAnalysis(landmarks=landmarks, identity=identity, detector=face_detector,
                        description=f"landmarks={landmark_backend}, identity={identity_backend}, detector={detector}",
                        load_identity=load_identity if identity is None else None)


def face_analysis_input(tooltip: str, optional: bool = False) -> io.Input:
    return FaceAnalysisType.Input("face_analysis", display_name="face analysis", optional=optional,
                                  tooltip=f"From 'HonestFace Face Analysis Loader': {tooltip}")


class HonestFaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceAnalysisLoader",
            display_name="HonestFace Face Analysis Loader",
            category=CATEGORY,
            description=(
                "Loads the face-analysis tools the other HonestFace nodes use: a landmark detector (68 points and "
                "their heatmaps), a face recogniser (identity embeddings) and a face detector for whole photos. "
                "dlib works offline with the weights of its pip package; FAN weights go in models/face_alignment, "
                "ArcFace ONNX packs in models/insightface/models/<pack>, AdaFace and arcface_torch files next to "
                "them (models/insightface/models/adaface/, .../arcface_torch/). Loaded tools stay cached until "
                "'HonestFace Unload Models' runs."),
            inputs=[
                io.Combo.Input("landmark_backend", options=LANDMARK_CHOICES, default="dlib",
                               display_name="landmark detector", tooltip=(
                    "68-point landmarks and heatmaps: dlib (offline) or face-alignment's FAN (weights in "
                    "models/face_alignment).")),
                io.Combo.Input("identity_backend", options=IDENTITY_CHOICES, default=FROM_MODEL,
                               display_name="face recogniser", tooltip=(
                    "Face recogniser for identity embeddings. 'from model' (recommended): the recogniser the "
                    "HonestFace model was trained with, read from its checkpoint when a node gets both (the "
                    "built-in nano model: dlib-torch); without a model (scoring) dlib. Or choose one: dlib 128-d "
                    "(offline; dlib-torch runs the same network in PyTorch, batched and on the GPU), ArcFace "
                    "(insightface ONNX pack or the same network in PyTorch) or AdaFace; it must match the model's.")),
                io.Combo.Input("identity_model", options=identity_model_choices(), default=DEFAULT_MODEL,
                               display_name="recogniser weights", tooltip=(
                    "Weights of the face recogniser: default (ArcFace: insightface/models/buffalo_l/w600k_r50.onnx), "
                    "another insightface ONNX file, or an arcface_torch .pth / AdaFace .ckpt from models/insightface "
                    "(models/facerestore_models, their old place, is still read). Ignored by dlib.")),
                io.Combo.Input("detector", options=DETECTOR_CHOICES, default="dlib-hog",
                               display_name="face detector", tooltip=(
                    "Face detector for whole photos: dlib HOG (fast), dlib MMOD CNN (more robust, slower on CPU) or "
                    "insightface SCRFD (models/insightface/models/buffalo_l/det_10g.onnx; 5 points, refined by the "
                    "landmark detector).")),
                io.Combo.Input("device", options=DEVICE_CHOICES, default="auto", tooltip=(
                    "auto: the device ComfyUI uses for models; cpu: keep the face-analysis tools on the CPU.")),
            ],
            outputs=[FaceAnalysisType.Output("face_analysis", display_name="face analysis", tooltip=(
                "Landmark detector, face recogniser and face detector for the other HonestFace nodes."))],
        )

    @classmethod
    def execute(cls, landmark_backend, identity_backend, identity_model, detector, device) -> io.NodeOutput:
        key = ("face_analysis", landmark_backend, identity_backend, identity_model, detector, device)
        analysis = MODEL_CACHE.get(key, lambda: build_face_analysis(landmark_backend, identity_backend, detector,
                                                                    device, identity_model))
        return io.NodeOutput(analysis)


class HonestFaceAlignFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceAlignFace",
            display_name="HonestFace Align Face",
            category=CATEGORY,
            description=("Finds faces in photos and returns FFHQ-style aligned crops (the input HonestFace restores, "
                         "and the form references must have). One crop per photo: the face at the chosen number "
                         "(0 = the largest)."),
            inputs=[
                face_analysis_input("its face detector finds the faces, its landmarks align them."),
                io.Image.Input("images", display_name="photos", tooltip="Photos (a batch); each must contain a face."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8, display_name="crop size (px)",
                             tooltip="Side of the aligned square crop in pixels (HonestFace works at 512)."),
                io.Int.Input("face_index", default=0, min=0, max=63, display_name="face number",
                             tooltip="Which face of each photo: 0 = the largest, 1 = the next, ..."),
            ],
            outputs=[io.Image.Output("aligned_faces", display_name="aligned faces",
                                     tooltip="Aligned face crops, size x size, one per input photo.")],
        )

    @classmethod
    def execute(cls, face_analysis, images, size, face_index) -> io.NodeOutput:
        from honestface.face.align import align_face

        photos = comfy_to_images(images, "images")
        progress = comfy_progress(photos.shape[0])
        crops = []
        for i, photo in enumerate(photos):
            faces = face_analysis.detector.detect(photo)
            if len(faces) <= face_index:
                what = f"choose a face number below {len(faces)}" if faces else FACE_ADVICE
                raise NoFaceError(f"image {i} of the batch has {len(faces)} face(s); face number {face_index} does "
                                  f"not exist: {what}")
            landmarks = torch.as_tensor(faces[face_index].landmarks, dtype=torch.float32)
            crop, _ = align_face(photo, landmarks, size)
            crops.append(crop.reshape(3, size, size))
            progress(i + 1, photos.shape[0])
        return io.NodeOutput(images_to_comfy(torch.stack(crops)))


class HonestFaceMFAMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceMFAMask",
            display_name="HonestFace Facial Region Mask",
            category=CATEGORY,
            description=("The mask of the facial regions (eyes, brows, nose, mouth, contour) that the masked face "
                         "alignment loss attends to (MFA, paper Eq. 10-11): the landmark heatmaps of each face "
                         "averaged, sharpened with 1 - exp(-k M) and scaled to 0..1. Outputs the MASK and an "
                         "overlay, which the node also shows."),
            inputs=[
                face_analysis_input("its landmark detector makes the heatmaps."),
                io.Image.Input("images", display_name="aligned faces",
                               tooltip="Aligned faces (a batch), e.g. the low-quality inputs."),
                io.Float.Input("k", default=10.0, min=0.01, max=1000.0, step=0.5, display_name="sharpness",
                               tooltip="Sharpening constant k of Eq. 11: larger values widen and saturate the "
                                       "mask (paper: 10)."),
                io.Float.Input("overlay_strength", default=0.6, min=0.0, max=1.0, step=0.05,
                               display_name="overlay strength",
                               tooltip="How strongly the overlay preview tints the masked regions."),
            ],
            outputs=[
                io.Mask.Output("mask", display_name="region mask",
                               tooltip="Facial-region mask in [0, 1] (M of Eq. 11), same size as the faces."),
                io.Image.Output("overlay", display_name="overlay", tooltip="The faces tinted where the mask is high (also shown on the node)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, face_analysis, images, k, overlay_strength) -> io.NodeOutput:
        from honestface.mfa import mask_overlay, mfa_mask_from_images

        faces = comfy_to_images(images, "images")
        progress = comfy_progress(faces.shape[0])
        masks = []
        for i in range(faces.shape[0]):
            masks.append(mfa_mask_from_images(faces[i:i + 1], face_analysis.landmarks, k=k))
            progress(i + 1, faces.shape[0])
        mask = torch.cat(masks).float()
        overlay = mask_overlay(faces, mask, alpha=overlay_strength)
        return io.NodeOutput(masks_to_comfy(mask), images_to_comfy(overlay), ui=preview_on_node(cls, overlay))


def face_landmarks(face_analysis: FaceAnalysis, images: torch.Tensor, what: str) -> torch.Tensor:
    """(B, 68, 2) landmarks of aligned faces; an error naming the faces without any, and what to do."""
    with torch.no_grad():
        points = face_analysis.landmarks.landmarks(images).float().cpu()
    try:
        return require_landmarks(points, what)
    except NoFaceError as error:
        raise NoFaceError(f"{error}: {FACE_ADVICE}") from error


#: The paper's Table 1 (512 px test sets, ArcFace / landmark models of the paper): A-LD of
#: HonestFace and the range of the earlier reference-based methods, to read a score by.
PAPER_ALD = {"eyes": ((13.4, 13.6), (14.6, 18.7)), "mouth": ((8.7, 9.0), (9.3, 12.0))}
PAPER_SIZE = 512


def score_report(index: int, size: int, ald_e: float, ald_m: float, l2: float, degrees: float,
                 landmark_backend: str, identity_backend: str) -> str:
    """One line per scored face, in words, rounded; A-LD also at the paper's 512 px scale."""
    from honestface.pipeline import identity_match_threshold

    def ald(value: float) -> str:
        if size == PAPER_SIZE:
            return f"{value:.1f}"
        return f"{value:.1f} ({value * (PAPER_SIZE / size) ** 2:.1f} at {PAPER_SIZE} px)"

    try:
        same = f"; same person below {identity_match_threshold(identity_backend):.0f}°"
    except HonestFaceError:
        same = ""
    return (f"image {index}: eye landmark fit {ald(ald_e)}, mouth landmark fit {ald(ald_m)}, "
            f"landmark distance {l2:.2f} px (landmarks: {landmark_backend}); "
            f"identity angle {degrees:.1f}° (recogniser: {identity_backend}{same})")


SCORE_GUIDE = (f"Lower is better for all four. Landmark fit = affine landmark distance (A-LD, Eq. 14-15: squared "
               f"pixels left after the best affine fit, eyes+brows / outer lip); at {PAPER_SIZE} px the paper's "
               f"model scores {PAPER_ALD['eyes'][0][0]}-{PAPER_ALD['eyes'][0][1]} (eyes) and "
               f"{PAPER_ALD['mouth'][0][0]}-{PAPER_ALD['mouth'][0][1]} (mouth), earlier methods "
               f"{PAPER_ALD['eyes'][1][0]}-{PAPER_ALD['eyes'][1][1]} and "
               f"{PAPER_ALD['mouth'][1][0]}-{PAPER_ALD['mouth'][1][1]}. Landmark distance = mean distance of the "
               "68 points (L2-LD). Identity angle = angle between the recogniser's embeddings (Deg.).")


class HonestFaceALDScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceALDScore",
            display_name="HonestFace Face Fidelity Score",
            category=CATEGORY,
            description=("Scores restored faces against ground truth or a reference of the same person: the "
                         "landmark fit of the eyes and of the mouth (affine landmark distance A-LD, paper Eq. "
                         "14-15: ALD-e, ALD-m), the mean landmark distance (L2-LD) and the identity angle (Deg.). "
                         "Lower is better for all four; with batches the values are means over the batch. The "
                         "report says how to read them. The node shows the landmarks: restored (green) and "
                         "reference (red)."),
            inputs=[
                face_analysis_input("landmark detector and face recogniser (with 'from model' the recogniser is "
                                    f"{RECOGNISER_WITHOUT_MODEL}, as no model is connected)."),
                io.Image.Input("restored", display_name="restored faces", tooltip="Restored aligned faces (a batch)."),
                io.Image.Input("reference", display_name="ground truth or reference",
                               tooltip="Ground truth or reference faces: one image, or one per restored face."),
            ],
            outputs=[
                io.Float.Output("ALD_e", display_name="eye landmark fit", tooltip=(
                    "Affine landmark distance on eyes and brows (ALD-e, Eq. 14; landmarks 17-26, 36-47), in squared "
                    "pixels of the restored image; lower is better. At 512 px the paper's model scores about 13.5.")),
                io.Float.Output("ALD_m", display_name="mouth landmark fit", tooltip=(
                    "Affine landmark distance on the outer lip (ALD-m, Eq. 14; landmarks 48-59), in squared pixels; "
                    "lower is better. At 512 px the paper's model scores about 8.9.")),
                io.Float.Output("L2_LD", display_name="landmark distance (px)", tooltip=(
                    "Mean distance of the 68 landmarks in pixels of the restored image (L2-LD); lower is better.")),
                io.Float.Output("Deg", display_name="identity angle (°)", tooltip=(
                    "Angle in degrees between the identity embeddings (Deg.); lower is better. The report gives "
                    "the recogniser's same-person threshold (dlib: 22°).")),
                io.Image.Output("landmarks_overlay", display_name="landmarks overlay", tooltip=(
                    "The restored faces with their landmarks (green) and the reference's (red); also shown on "
                    "the node.")),
                io.String.Output("report", display_name="report", tooltip="The four values in words, one line per image, and how to read "
                                                   "them."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, face_analysis, restored, reference) -> io.NodeOutput:
        from honestface.metrics.identity import identity_angle_degrees
        from honestface.metrics.landmark import affine_landmark_distance, l2_landmark_distance

        face_analysis = face_analysis.for_model(None)
        restored_images = comfy_to_images(restored, "restored")
        reference_images = comfy_to_images(reference, "reference")
        batch = restored_images.shape[0]
        if reference_images.shape[0] not in (1, batch):
            raise ImageError(f"reference has {reference_images.shape[0]} images for {batch} restored faces: give "
                             f"one reference image, or one per restored face")
        if reference_images.shape[0] == 1 and batch > 1:
            reference_images = reference_images.expand(batch, -1, -1, -1)
        progress = comfy_progress(3)
        restored_points = face_landmarks(face_analysis, restored_images, "the restored faces")
        reference_points = face_landmarks(face_analysis, reference_images, "the reference faces")
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
        landmark_name, identity_name = face_analysis.landmarks.name, face_analysis.identity.name
        size = int(restored_images.shape[-1])
        lines = [score_report(i, size, float(ald_e[i]), float(ald_m[i]), float(l2[i]), float(degrees[i]),
                              landmark_name, identity_name) for i in range(batch)]
        progress(3, 3)
        values = [float(v.double().mean()) for v in (ald_e, ald_m, l2, degrees)]
        for name, value in zip(("eye landmark fit", "mouth landmark fit", "landmark distance", "identity angle"),
                               values):
            if not math.isfinite(value):
                raise NoFaceError(f"the {name} is not finite: the landmark detector or the face recogniser failed "
                                  f"on a face; {FACE_ADVICE}")
        # Rounded: these are read, and finer digits than the landmark detector's precision mean nothing.
        values = [round(value, 4) for value in values]
        return io.NodeOutput(*values, images_to_comfy(overlay), "\n".join(lines + [SCORE_GUIDE]),
                             ui=preview_on_node(cls, overlay))


class HonestFaceUnloadModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceUnloadModels",
            display_name="HonestFace Unload Models",
            category=CATEGORY,
            description=("Frees every HonestFace model cached by the loader nodes and asks ComfyUI to move loaded "
                         "models off the GPU. Connect any output to 'run after' to run it after the node that makes "
                         "that output. ComfyUI's own cache of node outputs keeps the last loader results until the "
                         "graph changes (or until 'Free model and node cache' in the menu)."),
            inputs=[io.AnyType.Input("trigger", optional=True, display_name="run after", tooltip=(
                "Optional: any output; makes this node run after the node that produces it."))],
            outputs=[io.Int.Output("models_unloaded", display_name="models released",
                                   tooltip="How many cached HonestFace models were released.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # never equal to itself: always runs

    @classmethod
    def execute(cls, trigger=None) -> io.NodeOutput:
        count = unload_all()
        return io.NodeOutput(count, ui=ui.PreviewText(f"released {count} HonestFace model(s)"))
