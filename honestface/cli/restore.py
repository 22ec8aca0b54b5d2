"""``honestface restore``: restore face images with a HonestFace (or OSDFace) model.

    honestface restore IMAGE|FOLDER... --sd SD21 --weights WEIGHTS -o OUT [--ref IMAGE|FOLDER ...]

- ``--sd``: SD 2.1-base, a diffusers folder or one ``.safetensors``/``.ckpt`` checkpoint
  (a path, or a name in ``<models>/diffusers`` or ``<models>/checkpoints``);
- ``--weights``: a HonestFace ``.safetensors`` checkpoint (its config is in the file; the
  frozen VQ encoder comes from the OSDFace folder, ``--osdface``, default
  ``<models>/honestface/OSDFace``), or an OSDFace release folder (no references);
- ``--ref``: aligned high-quality images of the same person, used for every input.

Inputs are aligned face crops (FFHQ-style) or whole photos. ``--mode auto`` (default)
treats square images as aligned crops and others as photos; ``--whole`` / ``--mode
whole`` detects, aligns, restores and pastes back every face (or ``--face-index``).
Results are written as ``OUT/<name>.png`` at the input size
(``--release-compat``: at the model size, as the OSDFace release writes them). Missing files, unreadable
images and wrong checkpoints end with a one-line message and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import HonestFaceError, ImageError, MissingModelFileError

MODES = ("auto", "aligned", "whole")
COLOR_CORRECTIONS = ("none", "adain", "wavelet")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore", help="restore aligned face crops or whole photos (with optional references)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--ref", action="append", default=[], metavar="IMAGE",
                        help="reference image or folder (aligned, same person); repeatable")
    parser.add_argument("--sd", default=None, metavar="PATH",
                        help="SD 2.1-base: diffusers folder or .safetensors/.ckpt checkpoint (path or name); "
                             "not needed for honestface-nano.safetensors, which bundles its own UNet and VAE")
    parser.add_argument("--weights", required=True, metavar="PATH",
                        help="HonestFace .safetensors checkpoint or OSDFace release folder (path or name); "
                             "'honestface-nano.safetensors' is the small demonstration model shipped with the package")
    parser.add_argument("--osdface", default=None, metavar="DIR",
                        help="OSDFace release folder with the VQ encoder, for a HonestFace checkpoint "
                             "(default: <models>/honestface/OSDFace)")
    parser.add_argument("--vgg", default=None, metavar="FILE",
                        help="VGG16 weights for the eye features (default: <models>/honestface/vgg16-397923af.pth)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--models-dir", default=None, metavar="DIR",
                        help="models root in ComfyUI layout (default: $HONESTFACE_MODELS)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="model precision (default: float32)")
    parser.add_argument("--batch-size", type=int, default=4, help="aligned faces per forward pass (default: 4)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the VAE latent sample when the model samples (default: 0)")
    parser.add_argument("--color-correction", default=None, choices=COLOR_CORRECTIONS,
                        help="colour correction against the input (default: the model config's)")
    parser.add_argument("--mode", default="auto", choices=MODES,
                        help="auto: square images are aligned crops, others whole photos (default: auto)")
    parser.add_argument("--whole", dest="mode", action="store_const", const="whole",
                        help="same as --mode whole")
    parser.add_argument("--face-index", type=int, action="append", default=None, metavar="N",
                        help="whole photos: restore only the N-th detected face (largest first); repeatable")
    parser.add_argument("--blend", type=float, default=1.0, help="whole photos: 0 keeps the photo, 1 the restored face")
    parser.add_argument("--landmarks", default="dlib", metavar="NAME",
                        help="landmark backend for reference choice, eye crops and photos: dlib or fan (default: dlib)")
    parser.add_argument("--identity", default=None, metavar="NAME",
                        help="identity backend (default: the one the checkpoint was trained with)")
    parser.add_argument("--no-merge-lora", action="store_true", help="keep the LoRA adapter separate (slower)")
    parser.add_argument("--release-compat", action="store_true",
                        help="aligned crops only: do what the OSDFace release's infer.py does (bilinear "
                             "align_corners=True resize, sampled latent, no colour correction unless given, "
                             "output at the model size, truncated to 8 bits); see honestface.release_compat")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the weight-loading report")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------ inputs
def expand_images(items: Sequence[str | Path], what: str) -> list[Path]:
    """Files as given, folders replaced by their images (sorted); missing -> ImageError."""
    from ..image_io import list_images

    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise ImageError(f"no images in {what} folder {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageError(f"{what} not found: {path}")
    return paths


def output_names(paths: Sequence[Path], suffix: str = ".png") -> list[str]:
    """``<stem><suffix>`` per input, numbered where stems repeat."""
    names, seen = [], {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(f"{path.stem}{suffix}" if count == 0 else f"{path.stem}_{count}{suffix}")
    return names


def is_aligned(image: torch.Tensor, mode: str) -> bool:
    """Whether ``image`` (3, H, W) is treated as an aligned crop under ``mode``."""
    if mode == "aligned":
        return True
    if mode == "whole":
        return False
    return image.shape[-1] == image.shape[-2]


# ------------------------------------------------------------------------------ model
def resolve_weights(weights: str | Path, models_dir: str | Path | None) -> Path:
    """A path, or a name in ``<models>/honestface``."""
    from ..paths import find_model_file

    return find_model_file("honestface", weights, models_dir, what="HonestFace/OSDFace weights")


def build_pipeline(sd: str | Path | None, weights: str | Path, *, osdface: str | Path | None = None,
                   vgg: str | Path | None = None, models_dir: str | Path | None = None,
                   device: str = "cpu", dtype: str | torch.dtype = "float32", batch_size: int = 4,
                   landmarks: str | None = "dlib", identity: str | None = None,
                   merge_lora: bool = True):
    """A ready :class:`~honestface.pipeline.HonestFacePipeline` from command-line style arguments.

    ``weights`` is a HonestFace checkpoint (then landmark and identity backends are built:
    ``landmarks`` and ``identity`` or the checkpoint's backend) or an OSDFace folder (no
    backends: OSDFace ignores references). The load report is ``pipeline.model.load_report``.
    """
    from ..loaders.osdface import DEFAULT_FOLDER, find_osdface_folder
    from ..loaders.sd21 import resolve_dtype
    from ..pipeline import HonestFacePipeline, load_model

    torch_dtype = resolve_dtype(dtype)
    weights_path = resolve_weights(weights, models_dir)
    if weights_path.is_dir():
        model = load_model(sd21=sd, osdface_dir=find_osdface_folder(weights_path), models_dir=models_dir,
                           merge_lora=merge_lora)
        return HonestFacePipeline(model, device=device, dtype=torch_dtype, batch_size=batch_size)
    from ..loaders.checkpoint import config_from_checkpoint

    osdface_dir = None
    if "vq" not in config_from_checkpoint(weights_path).bundled:
        osdface_dir = find_osdface_folder(osdface if osdface is not None else DEFAULT_FOLDER, models_dir)
    model = load_model(sd21=sd, checkpoint=weights_path, osdface_dir=osdface_dir, models_dir=models_dir,
                       vgg=vgg, merge_lora=merge_lora)
    landmark_backend = identity_backend = None
    from ..face import load_identity_backend, load_landmark_backend

    if landmarks:
        landmark_backend = load_landmark_backend(landmarks, models_dir=models_dir, device=device)
    identity_name = identity or model.config.identity_backend
    if identity_name:
        identity_backend = load_identity_backend(identity_name, models_dir=models_dir, device=device)
    return HonestFacePipeline(model, landmark_backend, identity_backend, device=device, dtype=torch_dtype,
                              batch_size=batch_size)


# ------------------------------------------------------------------------------ restoring
def restore_aligned(pipeline, images: Sequence[torch.Tensor], references: torch.Tensor | None,
                    generator: torch.Generator | None, color_correction: str | None,
                    progress: Callable[[int, int], None] | None = None,
                    release_compat: bool = False) -> list[torch.Tensor]:
    """Restore aligned crops of any sizes in batches; each result has its input's size
    (the model size with ``release_compat``)."""
    from ..image_io import resize_to

    size = pipeline.image_size
    results: list[torch.Tensor] = []
    step = pipeline.batch_size
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        if release_compat:
            from ..release_compat import release_resize

            batch = torch.cat([release_resize(image[None], size) for image in chunk])
            refs = None if references is None else [references] * len(chunk)
            results.extend(pipeline.restore(batch, refs, generator=generator, color_correction=color_correction,
                                            release_compat=True))
            if progress is not None:
                progress(start + len(chunk), len(images))
            continue
        batch = torch.stack([resize_to(image[None], size)[0] for image in chunk])
        refs = None if references is None else [references] * len(chunk)
        restored = pipeline.restore(batch, refs, generator=generator, output_size=size,
                                    color_correction=color_correction)
        for image, out in zip(chunk, restored):
            results.append(resize_to(out[None], tuple(image.shape[-2:]))[0])
        if progress is not None:
            progress(start + len(chunk), len(images))
    return results


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except MissingModelFileError as error:
        # FileNotFoundError's str() would show "[Errno None] None: <file>"; keep the message
        raise HonestFaceError(error.args[0]) from error


def _run(args: argparse.Namespace) -> int:
    from ..image_io import load_image, resize_to, save_image
    from ..progress import tqdm_progress

    if args.batch_size < 1:
        raise HonestFaceError("--batch-size must be at least 1")
    inputs = expand_images(args.inputs, "input image")
    ref_paths = expand_images(args.ref, "reference image") if args.ref else []
    images = [load_image(path) for path in inputs]  # fail on a bad image before loading models

    started = time.perf_counter()
    pipeline = build_pipeline(args.sd, args.weights, osdface=args.osdface, vgg=args.vgg,
                              models_dir=args.models_dir, device=args.device, dtype=args.dtype,
                              batch_size=args.batch_size, landmarks=args.landmarks, identity=args.identity,
                              merge_lora=not args.no_merge_lora)
    if not args.quiet:
        for line in pipeline.model.load_report:
            print(line)
    references = None
    if ref_paths:
        if not pipeline.model.accepts_references:
            print("note: OSDFace weights do not use references; --ref is ignored", file=sys.stderr)
        else:
            references = torch.stack([resize_to(load_image(p)[None], pipeline.image_size)[0] for p in ref_paths])
    generator = torch.Generator(device=pipeline.device).manual_seed(args.seed)

    aligned = [i for i, image in enumerate(images) if is_aligned(image, args.mode)]
    whole = [i for i in range(len(images)) if i not in set(aligned)]
    if args.release_compat and whole:
        raise HonestFaceError("--release-compat restores aligned crops only (the OSDFace release has no "
                              f"whole-photo mode); treated as whole photos: {', '.join(inputs[i].name for i in whole[:5])}")
    detector = None
    if whole:
        from ..face import load_face_detector
        from ..face.photo import restore_faces_in_photo

        detector = load_face_detector("dlib", models_dir=args.models_dir)
    names = output_names(inputs)
    args.output.mkdir(parents=True, exist_ok=True)
    progress, close = tqdm_progress("restoring", len(images), disable=args.no_progress)
    faces_restored = 0
    try:
        restored = restore_aligned(pipeline, [images[i] for i in aligned], references, generator,
                                   args.color_correction, lambda done, _: progress(done, len(images)),
                                   release_compat=args.release_compat)
        for i, result in zip(aligned, restored):
            save_image(result, args.output / names[i])
        faces_restored += len(aligned)
        for done, i in enumerate(whole, start=len(aligned) + 1):
            def restore_crop(crops: torch.Tensor) -> torch.Tensor:
                refs = None if references is None else [references] * crops.shape[0]
                return pipeline.restore(crops, refs, generator=generator, output_size=pipeline.image_size,
                                        color_correction=args.color_correction)

            result, faces = restore_faces_in_photo(images[i], restore_crop, detector, pipeline.landmark_backend,
                                                   size=pipeline.image_size, indices=args.face_index,
                                                   blend=args.blend)
            count = sum(1 for face in faces if not face.skipped)
            if count == 0:
                print(f"note: {inputs[i].name}: no face restored ({len(faces)} detected)", file=sys.stderr)
            faces_restored += count
            save_image(result, args.output / names[i])
            progress(done, len(images))
    finally:
        close()
    elapsed = time.perf_counter() - started
    print(f"restored {faces_restored} face(s) in {len(images)} image(s) in {elapsed:.1f} s -> {args.output}")
    return 0
