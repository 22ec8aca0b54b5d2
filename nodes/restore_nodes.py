"""Restoration nodes: model loader, identity embedder, visual tokens, reference selector
(Eq. 6), one-step restoration of aligned faces and of whole photos."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from honestface.errors import ConfigError, HonestFaceError, MissingModelFileError, NoFaceError
from honestface.face.photo import MASK_SHAPES, PASTE_MODES, PasteMask
from honestface.face.photo import ORDERS as FACE_ORDERS
from honestface.paths import NANO_WEIGHTS, PACKAGED_WEIGHTS_DIR

from .analysis_nodes import DEFAULT_MODEL, FACE_ADVICE, build_face_analysis, face_analysis_input, face_landmarks
from .comfy_io import (DEVICE_CHOICES, DTYPE_CHOICES, comfy_progress, comfy_to_images, images_to_comfy,
                       masks_for_images, masks_to_comfy, preview_on_node, resolve_device, resolve_dtype)
from .handles import FROM_MODEL, MODEL_CACHE, FaceAnalysis, ModelHandle
from .model_folders import find_in_folders, list_files, list_subfolders
from .v3 import CATEGORY, HonestFaceModel, IdentityType, VisualTokensType, io, ui

logger = logging.getLogger("honestface.comfyui")

#: What marks an OSDFace release folder inside models/honestface.
OSDFACE_MARKER = "pytorch_lora_weights.safetensors"
NONE = "none"
AUTO = "auto"


def base_model_choices() -> list[str]:
    """SD 2.1-base: single files in models/checkpoints, then diffusers folders in models/diffusers,
    then "none" (for weights that bundle their own UNet and VAE)."""
    files = [f for f in list_files("checkpoints") if f.lower().endswith((".safetensors", ".ckpt"))]
    folders = list_subfolders("diffusers", ("unet", "vae"))
    return files + [f for f in folders if f not in files] + [NONE]


def weights_choices() -> list[str]:
    """HonestFace checkpoints (.safetensors files) and OSDFace release folders in models/honestface,
    then the demonstration model shipped with the pack."""
    files = [f for f in list_files("honestface") if f.lower().endswith(".safetensors")
             and not f.endswith(OSDFACE_MARKER)]
    choices = files + list_subfolders("honestface", (OSDFACE_MARKER,))
    if (PACKAGED_WEIGHTS_DIR / NANO_WEIGHTS).is_file() and NANO_WEIGHTS not in choices:
        choices.append(NANO_WEIGHTS)
    return choices


def resolve_weights(name: str) -> Path:
    """A file or folder in models/honestface, else a model shipped with the pack."""
    try:
        return find_in_folders("honestface", name, "HonestFace / OSDFace weights")
    except MissingModelFileError:
        if (PACKAGED_WEIGHTS_DIR / name).is_file():
            return PACKAGED_WEIGHTS_DIR / name
        raise


def resolve_base_model(name: str):
    if name in list_files("checkpoints"):
        return find_in_folders("checkpoints", name, "SD 2.1-base checkpoint")
    return find_in_folders("diffusers", name, "SD 2.1-base diffusers folder")


def build_model(base_model: str, weights: str, osdface_folder: str, dtype: str, device: str) -> ModelHandle:
    from honestface.acceleration import float32_parts
    from honestface.loaders import model_files
    from honestface.pipeline import HonestFacePipeline

    weights_path = resolve_weights(weights)
    is_osdface = weights_path.is_dir()
    # weights that bundle their UNet and VAE ignore the base model (the loader logs it)
    sd21 = None if base_model == NONE else resolve_base_model(base_model)
    if osdface_folder == AUTO:
        if is_osdface:
            osdface_dir = weights_path
        else:
            folders = list_subfolders("honestface", (OSDFACE_MARKER,))
            osdface_dir = find_in_folders("honestface", folders[0], "OSDFace folder") if folders else None
    elif osdface_folder == NONE:
        osdface_dir = weights_path if is_osdface else None
    else:
        osdface_dir = find_in_folders("honestface", osdface_folder, "OSDFace folder (VQ encoder)")
    checkpoint = None if is_osdface else weights_path
    files = model_files.resolve_model_files(sd21=sd21, checkpoint=checkpoint, osdface_dir=osdface_dir,
                                            find=lambda name, what: find_in_folders("honestface", name, what))
    load_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, load_device)
    # Built on the CPU (ComfyUI moves it when a node needs it), in the precision policy of the
    # device it will compute on: a GPU runs every part in torch_dtype.
    pipeline = HonestFacePipeline(model_files.build_model(files), device="cpu", dtype=torch_dtype,
                                  keep_float32=float32_parts(load_device, torch_dtype))
    kind = "OSDFace (no references)" if checkpoint is None else "HonestFace"
    return ModelHandle(pipeline=pipeline, module=pipeline.model, load_device=load_device,
                           offload_device=torch.device("cpu"), dtype=torch_dtype,
                           description=f"{kind}: {weights}{'' if files.sd21 is None else ' on ' + base_model} "
                                       f"({torch_dtype}, {load_device})")


def _file_state(path: Path) -> tuple:
    """(path, size, mtime) of a file, or of each file of a folder: changes when a file is replaced."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def weights_fingerprint(base_model: str, weights: str, osdface_folder: str) -> tuple | None:
    """The state of the files a Model Loader setting reads (None where one is missing: the
    loader reports it). A file replaced under the same name makes ComfyUI run the loader again,
    and the loader build the model again."""
    try:
        parts = [_file_state(resolve_weights(weights))]
        if base_model != NONE:
            parts.append(_file_state(resolve_base_model(base_model)))
        if osdface_folder not in (AUTO, NONE):
            parts.append(_file_state(find_in_folders("honestface", osdface_folder, "OSDFace folder")))
    except (MissingModelFileError, OSError):
        return None
    return tuple(parts)


class HonestFaceModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceModelLoader",
            display_name="HonestFace Model Loader",
            category=CATEGORY,
            description=(
                "Loads the one-step restoration model: Stable Diffusion 2.1-base (a checkpoint file in "
                "models/checkpoints, e.g. v2-1_512-ema-pruned.safetensors, or a diffusers folder in models/diffusers) "
                "plus HonestFace weights (a .safetensors file in models/honestface) or an OSDFace release folder in "
                "models/honestface (restoration without references). honestface-nano.safetensors ships with the "
                "pack: a small 128 px demonstration model that needs no other file. The model stays cached between "
                "runs until 'HonestFace Unload Models' runs (or its file changes); ComfyUI moves it to and from the "
                "GPU as memory requires."),
            inputs=[
                io.Combo.Input("base_model", options=base_model_choices(), display_name="Stable Diffusion 2.1 base",
                               tooltip=(
                    "Stable Diffusion 2.1-base: a single .safetensors/.ckpt file from models/checkpoints or a "
                    "diffusers folder (with unet/ and vae/) from models/diffusers. 'none' (or any choice) for "
                    "weights that bundle their own UNet and VAE, like honestface-nano.")),
                io.Combo.Input("weights", options=weights_choices(), display_name="restoration weights", tooltip=(
                    "HonestFace checkpoint (.safetensors in models/honestface) or an OSDFace release folder "
                    "(models/honestface/<folder> with pytorch_lora_weights.safetensors, embedding_change_weights.pth, "
                    "associate_2.ckpt) for restoration without references. honestface-nano.safetensors ships with "
                    "the pack: a small 128 px demonstration model that needs no other file (not the paper's model).")),
                io.Combo.Input("osdface_folder", options=[AUTO, NONE] + list_subfolders("honestface", (OSDFACE_MARKER,)),
                               default=AUTO, display_name="OSDFace folder (visual tokens)", tooltip=(
                    "OSDFace release folder that supplies the VQ encoder of the visual tokens (VRE, Eq. 7) for a "
                    "HonestFace checkpoint. auto: the chosen OSDFace folder, else the first one found.")),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto", display_name="precision", tooltip=(
                    "Model precision. auto: bfloat16 on CPUs with native bf16 (AVX512-BF16 or AMX; the UNet and the "
                    "VAE encoder stay float32 with bf16 math), float32 on other CPUs; on GPUs that handle reduced "
                    "precision well bfloat16 where supported, else float16.")),
                io.Combo.Input("device", options=DEVICE_CHOICES, default="auto", tooltip=(
                    "auto: the device ComfyUI's model management uses (respects --cpu, --lowvram ...).")),
            ],
            outputs=[HonestFaceModel.Output("model", display_name="model", tooltip=(
                "The restoration model for the HonestFace restore and embedding nodes."))],
        )

    @classmethod
    def fingerprint_inputs(cls, base_model, weights, osdface_folder, dtype, device):
        return (weights_fingerprint(base_model, weights, osdface_folder), dtype, device)

    @classmethod
    def validate_inputs(cls, base_model=None, weights=None):
        """Refuses model files that are not installed when the prompt is queued (ComfyUI
        0.3.75 does not check the choices of V3 combo inputs itself)."""
        if weights is not None and weights not in weights_choices():
            return (f"restoration weights '{weights}' not found in models/honestface: put the file (or OSDFace "
                    f"release folder) there and press R to refresh, or pick an installed one")
        if base_model is not None and base_model not in base_model_choices():
            return (f"Stable Diffusion 2.1 base '{base_model}' not found in models/checkpoints or "
                    "models/diffusers: put it there and press R to refresh, or pick an installed one")
        return True

    @classmethod
    def execute(cls, base_model, weights, osdface_folder, dtype, device) -> io.NodeOutput:
        key = ("model", base_model, weights, osdface_folder, dtype, device,
               weights_fingerprint(base_model, weights, osdface_folder))
        model = MODEL_CACHE.get(key, lambda: build_model(base_model, weights, osdface_folder, dtype, device))
        return io.NodeOutput(model)


def model_input(tooltip: str = "") -> io.Input:
    return HonestFaceModel.Input("model", tooltip=f"From 'HonestFace Model Loader'{tooltip}.")


def require_references_support(model: ModelHandle) -> None:
    if not getattr(model.pipeline.model, "accepts_references", True):
        raise HonestFaceError(f"{model.description} restores without references; load a HonestFace checkpoint "
                              "(.safetensors in models/honestface) to use references")


def analysis_for(model: ModelHandle, face_analysis: FaceAnalysis | None) -> FaceAnalysis | None:
    """The analysis with a recogniser: for "from model", the one ``model`` was trained with
    (its checkpoint's ``identity_backend``)."""
    if face_analysis is None:
        return None
    return face_analysis.for_model(model.pipeline.model.config.identity_backend)


