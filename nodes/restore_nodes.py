"""Restoration nodes: model loader, identity embedder (IDE), visual tokens (VRE), reference
selector (Eq. 6), one-step restore of aligned faces and of whole photos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import folder_paths
from honestface.errors import HonestFaceError, MissingModelFileError, NoFaceError
from honestface.paths import NANO_WEIGHTS, PACKAGED_WEIGHTS_DIR

from .comfy_io import (DEVICE_CHOICES, DTYPE_CHOICES, check_interrupted, comfy_progress, comfy_to_images,
                       images_to_comfy, resolve_device, resolve_dtype)
from .handles import MODEL_CACHE, FaceAnalysis, HonestFaceModel
from .model_folders import find_in_folders, list_files, list_subfolders

CATEGORY = "HonestFace"

#: What marks an OSDFace release folder inside models/honestface.
OSDFACE_MARKER = "pytorch_lora_weights.safetensors"
#: The OSDFace file holding the VQ encoder of the visual tokens.
OSDFACE_VQ_FILE = "associate_2.ckpt"
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


def build_model(base_model: str, weights: str, osdface_folder: str, dtype: str, device: str) -> HonestFaceModel:
    from honestface.loaders.checkpoint import config_from_checkpoint
    from honestface.pipeline import HonestFacePipeline

    weights_path = resolve_weights(weights)
    is_osdface = weights_path.is_dir()
    config = None if is_osdface else config_from_checkpoint(weights_path)
    bundled = set() if config is None else set(config.bundled)
    # weights that bundle their UNet and VAE ignore the base model (the loader logs it)
    sd21 = None if base_model == NONE or {"unet", "vae"} <= bundled else resolve_base_model(base_model)
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
    vgg = None
    if "vq" in bundled:
        osdface_dir = None
    elif checkpoint is not None and osdface_dir is None:
        raise MissingModelFileError(OSDFACE_VQ_FILE, Path(folder_paths.get_folder_paths("honestface")[0]) / "OSDFace",
                                    "OSDFace VQ encoder", "A HonestFace checkpoint uses the frozen VQ encoder of "
                                    "the OSDFace release: put the release folder in models/honestface.")
    if checkpoint is not None and "vgg" not in bundled:
        # The facial feature extractor needs torchvision's VGG16 weights next to the checkpoint.
        vgg = find_in_folders("honestface", config.ide.vgg_file,
                              "VGG16 weights of the facial feature extractor")
    load_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, load_device)
    pipeline = HonestFacePipeline.from_pretrained(sd21=sd21, checkpoint=checkpoint, osdface_dir=osdface_dir,
                                                  vgg=vgg, device="cpu", dtype=torch_dtype)
    kind = "OSDFace (no references)" if checkpoint is None else "HonestFace"
    return HonestFaceModel(pipeline=pipeline, module=pipeline.model, load_device=load_device,
                           offload_device=torch.device("cpu"), dtype=torch_dtype,
                           description=f"{kind}: {weights}{'' if sd21 is None else ' on ' + base_model} "
                                       f"({torch_dtype}, {load_device})")


class HonestFaceModelLoader:
    DESCRIPTION = ("Loads the one-step restoration model: Stable Diffusion 2.1-base (a checkpoint file in "
                   "models/checkpoints, e.g. v2-1_512-ema-pruned.safetensors, or a diffusers folder in "
                   "models/diffusers) plus HonestFace weights (a .safetensors file in models/honestface) or an "
                   "OSDFace release folder in models/honestface (restoration without references). "
                   "The model stays cached between runs until 'HonestFace Unload Models' runs; ComfyUI moves it "
                   "to and from the GPU as memory requires.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("HONESTFACE_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The restoration model for the HonestFace restore and embedding nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base_model": (base_model_choices(), {"tooltip":
                "Stable Diffusion 2.1-base: a single .safetensors/.ckpt file from models/checkpoints or a "
                "diffusers folder (with unet/ and vae/) from models/diffusers. 'none' (or any choice) for "
                "weights that bundle their own UNet and VAE, like honestface-nano."}),
            "weights": (weights_choices(), {"tooltip":
                "HonestFace checkpoint (.safetensors in models/honestface) or an OSDFace release folder "
                "(models/honestface/<folder> with pytorch_lora_weights.safetensors, embedding_change_weights.pth, "
                "associate_2.ckpt) for restoration without references. honestface-nano.safetensors ships with "
                "the pack: a small 128 px demonstration model that needs no other file (not the paper's model)."}),
            "osdface_folder": ([AUTO, NONE] + list_subfolders("honestface", (OSDFACE_MARKER,)), {"default": AUTO,
                "tooltip": "OSDFace release folder that supplies the VQ encoder of the visual tokens (VRE) for a "
                           "HonestFace checkpoint. auto: the chosen OSDFace folder, else the first one found."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip":
                "Weight precision. auto: float16 on GPUs that handle it well, float32 on the CPU."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip":
                "auto: the device ComfyUI's model management uses (respects --cpu, --lowvram ...)."}),
        }}

    def load(self, base_model, weights, osdface_folder, dtype, device):
        key = ("model", base_model, weights, osdface_folder, dtype, device)
        model = MODEL_CACHE.get(key, lambda: build_model(base_model, weights, osdface_folder, dtype, device))
        return (model,)


def require_references_support(model: HonestFaceModel) -> None:
    if not getattr(model.pipeline.model, "accepts_references", True):
        raise HonestFaceError(f"{model.description} restores without references; load a HonestFace checkpoint "
                              "(.safetensors in models/honestface) to use references")


def make_pipeline(model: HonestFaceModel, face_analysis: FaceAnalysis | None, with_references: bool = False):
    """The cached model, loaded onto its device, with this run's face-analysis backends.

    The face recogniser only matters with references (the FIE embeds them), so it is
    attached (and its embedding size checked against the model) only then.
    """
    from honestface.pipeline import HonestFacePipeline

    model.ready()
    use_analysis = face_analysis is not None and with_references
    return HonestFacePipeline(model.pipeline.model,
                              landmark_backend=face_analysis.landmarks if use_analysis else None,
                              identity_backend=face_analysis.identity if use_analysis else None,
                              device=model.load_device, dtype=model.dtype,
                              batch_size=model.pipeline.batch_size)


@dataclass
class IdentityConditioning:
    """HONESTFACE_IDENTITY: the references of every LQ face and the IDE's choice among them.

    The restore nodes hand ``references`` to the pipeline, which runs the IDE again inside
    the model forward (so the restore is the same with or without this node); the tokens
    and the index are kept for inspection.
    """

    references: torch.Tensor  # (N, 3, H, W) aligned references in [0, 1]
    reference_index: torch.Tensor  # (B,) r0 of Eq. 6 for each LQ face it was computed for
    feature_tokens: torch.Tensor  # (B, n1, k) p_F
    identity_tokens: torch.Tensor  # (B, n2, k) p_I


def _reference_list(conditioning: IdentityConditioning | None, batch: int):
    if conditioning is None:
        return None
    return [conditioning.references] * batch


class HonestFaceIdentityEmbedder:
    DESCRIPTION = ("Identity embedder (IDE): from a batch of high-quality reference photos of the same person "
                   "(aligned faces) and the low-quality face, picks the reference whose landmarks are closest "
                   "by affine landmark distance (Eq. 6), crops its eyes for the facial feature extractor and "
                   "embeds every reference with the face recogniser. Outputs the identity conditioning for "
                   "'HonestFace Restore' and previews of the chosen reference and its eye patches.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("HONESTFACE_IDENTITY", "IMAGE", "IMAGE")
    RETURN_NAMES = ("identity", "chosen_reference", "eye_patches")
    OUTPUT_TOOLTIPS = ("Identity conditioning for the restore nodes.",
                       "The reference chosen for each LQ face (Eq. 6).",
                       "Left and right eye patches of the chosen reference, as the feature extractor sees them.")
    FUNCTION = "embed"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("HONESTFACE_MODEL", {"tooltip": "From 'HonestFace Model Loader' (a HonestFace checkpoint)."}),
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Landmarks (reference choice, eye crops) and the face "
                                                           "recogniser (must match the checkpoint's)."}),
            "references": ("IMAGE", {"tooltip": "High-quality aligned faces of the same person (a batch, any number)."}),
            "lq_face": ("IMAGE", {"tooltip": "The aligned low-quality face(s) to restore."}),
        }}

    def embed(self, model, face_analysis, references, lq_face):
        from honestface.models.ide import crop_eye_patches, eye_boxes

        require_references_support(model)
        refs = comfy_to_images(references, "references")
        lq = comfy_to_images(lq_face, "lq_face")
        pipeline = make_pipeline(model, face_analysis, with_references=True)
        progress = comfy_progress(3)
        lq_prepared = pipeline.prepare_images(lq, "lq_face")
        batch = pipeline.prepare_references([refs] * lq.shape[0])
        progress(1, 3)
        with torch.no_grad():
            lq_landmarks = face_analysis.landmarks.landmarks(lq_prepared).float().cpu()
        device, dtype = pipeline.device, pipeline.dtype
        with torch.no_grad():
            ide = pipeline.model.ide(
                batch.images.to(device, dtype), batch.mask.to(device),
                None if lq_landmarks is None else lq_landmarks.to(device),
                None if batch.landmarks is None else batch.landmarks.to(device),
                None if batch.embeddings is None else batch.embeddings.to(device, dtype))
        progress(2, 3)
        index = ide.reference_index.cpu()
        rows = torch.arange(lq.shape[0])
        chosen = batch.images[rows, index]  # (B, 3, S, S)
        chosen_landmarks = None if batch.landmarks is None else batch.landmarks[rows, index]
        config = pipeline.config.ide
        boxes = eye_boxes(chosen_landmarks, tuple(chosen.shape[-2:]), config.eye_margin, batch=chosen.shape[0])
        patches = crop_eye_patches(chosen, boxes, config.eye_patch_size)  # (B, 2, 3, s, s)
        eyes = torch.cat([patches[:, 0], patches[:, 1]], dim=-1)  # side by side: (B, 3, s, 2s)
        progress(3, 3)
        conditioning = IdentityConditioning(references=refs, reference_index=index,
                                            feature_tokens=ide.feature_tokens.float().cpu(),
                                            identity_tokens=ide.identity_tokens.float().cpu())
        return (conditioning, images_to_comfy(chosen), images_to_comfy(eyes))


class HonestFaceVisualTokens:
    DESCRIPTION = ("Visual representation embedder (VRE, Eq. 7): tokenises the low-quality face with the VQ "
                   "encoder, looks the tokens up in the LQ codebook and keeps the first distinct codes by "
                   "confidence; the projected codes are the visual prompt p_L. Outputs the tokens and a report "
                   "(how many distinct codes each face uses). Restore nodes compute the same tokens themselves; "
                   "this node is for inspection.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("HONESTFACE_TOKENS", "STRING")
    RETURN_NAMES = ("visual_tokens", "report")
    OUTPUT_TOOLTIPS = ("(B, n3, k) visual prompt tokens p_L.", "Codes used per face.")
    FUNCTION = "tokens"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("HONESTFACE_MODEL", {"tooltip": "From 'HonestFace Model Loader'."}),
            "lq_face": ("IMAGE", {"tooltip": "Aligned low-quality face(s)."}),
        }}

    def tokens(self, model, lq_face):
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
        lines = [f"face {i}: {int(o.valid.sum())} distinct codes of {o.valid.shape[1]} tokens; first codes "
                 f"{o.indices[0, :8].tolist()}" for i, o in enumerate(outputs)]
        return (tokens, "\n".join(lines))


class HonestFaceReferenceSelector:
    DESCRIPTION = ("Picks, for each low-quality face, the reference with the smallest affine landmark distance "
                   "(A-LD on eyes and brows, paper Eq. 6) - the reference HonestFace's facial feature extractor uses.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "INT", "STRING")
    RETURN_NAMES = ("best_reference", "index", "distances")
    OUTPUT_TOOLTIPS = ("The chosen reference for each LQ face.", "Index (in the reference batch) for the first LQ face.",
                       "A-LD of every reference, one line per LQ face.")
    FUNCTION = "select"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Its landmark backend measures the faces."}),
            "references": ("IMAGE", {"tooltip": "Candidate references (aligned faces, a batch)."}),
            "lq_face": ("IMAGE", {"tooltip": "The aligned low-quality face(s)."}),
            "subset": (["eyes", "mouth", "all"], {"default": "eyes", "tooltip":
                "Landmarks of the distance: eyes and brows (the paper's choice), outer lip, or all 68."}),
        }}

    def select(self, face_analysis, references, lq_face, subset):
        from honestface.face import require_landmarks
        from honestface.metrics.landmark import affine_landmark_distance
        from honestface.models.ide import select_reference

        refs = comfy_to_images(references, "references")
        lq = comfy_to_images(lq_face, "lq_face")
        progress = comfy_progress(2)
        with torch.no_grad():
            lq_points = require_landmarks(face_analysis.landmarks.landmarks(lq).float().cpu(), "lq_face")
            ref_points = face_analysis.landmarks.landmarks(refs).float().cpu()  # (N, 68, 2), NaN = no face
        progress(1, 2)
        if not torch.isfinite(ref_points).flatten(1).all(dim=1).any():
            raise NoFaceError("no face landmarks found in any reference image")
        # Both are aligned crops; compare in the LQ face's pixel frame.
        ref_points = ref_points * torch.tensor([lq.shape[-1] / refs.shape[-1], lq.shape[-2] / refs.shape[-2]])
        batch, count = lq.shape[0], refs.shape[0]
        all_refs = ref_points.unsqueeze(0).expand(batch, -1, -1, -1)
        mask = torch.ones(batch, count, dtype=torch.bool)
        index = select_reference(lq_points, all_refs, mask, subset=subset)
        distances = affine_landmark_distance(all_refs.double(), lq_points.double().unsqueeze(1), subset=subset)
        progress(2, 2)
        lines = [", ".join(f"{j}: {float(d):.5f}" for j, d in enumerate(row)) for row in distances]
        return (images_to_comfy(refs[index]), int(index[0]), "\n".join(lines))


COLOR_CHOICES = ["model default", "none", "adain", "wavelet"]


def _color(choice: str) -> str | None:
    return None if choice == "model default" else choice


class HonestFaceRestoreAligned:
    DESCRIPTION = ("One-step restoration (Eq. 3) of aligned faces (512x512 FFHQ-style crops; other sizes are "
                   "resized to the model size and back). With an identity conditioning from the Identity "
                   "Embedder the prompt fuses IDE and VRE tokens (HonestFace); without it the VRE tokens alone "
                   "are used (OSDFace).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("restored",)
    OUTPUT_TOOLTIPS = ("Restored faces, same size as the input.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("HONESTFACE_MODEL", {"tooltip": "From 'HonestFace Model Loader'."}),
            "lq_face": ("IMAGE", {"tooltip": "Aligned low-quality face(s), a batch."}),
            "color_correction": (COLOR_CHOICES, {"default": "model default", "tooltip":
                "Match the restored colours to the input: AdaIN or wavelet colour transfer, none, or the model's setting."}),
        }, "optional": {
            "identity": ("HONESTFACE_IDENTITY", {"tooltip": "From 'HonestFace Identity Embedder'; leave empty to restore "
                                                            "without references."}),
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Needed with 'identity' (landmarks and the face recogniser)."}),
        }}

    def restore(self, model, lq_face, color_correction, identity=None, face_analysis=None):
        if identity is not None and face_analysis is None:
            raise HonestFaceError("'identity' needs 'face_analysis' too (landmarks and the face recogniser)")
        if identity is not None:
            require_references_support(model)
        lq = comfy_to_images(lq_face, "lq_face")
        pipeline = make_pipeline(model, face_analysis, with_references=identity is not None)
        restored = pipeline.restore(lq, references=_reference_list(identity, lq.shape[0]),
                                    progress=comfy_progress(lq.shape[0]), color_correction=_color(color_correction))
        return (images_to_comfy(restored),)


def parse_indices(text: str) -> list[int] | None:
    """``"all"``/empty -> None; ``"0, 2"`` -> [0, 2]."""
    text = text.strip().lower()
    if text in ("", "all"):
        return None
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise HonestFaceError(f"face_indices must be 'all' or comma-separated numbers like '0, 2', got {text!r}")
    if any(v < 0 for v in values):
        raise HonestFaceError(f"face_indices must not be negative, got {values}")
    return values


class HonestFaceRestorePhoto:
    DESCRIPTION = ("Restores every face of whole photos (or the chosen ones): detects the faces, aligns each to a "
                   "512 crop, restores it in one step (with references when given, otherwise OSDFace-style) and "
                   "pastes it back with a feathered mask. 'strength' blends the restored faces with the original.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("image", "restored_faces", "report")
    OUTPUT_TOOLTIPS = ("The photos with the restored faces pasted back.",
                       "Every restored aligned face (a batch), for inspection.",
                       "Faces found, restored and skipped per photo.")
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("HONESTFACE_MODEL", {"tooltip": "From 'HonestFace Model Loader'."}),
            "face_analysis": ("FACE_ANALYSIS", {"tooltip": "Detector and landmarks (and the face recogniser with references)."}),
            "image": ("IMAGE", {"tooltip": "Photo(s) with one or more faces."}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                "0 keeps the original faces, 1 pastes the restored faces fully."}),
            "face_indices": ("STRING", {"default": "all", "tooltip":
                "'all', or the faces to restore as comma-separated indices (0 = largest face)."}),
            "color_correction": (COLOR_CHOICES, {"default": "model default", "tooltip":
                "Colour transfer from each input face to its restoration."}),
        }, "optional": {
            "references": ("IMAGE", {"tooltip": "Aligned high-quality faces of the person (HonestFace checkpoint); "
                                                "used for every restored face."}),
        }}

    def restore(self, model, face_analysis, image, strength, face_indices, color_correction, references=None):
        from honestface.face.photo import restore_faces_in_photo

        photos = comfy_to_images(image, "image")
        refs = None if references is None else comfy_to_images(references, "references")
        if refs is not None:
            require_references_support(model)
        indices = parse_indices(face_indices)
        pipeline = make_pipeline(model, face_analysis, with_references=refs is not None)
        size = pipeline.image_size

        def restore_fn(crops: torch.Tensor) -> torch.Tensor:
            check_interrupted()
            return pipeline.restore(crops, references=None if refs is None else [refs] * crops.shape[0],
                                    color_correction=_color(color_correction))

        results, faces_out, lines = [], [], []
        total = photos.shape[0]
        progress = comfy_progress(total)
        for i, photo in enumerate(photos):
            result, faces = restore_faces_in_photo(photo, restore_fn, face_analysis.detector, face_analysis.landmarks,
                                                   size=size, indices=indices, blend=strength)
            restored = [f for f in faces if f.restored is not None]
            if not restored:
                why = "no face found" if not faces else "; ".join(f"face {f.index}: {f.skipped}" for f in faces)
                raise NoFaceError(f"photo {i} of the batch: nothing restored ({why})")
            results.append(result)
            faces_out.extend(f.restored for f in restored)
            lines.append(f"photo {i}: {len(faces)} face(s) found, restored {[f.index for f in restored]}"
                         + "".join(f"; face {f.index} skipped ({f.skipped})" for f in faces if f.skipped))
            progress(i + 1, total)
        return (images_to_comfy(torch.stack(results)), images_to_comfy(torch.stack(faces_out)), "\n".join(lines))