def make_pipeline(model: ModelHandle, face_analysis: FaceAnalysis | None, with_references: bool = False):
    """The cached model, loaded onto its device, with this run's face-analysis backends.

    The face recogniser only matters with references (the FIE embeds them), so it is
    attached (and its embedding size checked against the model) only then; give the
    analysis of :func:`analysis_for`.
    """
    from honestface.pipeline import HonestFacePipeline

    model.ready()
    use_analysis = face_analysis is not None and with_references
    try:
        return HonestFacePipeline(model.pipeline.model,
                                  landmark_backend=face_analysis.landmarks if use_analysis else None,
                                  identity_backend=face_analysis.identity if use_analysis else None,
                                  device=model.load_device, dtype=model.dtype,
                                  batch_size=model.pipeline.batch_size)
    except ConfigError as error:  # the recogniser does not fit the model: say where to change it
        raise ConfigError(f"{error} (on the Face Analysis Loader: face recogniser '{FROM_MODEL}' picks it)") from error


@dataclass
class IdentityConditioning:
    """HONESTFACE_IDENTITY: one person's references, encoded once, and what the IDE chose.

    ``references`` is the pipeline's :class:`~honestface.pipeline.ReferenceSet` (aligned
    crops at the model size, their landmarks, identity embeddings and IDE tokens), computed
    once by the Identity Embedder. The restore nodes hand the same object to every face they
    restore, so neither the landmarks, the recogniser nor the IDE run again. ``reference_index``
    and the chosen tokens are the IDE's output for the LQ faces the embedder was given (None
    without them), kept for inspection.
    """

    references: Any  # honestface.pipeline.ReferenceSet
    analysis: str  # FaceAnalysis.description the set was encoded with
    notes: list[str] = field(default_factory=list)  # reference photos dropped or aligned
    reference_index: torch.Tensor | None = None  # (B,) r0 of Eq. 6 per LQ face
    feature_tokens: torch.Tensor | None = None  # (B, n1, k) p_F
    identity_tokens: torch.Tensor | None = None  # (B, n2, k) p_I

    def for_faces(self, pipeline, face_analysis: FaceAnalysis | None, count: int) -> list:
        """The set once per face, after checking it fits this model and these backends."""
        size = int(self.references.images.shape[-1])
        if size != pipeline.image_size:
            raise HonestFaceError(f"'identity' was encoded for a {size} px model but this model restores "
                                  f"{pipeline.image_size} px faces: give both nodes the same model")
        if face_analysis is not None and face_analysis.description != self.analysis:
            # Both descriptions are of analyses resolved for the model (analysis_for).
            raise HonestFaceError(f"'identity' was encoded with face analysis ({self.analysis}) but this node has "
                                  f"({face_analysis.description}): give both nodes the same face analysis")
        return [self.references] * count


def encode_reference_photos(pipeline, face_analysis: FaceAnalysis, images: torch.Tensor):
    """Reference photos or aligned crops (N, 3, H, W) -> (ReferenceSet, notes), computed once.

    Photos get their largest face detected and aligned; aligned crops are resized; images
    without a face are dropped with a note. No face in any of them is an error: references
    were given to be used.
    """
    from honestface.face.references import align_reference_photos

    names = [f"reference {i}" for i in range(images.shape[0])]
    aligned = align_reference_photos(list(images), pipeline.image_size, face_analysis.detector,
                                     face_analysis.landmarks, names=names)
    notes = list(aligned.notes)
    if aligned.images.shape[0] == 0:
        raise NoFaceError(f"no face found in any of the {len(names)} reference image(s) ({'; '.join(notes)}): "
                          f"give photos of the person where the face is clearly visible (about 64 px or more "
                          f"across), or try the face detector 'dlib-mmod' or 'insightface' on the Face Analysis Loader")
    return pipeline.encode_references(aligned.images), notes


def reference_eye_patches(pipeline, images: torch.Tensor, landmarks: torch.Tensor | None) -> torch.Tensor:
    """The eye patches the facial feature extractor sees, side by side: (B, 3, s, 2s)."""
    from honestface.models.ide import crop_eye_patches, eye_boxes

    config = pipeline.config.ide
    boxes = eye_boxes(landmarks, tuple(images.shape[-2:]), config.eye_margin, batch=images.shape[0])
    patches = crop_eye_patches(images, boxes, config.eye_patch_size)  # (B, 2, 3, s, s)
    return torch.cat([patches[:, 0], patches[:, 1]], dim=-1)




class HonestFaceIdentityEmbedder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceIdentityEmbedder",
            display_name="HonestFace Identity Embedder",
            category=CATEGORY,
            description=(
                "Encodes the reference images of one person once (the identity embedder, IDE): ordinary photos "
                "(the largest face is detected and aligned) or aligned faces, with their landmarks and the face "
                "recogniser. The identity output carries them to the restore nodes and the Reference Selector, "
                "which reuse them for every face. With a low-quality face it also shows which reference has the "
                "closest landmark fit (Eq. 6), the one the model looks at, and the eye patches it sees."),
            inputs=[
                model_input(" (a HonestFace checkpoint)"),
                face_analysis_input("face detector (faces in reference photos), landmarks (reference choice, eye "
                                    "crops) and the face recogniser ('from model' follows the checkpoint)."),
                io.Image.Input("references", display_name="reference images", tooltip=(
                    "Images of the same person (a batch, any number): ordinary photos (the largest face is used) "
                    "or aligned faces. Images without a face are dropped with a note in the report.")),
                io.Image.Input("lq_face", optional=True, display_name="low-quality face", tooltip=(
                    "Optional: the aligned low-quality face(s), to see which reference is chosen for each by "
                    "landmark fit (Eq. 6). Not needed for restoring.")),
            ],
            outputs=[
                IdentityType.Output("identity", display_name="identity", tooltip=(
                    "The encoded references (computed once) for the restore nodes and the Reference Selector.")),
                io.Image.Output("chosen_reference", display_name="chosen reference", tooltip=(
                    "The reference chosen by landmark fit (Eq. 6) for each low-quality face; without one, every "
                    "aligned reference.")),
                io.Image.Output("eye_patches", display_name="eye patches", tooltip=(
                    "Left and right eye of the chosen reference(s), as the model's feature extractor sees them.")),
                io.String.Output("report", display_name="report", tooltip=(
                    "References kept, dropped or aligned, and the reference chosen for each low-quality face.")),
            ],
        )

    @classmethod
    def execute(cls, model, face_analysis, references, lq_face=None) -> io.NodeOutput:
        require_references_support(model)
        face_analysis = analysis_for(model, face_analysis)
        refs = comfy_to_images(references, "references")
        pipeline = make_pipeline(model, face_analysis, with_references=True)
        progress = comfy_progress(3)
        reference_set, notes = encode_reference_photos(pipeline, face_analysis, refs)
        progress(1, 3)
        lines = [f"{reference_set.images.shape[0]} of {refs.shape[0]} reference image(s) used "
                 f"(recogniser: {face_analysis.identity.name})"] + notes
        conditioning = IdentityConditioning(references=reference_set, analysis=face_analysis.description,
                                            notes=notes)
        if lq_face is None:
            chosen, chosen_landmarks = reference_set.images, reference_set.landmarks
        else:
            choice = pipeline.choose_references(comfy_to_images(lq_face, "lq_face"),
                                                conditioning.for_faces(pipeline, face_analysis, lq_face.shape[0]))
            index = choice.reference_index
            chosen = reference_set.images[index]  # (B, 3, S, S)
            chosen_landmarks = None if reference_set.landmarks is None else reference_set.landmarks[index]
            conditioning.reference_index = index
            conditioning.feature_tokens = choice.feature_tokens
            conditioning.identity_tokens = choice.identity_tokens
            lines += [f"low-quality face {i}: uses reference {int(j)} (closest landmark fit)"
                      for i, j in enumerate(index)]
        progress(2, 3)
        eyes = reference_eye_patches(pipeline, chosen, chosen_landmarks)
        progress(3, 3)
        return io.NodeOutput(conditioning, images_to_comfy(chosen), images_to_comfy(eyes), "\n".join(lines),
                             ui=preview_on_node(cls, chosen, eyes))


class HonestFaceVisualTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceVisualTokens",
            display_name="HonestFace Visual Tokens",
            category=CATEGORY,
            description=(
                "Shows how the model reads a low-quality face (the visual representation embedder, VRE, Eq. 7): "
                "the VQ encoder describes the face with entries of a learned codebook, and the most confident "
                "different entries become the visual prompt (p_L). Outputs the tokens and a report of how many "
                "different entries each face uses. The restore nodes compute the same tokens themselves; this "
                "node is for inspection."),
            inputs=[
                model_input(),
                io.Image.Input("lq_face", display_name="low-quality face", tooltip="Aligned low-quality face(s)."),
            ],
            outputs=[
                VisualTokensType.Output("visual_tokens", display_name="visual tokens", tooltip=(
                    "The visual prompt tokens (p_L of Eq. 7), a (faces, tokens, channels) tensor.")),
                io.String.Output("report", display_name="report", tooltip="How many different codebook entries describe each face."),
            ],
        )

    @classmethod
    def execute(cls, model, lq_face) -> io.NodeOutput:
        lq = comfy_to_images(lq_face, "lq_face")
        pipeline = make_pipeline(model, None)
        prepared = pipeline.prepare_images(lq, "lq_face").to(pipeline.device, pipeline.dtype)
        progress = comfy_progress(lq.shape[0])
        outputs = []
        for i in range(prepared.shape[0]):
            with torch.no_grad():
                outputs.append(pipeline.model.vre(prepared[i:i + 1] * 2.0 - 1.0))
            progress(i + 1, prepared.shape[0])
        tokens = torch.cat([o.tokens.float().cpu() for o in outputs])
        lines = [f"face {i}: described by {int(o.valid.sum())} different codebook entries "
                 f"({o.valid.shape[1]} token slots)" for i, o in enumerate(outputs)]
        lines.append("Few different entries: little detail the model can read from the face (very blurred or "
                     "small); the visual prompt then carries little of it.")
        return io.NodeOutput(tokens, "\n".join(lines))


class HonestFaceReferenceSelector(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceReferenceSelector",
            display_name="HonestFace Reference Selector",
            category=CATEGORY,
            description=(
                "Picks, for each low-quality face, the reference with the closest landmark fit (smallest affine "
                "landmark distance A-LD on eyes and brows, paper Eq. 6): the reference HonestFace's feature "
                "extractor looks at. Takes aligned reference faces, or the identity from the Identity Embedder "
                "(its references and landmarks are reused, not measured again). Shows the chosen reference on "
                "the node."),
            inputs=[
                face_analysis_input("its landmark detector measures the faces."),
                io.Image.Input("lq_face", display_name="low-quality face", tooltip="The aligned low-quality face(s)."),
                io.Combo.Input("subset", options=["eyes", "mouth", "all"], default="eyes",
                               display_name="landmarks compared", tooltip=(
                    "Landmarks of the fit: eyes and brows (the paper's choice, Eq. 6), outer lip, or all 68.")),
                io.Image.Input("references", optional=True, display_name="reference faces", tooltip=(
                    "Candidate references (aligned faces, a batch). Connect this or 'identity'.")),
                IdentityType.Input("identity", optional=True, tooltip=(
                    "From 'HonestFace Identity Embedder': its encoded references (photos already aligned). "
                    "Connect this or 'reference faces'.")),
            ],
            outputs=[
                io.Image.Output("best_reference", display_name="chosen reference", tooltip=(
                    "The reference chosen by landmark fit (Eq. 6) for each low-quality face.")),
                io.Int.Output("index", display_name="index", tooltip="Its number in the reference batch, for the first low-quality face."),
                io.String.Output("distances", display_name="landmark fit per reference", tooltip=(
                    "The landmark fit (A-LD, squared pixels; smaller = closer) of every reference, one line per "
                    "low-quality face.")),
            ],
        )

    @classmethod
    def execute(cls, face_analysis, lq_face, subset, references=None, identity=None) -> io.NodeOutput:
        from honestface.metrics.landmark import affine_landmark_distance
        from honestface.models.ide import select_reference

        if (references is None) == (identity is None):
            raise HonestFaceError("connect either 'reference faces' (aligned faces) or 'identity' (from the Identity "
                                  "Embedder), not both and not neither: connect exactly one of them")
        lq = comfy_to_images(lq_face, "lq_face")
        progress = comfy_progress(2)
        lq_points = face_landmarks(face_analysis, lq, "the low-quality face")
        with torch.no_grad():
            if identity is not None:
                refs, ref_points = identity.references.images, identity.references.landmarks
                if ref_points is None:
                    raise HonestFaceError("'identity' was encoded without landmarks: encode the references again "
                                          "with the Identity Embedder")
            else:
                refs = comfy_to_images(references, "references")
                ref_points = face_analysis.landmarks.landmarks(refs).float().cpu()  # (N, 68, 2), NaN = no face
        progress(1, 2)
        if not torch.isfinite(ref_points).flatten(1).all(dim=1).any():
            raise NoFaceError(f"no face landmarks found in any reference image: {FACE_ADVICE}")
        # Both are aligned crops; compare in the LQ face's pixel frame.
        ref_points = ref_points * torch.tensor([lq.shape[-1] / refs.shape[-1], lq.shape[-2] / refs.shape[-2]])
        batch, count = lq.shape[0], refs.shape[0]
        all_refs = ref_points.unsqueeze(0).expand(batch, -1, -1, -1)
        mask = torch.ones(batch, count, dtype=torch.bool)
        index = select_reference(lq_points, all_refs, mask, subset=subset)
        distances = affine_landmark_distance(all_refs.double(), lq_points.double().unsqueeze(1), subset=subset)
        progress(2, 2)
        lines = [", ".join(f"reference {j}: {float(d):.3f}" for j, d in enumerate(row)) for row in distances]
        best = refs[index]
        return io.NodeOutput(images_to_comfy(best), int(index[0]), "\n".join(lines), ui=preview_on_node(cls, best))


COLOR_CHOICES = ["model default", "none", "adain", "wavelet"]


def _color(choice: str) -> str | None:
    return None if choice == "model default" else choice


STRENGTH_TOOLTIP = "0 keeps the input faces, 1 uses the restored faces fully; in between blends the two."
COLOR_TOOLTIP = ("Match the restored colours to the input: AdaIN or wavelet colour transfer, none, or the model's "
                 "setting.")

#: Faces of a batch checked for being aligned crops (a batch is one kind of input: the first
#: ones tell, and a long batch of frames does not wait for a detector on each).
ALIGNMENT_CHECKS = 8


def unaligned_warnings(faces: torch.Tensor, face_analysis: FaceAnalysis | None) -> list[str]:
    """One warning per checked face that does not look like an aligned crop, by the test of
    the CLI's input kind (:func:`honestface.face.input_kind.classify_input`)."""
    from honestface.face.input_kind import classify_input

    if face_analysis is None:  # the check needs a detector: dlib's, offline, as the loader's default
        face_analysis = MODEL_CACHE.get(("face_analysis", "dlib", FROM_MODEL, DEFAULT_MODEL, "dlib-hog", "cpu"),
                                        lambda: build_face_analysis("dlib", FROM_MODEL, "dlib-hog", "cpu"))
    warnings = []
    for i, face in enumerate(faces[:ALIGNMENT_CHECKS]):
        kind = classify_input(face, face_analysis.detector, face_analysis.landmarks)
        if kind.kind != "aligned":
            warnings.append(f"input {i} does not look like an aligned face crop ({kind.reason}): this node restores "
                            "FFHQ-aligned square face crops and gives a blurred face for anything else; for an "
                            "ordinary photo use 'HonestFace Restore (whole photo)', or cut the face out first with "
                            "'HonestFace Align Face'")
    return warnings


class HonestFaceRestoreAligned(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceRestoreAligned",
            display_name="HonestFace Restore (aligned face)",
            category=CATEGORY,
            description=(
                "One-step restoration (Eq. 3) of aligned faces (FFHQ-style square crops, e.g. from 'HonestFace "
                "Align Face'; other sizes are resized to the model size and back). With an identity from the "
                "Identity Embedder the model sees the references too (HonestFace), encoded once for the whole "
                "batch; without it only the face itself (OSDFace). Warns in its report and in the log when an "
                "input does not look like an aligned crop."),
            inputs=[
                model_input(),
                io.Image.Input("lq_face", display_name="low-quality face", tooltip=(
                    "Aligned low-quality face(s), a batch. Ordinary photos: use 'HonestFace Restore (whole photo)'.")),
                io.Combo.Input("color_correction", options=COLOR_CHOICES, default="model default",
                               display_name="colour correction", tooltip=COLOR_TOOLTIP),
                IdentityType.Input("identity", optional=True, display_name="identity (references)", tooltip=(
                    "From 'HonestFace Identity Embedder'; leave empty to restore without references.")),
                face_analysis_input("needed with 'identity' (landmarks and the face recogniser); also checks that "
                                    "the inputs are aligned crops (without it dlib does).", optional=True),
                io.Float.Input("strength", optional=True, default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip=STRENGTH_TOOLTIP),
                io.Combo.Input("fidelity", options=list(FIDELITY), optional=True, default="automatic",
                               display_name="how much to restore", tooltip=FIDELITY_TOOLTIP),
            ],
            outputs=[
                io.Image.Output("restored", display_name="restored face", tooltip="Restored faces, same size as the input."),
                io.String.Output("report", display_name="report", tooltip=(
                    "Warnings about inputs that do not look like aligned face crops, how much of the restoration "
                    "each face got (automatic fidelity) and faces without landmarks.")),
            ],
        )

    @classmethod
    def execute(cls, model, lq_face, color_correction, identity=None, face_analysis=None,
                strength=1.0, fidelity="automatic") -> io.NodeOutput:
        from honestface.pipeline import RestoreInfo

        if identity is not None and face_analysis is None:
            raise HonestFaceError("'identity' needs 'face analysis' too (landmarks and the face recogniser): connect "
                                  "the Face Analysis Loader that the Identity Embedder uses")
        if identity is not None:
            require_references_support(model)
            face_analysis = analysis_for(model, face_analysis)
        lq = comfy_to_images(lq_face, "lq_face")
        warnings = unaligned_warnings(lq, face_analysis)
        for warning in warnings:
            logger.warning("HonestFace Restore (aligned face): %s", warning)
        pipeline = make_pipeline(model, face_analysis, with_references=identity is not None)
        references = None if identity is None else identity.for_faces(pipeline, face_analysis, lq.shape[0])
        info = RestoreInfo()
        restored = pipeline.restore(lq, references=references, progress=comfy_progress(lq.shape[0]),
                                    color_correction=_color(color_correction), strength=float(strength),
                                    fidelity=FIDELITY[fidelity], info=info)
        report = "\n".join(warnings + fidelity_lines(info))
        return io.NodeOutput(images_to_comfy(restored), report,
                             ui=ui.PreviewText(report) if warnings else None)


#: The nodes' words for ``pipeline.restore``'s ``fidelity``.
FIDELITY = {"automatic": None, "off": False}
FIDELITY_TOOLTIP = (
    "automatic: weights that estimate how much each face needs (the built-in honestface-nano) blend the face "
    "with its restoration by that amount, so a sharp face stays as it was and a degraded one is fully "
    "restored; the report gives each face's amount (0 = left as it was, 1 = fully restored). off: the full "
    "restoration, as in the paper. Weights without the estimator always restore fully.")


def fidelity_lines(info) -> list[str]:
    """Report lines for a restore's :class:`~honestface.pipeline.RestoreInfo`."""
    lines = []
    if info.fidelity:
        lines.append("automatic fidelity (0 = left as it was, 1 = fully restored): "
                     + ", ".join(f"face {i}: {w:.2f}" for i, w in enumerate(info.fidelity)))
    if info.landmark_misses:
        lines.append(f"no landmarks found on {info.landmark_misses} face(s) "
                     f"({', '.join(str(i) for i, m in enumerate(info.landmarks_missed) if m)}): their reference "
                     "was chosen with the aligned-crop landmarks; check they are aligned face crops")
    return lines


def parse_indices(text: str) -> list[int] | None:
    """``"all"``/empty -> None; ``"0, 2"`` -> [0, 2]."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise HonestFaceError(f"face_indices must be 'all' or comma-separated numbers like '0, 2', got {text!r}: "
                              "write 'all' or the numbers of the faces to restore")
    if any(v < 0 for v in values):
        raise HonestFaceError(f"face_indices must not be negative, got {values}: number the faces from 0")
    return values


FACE_ORDER_CHOICES = list(FACE_ORDERS)
MASK_SHAPE_CHOICES = list(MASK_SHAPES)
REF_MATCH_CHOICES = ["identity", "all"]
#: The node's words for the library's ``on_no_face`` values.
ON_NO_FACE = {"pass through": "pass", "error": "error"}


def face_selection(face_order: str, min_face_size: int, max_faces: int, face_indices: str, center_only: bool):
    """The node's selection widgets -> the library's :class:`~honestface.face.photo.FaceSelection`
    (which checks the values)."""
    from honestface.face.photo import FaceSelection

    return FaceSelection(order=face_order, min_face_size=int(min_face_size), max_faces=int(max_faces),
                         indices=parse_indices(face_indices), center_only=bool(center_only))


def paste_mask(shape: str, dilate: float, feather: float):
    """The node's mask widgets -> the library's :class:`~honestface.face.photo.PasteMask`."""
    return PasteMask(shape=shape, dilate=float(dilate), feather=float(feather))


def _paste_mask_default(name: str) -> float:
    return float(getattr(PasteMask(), name))


def describe_photo(index: int, result) -> str:
    """One report line per photo: what was found, restored (with references?) and skipped."""
    if result.status == "no face":
        return f"photo {index}: no face found, passed through unchanged"
    restored = [f for f in result.faces if f.restored is not None]
    parts = [f"photo {index}: {len(result.faces)} face(s) found, restored {[f.index for f in restored]}"]
    amounts = [f"face {f.index}: {f.extra['fidelity']:.2f}" for f in restored if "fidelity" in f.extra]
    if amounts:
        parts.append("automatic fidelity (0 = left as it was, 1 = fully restored) " + ", ".join(amounts))
    missed = [str(f.index) for f in restored if getattr(f, "landmarks_missed", False)]
    if missed:
        parts.append(f"no landmarks found on the aligned face(s) {', '.join(missed)} (reference chosen with the "
                     "aligned-crop landmarks)")
    for face in restored:
        distance = "" if face.identity_distance is None else f", identity distance {face.identity_distance:.1f} deg"
        if face.with_references:
            parts.append(f"face {face.index} with references{distance}")
        elif distance:  # measured against the references, and not their person
            parts.append(f"face {face.index} without references{distance}")
    parts += [f"face {f.index} skipped ({f.skipped})" for f in result.faces if f.skipped]
    return "; ".join(parts)


class HonestFaceRestorePhoto(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HonestFaceRestorePhoto",
            display_name="HonestFace Restore (whole photo)",
            category=CATEGORY,
            description=(
                "Restores the faces of whole photos or video frames: detects the faces, chooses them (order, size, "
                "count, numbers, centre face), aligns each to the model's crop, restores the faces of ALL images of "
                "the batch together (with references when given, otherwise OSDFace-style) and pastes them back "
                "with a mask from the face's landmarks. An image without a face passes through unchanged (or stops "
                "the run, if chosen). In a group photo, references go only to the face that matches their "
                "identity. Outputs the photos, the restored faces, a report and a MASK of where faces were pasted."),
            inputs=[
                model_input(),
                face_analysis_input("face detector and landmarks (and the face recogniser with references; "
                                    "'from model' follows the checkpoint)."),
                io.Image.Input("image", display_name="photo", tooltip=(
                    "Photo(s) or video frames with faces; all their faces are restored together.")),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05, tooltip=(
                    "0 keeps the original faces, 1 pastes the restored faces fully.")),
                io.String.Input("face_indices", default="all", display_name="faces to restore", tooltip=(
                    "'all', or the faces to restore as comma-separated numbers in the face order (0 = first: the "
                    "largest with order 'size').")),
                io.Combo.Input("color_correction", options=COLOR_CHOICES, default="model default",
                               display_name="colour correction", tooltip=(
                    "Colour transfer from each input face to its restoration.")),
                io.Image.Input("references", optional=True, display_name="reference images", tooltip=(
                    "Images of ONE person: ordinary photos (the largest face is used) or aligned faces (HonestFace "
                    "checkpoint). Or connect 'identity'.")),
                IdentityType.Input("identity", optional=True, tooltip=(
                    "From 'HonestFace Identity Embedder': references encoded once (instead of 'reference images').")),
                io.Mask.Input("mask", optional=True, display_name="where to paste", tooltip=(
                    "Limits where faces are pasted: 0 keeps the photo, 1 allows the restored face. One mask for all "
                    "images or one per image; resized to the images.")),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), optional=True, default="pass through",
                               display_name="image without a face", tooltip=(
                    "An image without a (selected) face: pass it through unchanged, or stop with an error.")),
                io.Combo.Input("face_order", options=FACE_ORDER_CHOICES, optional=True, default="size",
                               display_name="face order", tooltip=(
                    "Order of the faces (what 'faces to restore' and 'most faces' count): largest first, left to "
                    "right, or by detector confidence.")),
                io.Int.Input("min_face_size", optional=True, default=0, min=0, max=8192, step=1,
                             display_name="smallest face (px)", tooltip=(
                    "Skip faces whose detection box is smaller than this many pixels (0 = keep all).")),
                io.Int.Input("max_faces", optional=True, default=0, min=0, max=1000, step=1,
                             display_name="most faces per image", tooltip=(
                    "Restore at most this many faces per image, the first in the face order (0 = all).")),
                io.Boolean.Input("center_only", optional=True, default=False, display_name="centre face only",
                                 tooltip="Restore only the face closest to the image centre."),
                io.Combo.Input("mask_shape", options=MASK_SHAPE_CHOICES, optional=True, default="hull",
                               display_name="paste mask shape", tooltip=(
                    "Paste-back mask: the convex hull of the face's landmarks, an ellipse fitted to them, or the "
                    "whole aligned square.")),
                io.Float.Input("mask_dilate", optional=True, default=_paste_mask_default("dilate"), min=-0.45,
                               max=0.45, step=0.01, display_name="grow paste mask", tooltip=(
                    "Grow (positive) or shrink (negative) the mask, as a fraction of the aligned crop's side.")),
                io.Float.Input("mask_feather", optional=True, default=_paste_mask_default("feather"), min=0.0,
                               max=0.5, step=0.01, display_name="soft mask edge", tooltip=(
                    "Width of the soft edge of the mask, as a fraction of the aligned crop's side.")),
                io.Combo.Input("ref_match", options=REF_MATCH_CHOICES, optional=True, default="identity",
                               display_name="who gets the references", tooltip=(
                    "identity: in an image with several faces, references go only to the face that matches them "
                    "(identity distance below the threshold, the closest if several; the others are restored "
                    "without). An image with one face always gets them. all: every restored face gets them.")),
                io.Float.Input("match_threshold", optional=True, default=0.0, min=0.0, max=180.0, step=0.5,
                               display_name="same-person threshold (°)", tooltip=(
                    "Largest identity distance (angle between recogniser embeddings, in degrees) that counts as "
                    "the references' person; 0 = the threshold measured for the face recogniser in use (dlib: "
                    "22°).")),
                io.Combo.Input("fidelity", options=list(FIDELITY), optional=True, default="automatic",
                               display_name="how much to restore", tooltip=FIDELITY_TOOLTIP),
                io.Combo.Input("paste", options=list(PASTE_MODES), optional=True, default="change",
                               display_name="paste back", tooltip=(
                    "change: add what the restorer changed to the photo, so a face larger than the model's size "
                    "keeps its own fine detail; replace: put the restored face (at the model's resolution) in its "
                    "place.")),
            ],
            outputs=[
                io.Image.Output("restored_image", display_name="restored photo", tooltip=(
                    "The photos with the restored faces pasted back (images without a face unchanged).")),
                io.Image.Output("restored_faces", display_name="restored faces", tooltip=(
                    "Every restored aligned face (a batch), for inspection; one black image when none was "
                    "restored.")),
                io.String.Output("report", display_name="report", tooltip="Faces found, restored (with references or not) and skipped, "
                                                   "per photo."),
                io.Mask.Output("paste_mask", display_name="paste mask", tooltip=(
                    "Where restored faces were pasted, per photo (0 = photo unchanged, 1 = restored face).")),
            ],
        )

    @classmethod
    def validate_inputs(cls, face_indices=None):
        """Refuses bad face numbers when the prompt is queued, before any model loads."""
        if face_indices is None:  # connected to another node's output: checked when it runs
            return True
        try:
            parse_indices(face_indices)
        except HonestFaceError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, face_analysis, image, strength, face_indices, color_correction, references=None,
                identity=None, mask=None, on_no_face="pass through", face_order="size", min_face_size=0,
                max_faces=0, center_only=False, mask_shape="hull", mask_dilate=None, mask_feather=None,
                ref_match="identity", match_threshold=0.0, fidelity="automatic", paste="change") -> io.NodeOutput:
        from honestface.whole_photo import restore_whole_photos

        if references is not None and identity is not None:
            raise HonestFaceError("connect 'reference images' or 'identity', not both: disconnect one of them")
        selection = face_selection(face_order, min_face_size, max_faces, face_indices, center_only)
        masking = paste_mask(mask_shape, _paste_mask_default("dilate") if mask_dilate is None else mask_dilate,
                             _paste_mask_default("feather") if mask_feather is None else mask_feather)
        photos = comfy_to_images(image, "image")
        count, height, width = photos.shape[0], photos.shape[-2], photos.shape[-1]
        limits = None if mask is None else masks_for_images(mask, count, height, width, "mask")
        with_references = references is not None or identity is not None
        if with_references:
            require_references_support(model)
            face_analysis = analysis_for(model, face_analysis)
        pipeline = make_pipeline(model, face_analysis, with_references=with_references)
        reference_set, lines = None, []
        if identity is not None:
            reference_set = identity.for_faces(pipeline, face_analysis, 1)[0]
        elif references is not None:
            reference_set, notes = encode_reference_photos(pipeline, face_analysis,
                                                           comfy_to_images(references, "references"))
            lines += notes
        threshold = float(match_threshold) if match_threshold > 0 else None
        results = restore_whole_photos(
            pipeline, list(photos), face_analysis.detector, landmark_backend=face_analysis.landmarks,
            references=reference_set, ref_match=ref_match, match_threshold=threshold,
            selection=selection, paste_mask=masking, strength=float(strength), on_no_face=ON_NO_FACE[on_no_face],
            limit_masks=limits, color_correction=_color(color_correction), progress=comfy_progress(count),
            fidelity=FIDELITY[fidelity], paste_mode=paste)
        lines += [describe_photo(i, r) for i, r in enumerate(results)]
        faces = [f.restored for r in results for f in r.faces if f.restored is not None]
        if not faces:  # ComfyUI has no empty IMAGE batch: one black face, said in the report
            faces = [torch.zeros(3, pipeline.image_size, pipeline.image_size)]
            lines.append("no face restored in the batch: restored_faces is one black image")
        if any(f.identity_distance is not None for r in results for f in r.faces):
            lines.append(f"identity distance: the angle between the embeddings of the face and of the references "
                         f"by the recogniser {face_analysis.identity.name}, in degrees (deg); below "
                         f"{threshold or pipeline.match_threshold:.0f} deg counts as the references' person")
        return io.NodeOutput(images_to_comfy(torch.stack([r.image for r in results])),
                             images_to_comfy(torch.stack(faces)), "\n".join(lines),
                             masks_to_comfy(torch.stack([r.mask for r in results])))
