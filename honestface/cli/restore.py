"""``honestface restore``: restore faces in aligned crops, whole photos and videos.

    honestface restore INPUT... -o OUT [--weights WEIGHTS] [--sd SD21] [--ref PHOTO|FOLDER ...]

INPUT is an image, a video (.mp4 .mov .m4v .mkv .avi .webm) or a folder of them. Images are
written as ``OUT/<name>.png`` at the input size, videos as ``OUT/<name>.<same suffix>``.

Input kind (``--mode``, decided per file and printed, one line per file, unless ``-q``):
  auto (default)  an image is an aligned crop when it is square and the face found in it
                  sits where the FFHQ alignment puts it (its landmarks fit the template);
                  anything else is a whole photo;
  --aligned       every image is an aligned face crop (restored as it is);
  --whole         every image is a photo: faces are detected, aligned, restored and pasted back.
Videos are always whole photos, frame by frame.

A batch loses nothing: unreadable files, non-images, images too small to hold a face and
inputs whose restoration failed are skipped with a one-line reason, and every other input
is written. A photo without a face is written unchanged and reported (``--on-no-face
error`` skips it instead). The run ends with a summary. Exit codes: 0 every input was
written; 3 some inputs were skipped (everything else was written); 1 nothing could be
done (missing model files, bad options, an output folder that would overwrite the inputs);
2 wrong command-line syntax.

``--release-compat`` restores every image as an aligned crop, as the OSDFace release's
``infer.py`` does, and writes it at the model size (:mod:`honestface.release_compat`);
videos are skipped with that reason.

Images larger than ``--max-pixels`` (default 200 megapixels: a decompression bomb, or a
larger photo than that) are skipped before they are decoded, as are truncated files.
Photos are kept 8-bit and worked on face by face, so memory grows with the faces, not
with the megapixels.

References (same person; raw photos or aligned crops, the largest face of a photo is
detected and aligned, a reference without a face is dropped with a note):
  --ref PHOTO|FOLDER   used for every input (repeatable);
  --ref-dir DIR        per input: ``DIR/<input name without suffix>/``, the layout of
                       ``honestface evaluate --refs``; inputs without a folder there use
                       ``--ref`` if given, else none;
  --ref-match identity (default): only the face whose identity is closest to the
                       references, and within the identity backend's threshold, is
                       restored with them (in a group photo the others are restored
                       without); ``all``: every face uses them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import HonestFaceError, ImageError, ImageTooLargeError, ImageTooSmallError, MissingModelFileError
from ..paths import NANO_WEIGHTS

MODES = ("auto", "aligned", "whole")
COLOR_CORRECTIONS = ("none", "adain", "wavelet")
NO_FACE_ACTIONS = ("pass", "error")
REF_MATCHES = ("identity", "all")

#: Said of a face restored with references whose landmarks were not found.
LANDMARK_MISS_NOTE = "landmarks not found, reference chosen with the aligned-box landmarks"

#: Exit codes (see the module docstring).
EXIT_OK, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 3

#: Photos handed to the library together (their faces are batched across photos).
PHOTOS_PER_CALL = 8

#: Sub-folders of the output folder for ``--save-faces`` and ``--save-comparison``.
CROPPED_FACES_DIR, RESTORED_FACES_DIR, COMPARISON_DIR = "cropped_faces", "restored_faces", "cmp"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore", help="restore faces in aligned crops, whole photos and videos (with optional references)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, videos or folders of them")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output folder")

    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=None, metavar="PATH",
                       help="HonestFace .safetensors checkpoint or OSDFace release folder (path or name); default: "
                            f"{NANO_WEIGHTS}, the small demonstration model shipped with the package (128 px, "
                            "trained on few people; not the paper's model)")
    model.add_argument("--sd", default=None, metavar="PATH",
                       help="SD 2.1-base: diffusers folder or .safetensors/.ckpt checkpoint (path or name); "
                            "not needed for honestface-nano.safetensors, which bundles its own UNet and VAE")
    model.add_argument("--osdface", default=None, metavar="DIR",
                       help="OSDFace release folder with the VQ encoder, for a HonestFace checkpoint; any "
                            "folder holding an associate_2.ckpt works, such as a stage-1 VRE training output "
                            "(default: <models>/honestface/OSDFace)")
    model.add_argument("--vgg", default=None, metavar="FILE",
                       help="VGG16 weights for the eye features (default: <models>/honestface/vgg16-397923af.pth)")
    model.add_argument("--models-dir", default=None, metavar="DIR",
                       help="models root in ComfyUI layout (default: $HONESTFACE_MODELS)")
    model.add_argument("--device", default="auto",
                       help="torch device; auto: CUDA, then Apple MPS, then CPU (default: auto)")
    model.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                       help="model precision; auto: bfloat16 on CPUs with AVX512-BF16 or AMX (the UNet and "
                            "the VAE encoder in float32 with bf16 math), float32 on other CPUs, bfloat16 (else float16) on CUDA "
                            "(default: auto)")
    model.add_argument("--batch-size", type=int, default=4,
                       help="faces per forward pass, across photos and frames (default: 4)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the VAE latent sample when the model samples (default: 0)")
    model.add_argument("--color-correction", default=None, choices=COLOR_CORRECTIONS,
                       help="colour correction against the input (default: the model config's)")
    model.add_argument("--strength", "--blend", dest="strength", type=float, default=1.0,
                       help="0 keeps the input, 1 the restored face (default: 1)")
    model.add_argument("--fidelity", default="auto", choices=("auto", "off"),
                       help="auto: weights that estimate how much each face needs (the shipped nano model) "
                            "blend input and restoration by that amount, so a face that needs nothing is left "
                            "as it was; off: the full restoration, as the paper (default: auto)")
    model.add_argument("--paste", default="change", choices=("change", "replace"),
                       help="photos: change adds what the restorer changed to the photo, so faces larger than "
                            "the model keep their detail; replace pastes the restored face (default: change)")
    model.add_argument("--landmarks", default="dlib", metavar="NAME",
                       help="landmark backend for alignment, reference choice and eye crops: dlib or fan (default: dlib)")
    model.add_argument("--identity", default=None, metavar="NAME",
                       help="identity backend (default: the one the checkpoint was trained with)")
    model.add_argument("--detector", default="dlib", metavar="NAME[:MODEL]",
                       help="face detector: dlib (HOG), dlib:mmod (CNN), insightface[:PACK/FILE.onnx] "
                            "(default: dlib)")
    model.add_argument("--no-merge-lora", action="store_true", help="keep the LoRA adapter separate (slower)")
    model.add_argument("--release-compat", action="store_true",
                       help="every image is an aligned crop, restored as the OSDFace release's infer.py does "
                            "(bilinear align_corners=True resize, sampled VAE latent, no colour correction, output "
                            "at the model size, truncated to 8 bits); videos are skipped; see "
                            "honestface.release_compat")

    kind = parser.add_argument_group("input kind")
    kind.add_argument("--mode", default="auto", choices=MODES,
                      help="auto: decided per image by looking for an FFHQ-aligned face (default: auto)")
    kind.add_argument("--aligned", dest="mode", action="store_const", const="aligned",
                      help="same as --mode aligned")
    kind.add_argument("--whole", dest="mode", action="store_const", const="whole", help="same as --mode whole")

    refs = parser.add_argument_group("references")
    refs.add_argument("--ref", action="extend", nargs="+", default=[], metavar="PHOTO",
                      help="reference photos, aligned crops or folders of them (one person), for every input; "
                           "several after one --ref (--ref refs/*.jpg) or --ref repeated; give INPUT first")
    refs.add_argument("--ref-dir", type=Path, default=None, metavar="DIR",
                      help="per-input references in DIR/<input name without suffix>/")
    refs.add_argument("--ref-match", default="identity", choices=REF_MATCHES,
                      help="identity: references only for the face that matches them; all: for every face "
                           "(default: identity)")
    refs.add_argument("--match-threshold", type=float, default=None, metavar="DEG",
                      help="identity-match threshold in degrees (default: the identity backend's)")

    faces = parser.add_argument_group("faces in photos and videos")
    faces.add_argument("--on-no-face", default="pass", choices=NO_FACE_ACTIONS,
                       help="a photo without a face: pass (written unchanged) or error (skipped) (default: pass)")
    faces.add_argument("--face-order", default="size", choices=("size", "left-to-right", "confidence"),
                       help="order of the faces for --face-index and --max-faces (default: size)")
    faces.add_argument("--face-index", type=int, action="append", default=None, metavar="N",
                       help="restore only the N-th face in --face-order (from 0); repeatable")
    faces.add_argument("--min-face-size", type=float, default=0.0, metavar="PX",
                       help="leave faces whose box is smaller than PX pixels (default: 0)")
    faces.add_argument("--max-faces", type=int, default=0, metavar="N", help="restore at most N faces (0: all)")
    faces.add_argument("--center-face", action="store_true", help="restore only the face nearest the centre")
    faces.add_argument("--mask", dest="mask_shape", default="hull", choices=("hull", "ellipse", "square"),
                       help="paste-back mask: hull or ellipse of the face's landmarks, or the square crop "
                            "(default: hull)")
    faces.add_argument("--mask-dilate", type=float, default=None, metavar="F",
                       help="grow (+) or shrink (-) the mask, a fraction of the crop side (default: 0.03)")
    faces.add_argument("--mask-feather", type=float, default=None, metavar="F",
                       help="width of the mask's soft edge, a fraction of the crop side (default: 0.08)")

    video = parser.add_argument_group("video")
    video.add_argument("--smooth", type=int, nargs="?", const=2, default=0, metavar="FRAMES",
                       help="average each face's landmarks over FRAMES frames on each side against flicker "
                            "(--smooth alone: 2; default: off)")

    out = parser.add_argument_group("output")
    out.add_argument("--max-pixels", type=int, default=None, metavar="N",
                     help="skip images with more than N pixels (width x height), unread: decompression bombs "
                          "(default: 200000000)")
    out.add_argument("--skip-existing", action="store_true", help="leave inputs whose output already exists")
    out.add_argument("--save-faces", action="store_true",
                     help=f"also write the aligned input and restored crops to OUT/{CROPPED_FACES_DIR}/ and "
                          f"OUT/{RESTORED_FACES_DIR}/")
    out.add_argument("--save-comparison", action="store_true",
                     help=f"also write input | output side by side to OUT/{COMPARISON_DIR}/")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="print only skipped inputs and the summary (no weight report, no per-file lines)")
    parser.set_defaults(func=run)


# ------------------------------------------------------------------------------ inputs
@dataclass
class InputFile:
    """One file to restore and where its result goes."""

    path: Path
    output: Path
    kind: str  # "image", "video" or "other" (an unknown suffix, tried as an image)


@dataclass
class Outcome:
    """What happened to one input (for the summary)."""

    name: str
    status: str  # "restored", "passed", "skipped", "existing"
    reason: str = ""
    faces: int = 0
    landmark_misses: int = 0  # faces restored with references whose landmarks were not found
    square: bool = False  # the input image is square (a crop too degraded to be recognised may hide in it)


def expand_images(items: Sequence[str | Path], what: str) -> list[Path]:
    """Image files as given, folders replaced by their images (sorted); missing -> ImageError."""
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


def output_names(paths: Sequence[Path], suffixes: Sequence[str] | None = None) -> list[str]:
    """``<stem><suffix>`` per input (default suffix .png), numbered where stems repeat."""
    names, seen = [], {}
    for i, path in enumerate(paths):
        suffix = ".png" if suffixes is None else suffixes[i]
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(f"{path.stem}{suffix}" if count == 0 else f"{path.stem}_{count}{suffix}")
    return names


def _file_kind(path: Path) -> str:
    from ..image_io import IMAGE_SUFFIXES
    from ..video import is_video

    if is_video(path):
        return "video"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "other"


def collect_inputs(items: Sequence[str | Path], output: Path) -> tuple[list[InputFile], list[Outcome]]:
    """Files to restore (folders: every visible file in them, sorted) and the inputs that
    are missing. Output paths: ``<stem>.png`` for images, ``<stem><suffix>`` for videos."""
    paths, missing = [], []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            paths.append(path)
        else:
            missing.append(Outcome(str(item), "skipped", "not found"))
    kinds = [_file_kind(p) for p in paths]
    names = output_names(paths, [p.suffix.lower() if k == "video" else ".png" for p, k in zip(paths, kinds)])
    return [InputFile(p, output / n, k) for p, n, k in zip(paths, names, kinds)], missing


def check_output_folder(output: Path, items: Sequence[str | Path], inputs: Sequence[InputFile],
                        references: Sequence[Path] = ()) -> None:
    """Refuse an output folder that is an input folder or whose results would replace an
    input or reference file.

    Raises:
        HonestFaceError: naming the clash.
    """
    target = output.expanduser().resolve()
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir() and path.resolve() == target:
            raise HonestFaceError(f"the output folder {output} is the input folder {item}: results would be "
                                  "mixed with (and could overwrite) the inputs; choose another -o")
    protected = {p.path.resolve(): "input" for p in inputs}
    protected.update({Path(p).resolve(): "reference" for p in references})
    for item in inputs:
        if item.output.resolve() in protected:
            raise HonestFaceError(f"writing {item.output} would overwrite the {protected[item.output.resolve()]} "
                                  f"file of that name; choose another output folder")


def resolve_device(name: str) -> str:
    """``auto`` -> "cuda" when available, then "mps", then "cpu"; other names unchanged."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def parse_detector(spec: str) -> tuple[str, dict]:
    """``NAME[:MODEL]`` -> (backend name, keywords of :func:`~honestface.face.load_face_detector`)."""
    name, _, model = spec.partition(":")
    return name, ({"model": model} if model else {})


# ------------------------------------------------------------------------------ model
def resolve_weights(weights: str | Path, models_dir: str | Path | None) -> Path:
    """A path, or a name in ``<models>/honestface``."""
    from ..paths import find_model_file

    return find_model_file("honestface", weights, models_dir, what="HonestFace/OSDFace weights")


def build_pipeline(sd: str | Path | None, weights: str | Path, *, osdface: str | Path | None = None,
                   vgg: str | Path | None = None, models_dir: str | Path | None = None,
                   device: str = "cpu", dtype: str | torch.dtype = "auto", batch_size: int = 4,
                   landmarks: str | None = "dlib", identity: str | None = None,
                   merge_lora: bool = True):
    """A ready :class:`~honestface.pipeline.HonestFacePipeline` from command-line style arguments.

    ``weights`` is a HonestFace checkpoint (then landmark and identity backends are built:
    ``landmarks`` and ``identity`` or the checkpoint's backend) or an OSDFace folder (no
    backends: OSDFace ignores references). The load report is ``pipeline.model.load_report``.
    """
    from ..loaders.model_files import build_model, resolve_model_files
    from ..loaders.osdface import DEFAULT_FOLDER
    from ..loaders.sd21 import resolve_dtype
    from ..pipeline import HonestFacePipeline

    torch_dtype = resolve_dtype(dtype, device)  # "auto": what the device computes natively
    weights_path = resolve_weights(weights, models_dir)
    if weights_path.is_dir():
        files = resolve_model_files(sd21=sd, osdface_dir=weights_path, models_dir=models_dir)
        model = build_model(files, merge_lora=merge_lora)
        return HonestFacePipeline(model, device=device, dtype=torch_dtype, batch_size=batch_size)
    files = resolve_model_files(sd21=sd, checkpoint=weights_path, models_dir=models_dir, vgg=vgg,
                                osdface_dir=osdface if osdface is not None else DEFAULT_FOLDER)
    model = build_model(files, merge_lora=merge_lora)
    landmark_backend = identity_backend = None
    from ..face import load_identity_backend, load_landmark_backend

    if landmarks:
        landmark_backend = load_landmark_backend(landmarks, models_dir=models_dir, device=device)
    identity_name = identity or model.config.identity_backend
    if identity_name:
        identity_backend = load_identity_backend(identity_name, models_dir=models_dir, device=device)
    return HonestFacePipeline(model, landmark_backend, identity_backend, device=device, dtype=torch_dtype,
                              batch_size=batch_size)


# ------------------------------------------------------------------------------ console
class Console:
    """Per-file lines, notes and a progress bar that do not tear each other apart."""

    def __init__(self, quiet: bool, progress: bool) -> None:
        self.quiet = quiet
        self.progress = progress
        self._bar = None

    def line(self, text: str) -> None:
        """A per-file line (stdout), silenced by -q."""
        if not self.quiet:
            self._write(text, sys.stdout)

    def note(self, text: str) -> None:
        """A warning or skip reason (stderr), always shown."""
        self._write(text, sys.stderr)

    def _write(self, text: str, stream) -> None:
        if self._bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(text, file=stream)
        else:
            print(text, file=stream)

    def bar(self, total: int, unit: str, description: str) -> "Console":
        from tqdm.auto import tqdm

        self.close_bar()
        if self.progress:
            self._bar = tqdm(total=total or None, unit=unit, desc=description, leave=False)
        return self

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ------------------------------------------------------------------------------ references
class References:
    """The reference sets of a run: one for every input (``--ref``) and per input
    (``--ref-dir DIR/<stem>/``), each aligned and encoded once."""

    def __init__(self, pipeline, console: Console, paths: Sequence[Path], ref_dir: Path | None,
                 detector_factory: Callable[[], object], landmark_backend) -> None:
        self.pipeline = pipeline
        self.console = console
        self.ref_dir = ref_dir
        self._detector_factory = detector_factory
        self._landmarks = landmark_backend
        self._cache: dict[Path, object] = {}
        self.enabled = bool(getattr(pipeline.model, "accepts_references", True))
        self.common = None
        if (paths or ref_dir is not None) and not self.enabled:
            console.note("note: OSDFace weights do not use references; --ref / --ref-dir are ignored")
        if paths and self.enabled:
            self.common = self._encode(list(paths), "--ref")

    def for_input(self, path: Path) -> tuple[object | None, str]:
        """(ReferenceSet or None, where it came from) for one input."""
        if not self.enabled:
            return None, ""
        if self.ref_dir is not None:
            folder = self.ref_dir / path.stem
            if folder.is_dir():
                if folder not in self._cache:
                    self._cache[folder] = self._encode(_images_in(folder), str(folder))
                if self._cache[folder] is not None:
                    return self._cache[folder], f"{folder.name}/"
        return self.common, ("--ref" if self.common is not None else "")

    def _encode(self, paths: list[Path], where: str):
        from ..face.references import align_reference_photos
        from ..image_io import load_image

        images, names = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                names.append(path.name)
            except ImageError as error:
                self.console.note(f"reference {path.name}: unreadable, dropped ({_short(error)})")
        aligned = None
        if images:
            aligned = align_reference_photos(images, self.pipeline.image_size, self._detector_factory(),
                                             self._landmarks, names=names)
            for note in aligned.notes:
                (self.console.note if "dropped" in note else self.console.line)(f"reference {note}")
        if aligned is None or aligned.images.shape[0] == 0:
            self.console.note(f"note: no usable reference face in {where}; restoring without references")
            return None
        self.console.line(f"references {where}: {aligned.images.shape[0]} face(s)")
        return self.pipeline.encode_references(aligned.images)


def _float(image: torch.Tensor) -> torch.Tensor:
    """An image read 8-bit -> float in [0, 1]."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


def _images_in(folder: Path) -> list[Path]:
    from ..image_io import list_images

    return list_images(folder)


def _short(error: Exception) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split())


def _describe(error: Exception) -> str:
    """One line for a skip: our own errors by message, others with their type."""
    return _short(error) if isinstance(error, HonestFaceError) else f"{type(error).__name__}: {_short(error)}"


#: Errors that skip one input and let the run go on: ours, and those of torch (out of
#: memory, a backend failure) and of the video libraries (OSError, ValueError).
RESTORE_ERRORS = (HonestFaceError, RuntimeError, OSError, ValueError)


# ------------------------------------------------------------------------------ writers
def comparison(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(3, H, W) input | output side by side: (3, H, 2W); uint8 when either is uint8."""
    if torch.uint8 in (before.dtype, after.dtype):
        def eight_bit(image: torch.Tensor) -> torch.Tensor:
            return image.cpu() if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        return torch.cat([eight_bit(before), eight_bit(after)], dim=-1)
    return torch.cat([before.float().cpu(), after.float().cpu()], dim=-1)


def save_face_crops(output: Path, stem: str, crops: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``OUT/cropped_faces/<stem>_<k>.png`` and ``OUT/restored_faces/<stem>_<k>.png`` per face."""
    from ..image_io import save_image

    for k, (crop, restored) in enumerate(crops):
        save_image(crop, output / CROPPED_FACES_DIR / f"{stem}_{k:02d}.png")
        save_image(restored, output / RESTORED_FACES_DIR / f"{stem}_{k:02d}.png")


# ------------------------------------------------------------------------------ restoring
@dataclass
class Job:
    """An image read, checked and classified, waiting for the model."""

    item: InputFile
    image: torch.Tensor  # (3, H, W)
    decision: str  # what --mode decided and why
    references: object | None = None  # ReferenceSet
    references_from: str = ""


@dataclass
class Restorer:
    """Everything the per-input steps share."""

    args: argparse.Namespace
    pipeline: object
    console: Console
    references: References
    detector_factory: Callable[[], object]
    landmark_backend: object
    generator: torch.Generator
    outcomes: list[Outcome] = field(default_factory=list)

    # ---------------------------------------------------------------- options
    @property
    def fidelity(self) -> bool | None:
        """``pipeline.restore``'s ``fidelity``: the model's own choice, or off."""
        return False if self.args.fidelity == "off" else None

    @property
    def selection(self):
        from ..face.photo import FaceSelection

        args = self.args
        return FaceSelection(order=args.face_order, min_face_size=args.min_face_size, max_faces=args.max_faces,
                             indices=args.face_index, center_only=args.center_face)

    @property
    def paste_mask(self):
        from ..face.photo import PasteMask

        args = self.args
        values = {"shape": args.mask_shape}
        if args.mask_dilate is not None:
            values["dilate"] = args.mask_dilate
        if args.mask_feather is not None:
            values["feather"] = args.mask_feather
        return PasteMask(**values)

    def skip(self, name: str, reason: str) -> None:
        self.console.note(f"{name}: skipped, {reason}")
        self.outcomes.append(Outcome(name, "skipped", reason))

    # ---------------------------------------------------------------- images
    def read(self, item: InputFile) -> Job | None:
        """Read, check and classify one image; None (and a skip) when it cannot be used."""
        from ..image_io import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, check_image_size, load_image

        name = item.path.name
        try:
            # 8-bit: a 63 MP photo is 190 MB so, 760 MB as float32
            image = load_image(item.path, dtype=torch.uint8, max_pixels=self.args.max_pixels)
            check_image_size(image, name)
        except ImageTooLargeError as error:
            limit = self.args.max_pixels or MAX_IMAGE_PIXELS
            self.skip(name, f"too large ({error.pixels / 1e6:.1f} megapixels, above --max-pixels {limit}; "
                            "not read: a decompression bomb, or raise --max-pixels to restore it)")
            self.console.advance()
            return None
        except ImageTooSmallError:
            height, width = image.shape[-2:]
            self.skip(name, f"too small to hold a face ({width}x{height} px; each side must be at least "
                            f"{MIN_IMAGE_SIDE} px)")
            self.console.advance()
            return None
        except ImageError as error:
            reason = "not an image" if item.kind == "other" else "unreadable"
            detail = _short(error).split(f"{item.path}: ", 1)[-1].replace(str(item.path), name)
            self.skip(name, f"{reason} ({detail})")
            self.console.advance()
            return None
        try:
            decision = self.decide(image)
        except RESTORE_ERRORS as error:
            self.skip(name, f"cannot tell crop from photo ({_describe(error)})")
            self.console.advance()
            return None
        job = Job(item, image, decision)
        job.references, job.references_from = self.references.for_input(item.path)
        return job

    def decide(self, image: torch.Tensor) -> str:
        """"aligned crop (<why>)" or "photo (<why>)" under ``--mode``."""
        mode = self.args.mode
        if self.args.release_compat:  # the release restores every input as an aligned crop
            return "aligned crop (--release-compat)"
        if mode == "aligned":
            return "aligned crop (--aligned)"
        if mode == "whole":
            return "photo (--whole)"
        from ..face.input_kind import classify_input

        kind = classify_input(image, self.detector_factory(), self.landmark_backend)
        label = "aligned crop" if kind.kind == "aligned" else "photo"
        return f"{label} ({kind.reason})"

    def restore_images(self, items: Sequence[InputFile]) -> None:
        """Restore and write image inputs, a few photos at a time."""
        pending: list[Job] = []
        for item in items:
            job = self.read(item)
            if job is not None:
                pending.append(job)
            if len(pending) >= max(PHOTOS_PER_CALL, self.pipeline.batch_size):
                self._flush(pending)
                pending = []
        if pending:
            self._flush(pending)

    def _flush(self, jobs: list[Job]) -> None:
        aligned = [job for job in jobs if job.decision.startswith("aligned")]
        photos = [job for job in jobs if not job.decision.startswith("aligned")]
        for group, step in ((aligned, self._restore_aligned), (photos, self._restore_photos)):
            if not group:
                continue
            try:
                step(group)
            except RESTORE_ERRORS as error:
                if len(group) == 1:
                    self.skip(group[0].item.path.name, f"restoration failed ({_describe(error)})")
                    self.console.advance()
                    continue
                for job in group:  # find the input that fails; the others are written
                    try:
                        step([job])
                    except RESTORE_ERRORS as single_error:
                        self.skip(job.item.path.name, f"restoration failed ({_describe(single_error)})")
                        self.console.advance()

    def _restore_aligned(self, jobs: Sequence[Job]) -> None:
        from ..image_io import resize_to
        from ..pipeline import RestoreInfo
        from ..release_compat import release_resize

        size = self.pipeline.image_size
        release = self.args.release_compat
        resize = (lambda image: release_resize(image[None], size)[0]) if release else \
            (lambda image: resize_to(image[None], size)[0])
        crops = torch.stack([resize(_float(job.image)) for job in jobs])  # (B, 3, S, S)
        # one face per crop: its references always apply (as for a photo with one face)
        entries = [job.references for job in jobs]
        notes = [f"with references ({job.references_from})" if job.references is not None else "" for job in jobs]
        use_refs = any(entry is not None for entry in entries)
        info = RestoreInfo()
        restored = self.pipeline.restore(crops, entries if use_refs else None, generator=self.generator,
                                         output_size=size, color_correction=self.args.color_correction,
                                         strength=self.args.strength, release_compat=release,
                                         fidelity=self.fidelity, info=info)
        if info.fidelity:
            notes = [", ".join(filter(None, [note, f"automatic fidelity {w:.2f}"]))
                     for note, w in zip(notes, info.fidelity)]
        missed = info.landmarks_missed or [False] * len(jobs)
        for job, crop, result, note, miss in zip(jobs, crops, restored, notes, missed):
            # the release writes every face at the model size
            image = result if release else resize_to(result[None], tuple(job.image.shape[-2:]))[0]
            self._write_image(job, image, [(crop, result)])
            if miss:
                note += f"; {LANDMARK_MISS_NOTE}"
            self.console.line(f"{job.item.path.name}: {job.decision}; restored{', ' + note if note else ''}")
            self.outcomes.append(Outcome(job.item.path.name, "restored", faces=1, landmark_misses=int(miss)))
            self.console.advance()

    def _restore_photos(self, jobs: Sequence[Job]) -> None:
        from ..whole_photo import restore_whole_photos

        if self.args.release_compat:  # the release has no whole-photo mode
            for job in jobs:
                self.skip(job.item.path.name, f"{job.decision}: --release-compat restores aligned crops only")
                self.console.advance()
            return
        results = restore_whole_photos(
            self.pipeline, [job.image for job in jobs], self.detector_factory(), references=[j.references for j in jobs],
            ref_match=self.args.ref_match, match_threshold=self.args.match_threshold, selection=self.selection,
            paste_mask=self.paste_mask, strength=self.args.strength, on_no_face="pass",
            color_correction=self.args.color_correction, generator=self.generator,
            names=[job.item.path.name for job in jobs], landmark_backend=self.landmark_backend,
            paste_mode=self.args.paste, fidelity=self.fidelity)
        for job, result in zip(jobs, results):
            name = job.item.path.name
            if result.status == "no face" and self.args.on_no_face == "error":
                self.skip(name, f"{job.decision}: no face found (--on-no-face error)")
                self.console.advance()
                continue
            self._write_image(job, result.image, [(f.crop, f.restored) for f in result.faces
                                                  if f.crop is not None and f.restored is not None])
            summary = describe_faces(result.faces)
            if result.status == "no face":
                found = f"no face restored{summary}" if result.faces else "no face found"
                self.console.line(f"{name}: {job.decision}; {found}, written unchanged")
                square = job.image.shape[-1] == job.image.shape[-2]
                self.outcomes.append(Outcome(name, "passed", "no face", square=square))
            else:
                misses = sum(1 for f in result.faces if f.landmarks_missed)
                note = f"; {misses} face(s): {LANDMARK_MISS_NOTE}" if misses else ""
                self.console.line(f"{name}: {job.decision}; {summary.lstrip(', ')}{note}")
                restored = sum(1 for f in result.faces if f.restored is not None and not f.skipped)
                self.outcomes.append(Outcome(name, "restored", faces=restored, landmark_misses=misses))
            self.console.advance()

    def _write_image(self, job: Job, image: torch.Tensor, crops: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        from ..image_io import save_image

        output = self.args.output
        save_image(image, job.item.output)
        stem = job.item.output.stem
        if self.args.save_faces:
            save_face_crops(output, stem, crops)
        if self.args.save_comparison:
            save_image(comparison(job.image, image), output / COMPARISON_DIR / f"{stem}.png")

    # ---------------------------------------------------------------- videos
    def restore_video(self, item: InputFile) -> None:
        """Restore every frame of a video, keep its audio, write ``item.output``."""
        from ..face.photo import detect_photo_faces
        from ..video import LandmarkSmoother, VideoReader, VideoWriter
        from ..whole_photo import restore_whole_photos

        name = item.path.name
        if self.args.release_compat:
            self.skip(name, "video: --release-compat restores aligned crops only")
            return
        partial = item.output.with_name(f".{item.output.stem}.partial{item.output.suffix}")
        compare_path = self.args.output / COMPARISON_DIR / item.output.name
        try:
            reader = VideoReader(item.path)
        except HonestFaceError as error:
            self.skip(name, f"unreadable video ({_short(error)})")
            return
        refs, refs_from = self.references.for_input(item.path)
        detector = self.detector_factory()
        smoother = LandmarkSmoother(self.args.smooth)
        counts = Counter()
        chunk: list[tuple[object, list]] = []
        writers = []
        try:
            with reader:
                info = reader.info
                self.console.bar(info.frames, "frame", name)
                writer = VideoWriter(partial, info, audio_from=item.path if info.has_audio else None)
                writers.append(writer)
                compare = None
                if self.args.save_comparison:
                    from dataclasses import replace

                    compare = VideoWriter(compare_path, replace(info, width=info.width * 2))
                    writers.append(compare)

                def restore_chunk(frames: list[tuple[object, list]]) -> None:
                    images = [frame.image for frame, _ in frames]
                    results = restore_whole_photos(
                        self.pipeline, images, detector, faces=[faces for _, faces in frames], references=refs,
                        ref_match=self.args.ref_match, match_threshold=self.args.match_threshold,
                        selection=self.selection, paste_mask=self.paste_mask, strength=self.args.strength,
                        on_no_face="pass", color_correction=self.args.color_correction, generator=self.generator,
                        landmark_backend=self.landmark_backend, paste_mode=self.args.paste, fidelity=self.fidelity)
                    for (frame, _), result in zip(frames, results):
                        writer.write(result.image, frame.pts)
                        if compare is not None:
                            compare.write(comparison(frame.image, result.image), frame.pts)
                        restored = [f for f in result.faces if f.restored is not None and not f.skipped]
                        counts["frames"] += 1
                        counts["no face"] += result.status == "no face"
                        counts["faces"] += len(restored)
                        counts["with references"] += sum(1 for f in restored if f.with_references)
                        counts["landmark misses"] += sum(1 for f in restored if f.landmarks_missed)
                        if self.args.save_faces:
                            save_face_crops(self.args.output, f"{item.output.stem}_{frame.index:05d}",
                                            [(f.crop, f.restored) for f in restored])
                        self.console.advance()

                for frame in reader:
                    faces = detect_photo_faces(frame.image, detector, self.landmark_backend, self.selection)
                    chunk += smoother.push(frame, faces)
                    if len(chunk) >= max(PHOTOS_PER_CALL, self.pipeline.batch_size):
                        restore_chunk(chunk)
                        chunk = []
                chunk += smoother.flush()
                if chunk:
                    restore_chunk(chunk)
            for w in writers:
                w.close()
            partial.replace(item.output)
        except RESTORE_ERRORS as error:
            for w in writers:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - the file is removed anyway
                    pass
            partial.unlink(missing_ok=True)
            self.skip(name, f"video failed at frame {counts['frames']} ({_describe(error)})")
            return
        finally:
            self.console.close_bar()
        audio = {"copied": "audio copied", "none": "no audio"}.get(writer.audio, f"audio {writer.audio}")
        refs_note = f", {counts['with references']} with references ({refs_from})" if refs is not None else ""
        turned = ""
        if info.rotation or info.mirrored:  # the frames were restored and written as players show them
            turned = f" (turned upright: display rotation {info.rotation} deg{', mirrored' if info.mirrored else ''})"
        self.console.line(f"{name}: video, {counts['frames']} frames{turned}; {counts['faces']} face(s) restored{refs_note}, "
                          f"{counts['no face']} frame(s) without a face written unchanged; {audio}"
                          + (f"; landmarks smoothed over +-{self.args.smooth} frames" if self.args.smooth else ""))
        if counts["landmark misses"]:
            self.console.line(f"{name}: {counts['landmark misses']} face(s): {LANDMARK_MISS_NOTE}")
        self.outcomes.append(Outcome(name, "restored", faces=counts["faces"], landmark_misses=counts["landmark misses"]))


def describe_faces(faces) -> str:
    """", 2 face(s) restored (1 with references), 1 left (not the centre face)" for a photo's faces."""
    restored = [f for f in faces if f.restored is not None and not f.skipped]
    left = [f for f in faces if f not in restored]
    text = ""
    if restored:
        with_refs = [f for f in restored if getattr(f, "with_references", False)]
        text += f", {len(restored)} face(s) restored"
        if with_refs:
            distances = [f"{f.identity_distance:.0f}" for f in with_refs if f.identity_distance is not None
                         and f.identity_distance == f.identity_distance]
            text += f" ({len(with_refs)} with references" + (
                f", identity distance {', '.join(distances)} deg)" if distances else ")")
        weights = [f"{f.extra['fidelity']:.2f}" for f in restored if "fidelity" in getattr(f, "extra", {})]
        if weights:
            text += f", automatic fidelity {', '.join(weights)}"
    if left:
        reasons = Counter(f.skipped or "not restored" for f in left)
        text += f", {len(left)} left (" + "; ".join(f"{n} {r}" if n > 1 else r for r, n in reasons.items()) + ")"
    return text


def summarize(outcomes: Sequence[Outcome], elapsed: float, output: Path) -> tuple[list[str], int]:
    """Summary lines and the exit code."""
    def names(items: Sequence[Outcome], limit: int = 6) -> str:
        shown = ", ".join(o.name for o in items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    restored = [o for o in outcomes if o.status == "restored"]
    passed = [o for o in outcomes if o.status == "passed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    existing = [o for o in outcomes if o.status == "existing"]
    lines = [f"restored {sum(o.faces for o in restored)} face(s) in {len(restored)} input(s) in {elapsed:.1f} s "
             f"-> {output}"]
    if passed:
        lines.append(f"passed through unchanged (no face): {len(passed)}: {names(passed)}")
        square = [o for o in passed if o.square]
        if square:
            lines.append(f"  square among them: {len(square)}; an aligned face crop too degraded to be recognised "
                         "as one is restored with --aligned")
    missed = [o for o in restored if o.landmark_misses]
    if missed:
        lines.append(f"landmarks not found on {sum(o.landmark_misses for o in missed)} face(s) restored with "
                     f"references (their reference was chosen with the aligned-box landmarks): {names(missed)}")
    if existing:
        lines.append(f"already there (--skip-existing): {len(existing)}")
    if skipped:
        lines.append(f"skipped: {len(skipped)}")
        for o in skipped:
            lines.append(f"  {o.name}: {o.reason}")
    return lines, (EXIT_SKIPPED if skipped else EXIT_OK)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except MissingModelFileError as error:
        # FileNotFoundError's str() would show "[Errno None] None: <file>"; keep the message
        raise HonestFaceError(error.args[0]) from error


def _run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise HonestFaceError("--batch-size must be at least 1")
    if args.smooth < 0:
        raise HonestFaceError("--smooth must be at least 0 frames")
    if not 0.0 <= args.strength <= 1.0:
        raise HonestFaceError(f"--strength must be between 0 and 1, got {args.strength}")
    if args.ref_dir is not None and not args.ref_dir.is_dir():
        raise HonestFaceError(f"--ref-dir folder not found: {args.ref_dir}")
    from ..distributed import current_processes

    processes = current_processes()
    try:
        return _restore_inputs(args, processes)
    finally:
        processes.close()


def _restore_inputs(args: argparse.Namespace, processes) -> int:
    """Restore this process's share of the inputs; the main process prints the merged summary."""
    started = time.perf_counter()
    console = Console(args.quiet, not args.no_progress and processes.is_main)
    inputs, outcomes = collect_inputs(args.inputs, args.output)
    if not inputs:
        raise HonestFaceError("no input found: " + ", ".join(str(i) for i in args.inputs))
    for missing in outcomes if processes.is_main else ():
        console.note(f"{missing.name}: skipped, {missing.reason}")
    ref_paths = expand_images(args.ref, "reference image") if args.ref else []
    check_output_folder(args.output, args.inputs, inputs, ref_paths)
    if args.skip_existing:
        for item in [i for i in inputs if i.output.exists()]:
            outcomes.append(Outcome(item.path.name, "existing"))
            inputs.remove(item)
    videos = [i for i in inputs if i.kind == "video"]
    if videos:
        from ..video import require_av

        require_av()  # before loading the model: a missing extra is a setup error

    device = processes.device(resolve_device(args.device))
    if args.weights is None:
        args.weights = NANO_WEIGHTS
        if processes.is_main:
            console.note(f"no --weights: using {NANO_WEIGHTS}, the shipped demonstration model (128 px faces, "
                         "not the paper's model); pass --weights for a HonestFace checkpoint or an OSDFace folder")
    pipeline = build_pipeline(args.sd, args.weights, osdface=args.osdface, vgg=args.vgg,
                              models_dir=args.models_dir, device=device, dtype=args.dtype,
                              batch_size=args.batch_size, landmarks=args.landmarks, identity=args.identity,
                              merge_lora=not args.no_merge_lora)
    if not args.quiet and processes.is_main:
        for line in pipeline.model.load_report:
            print(line)
        print(f"device: {device}")
    landmark_backend = pipeline.landmark_backend
    if landmark_backend is None and args.landmarks:
        from ..face import load_landmark_backend

        landmark_backend = load_landmark_backend(args.landmarks, models_dir=args.models_dir, device=device)
    detectors: list = []

    def detector_factory():
        if not detectors:  # built on first use: --aligned without references needs none
            from ..face import load_face_detector

            name, keywords = parse_detector(args.detector)
            detectors.append(load_face_detector(name, models_dir=args.models_dir, device=device, **keywords))
        return detectors[0]

    args.output.mkdir(parents=True, exist_ok=True)
    references = References(pipeline, console, ref_paths, args.ref_dir, detector_factory, landmark_backend)
    generator = torch.Generator(device=pipeline.device)
    restorer = Restorer(args, pipeline, console, references, detector_factory, landmark_backend, generator)
    images = [i for i in inputs if i.kind != "video"]
    # Work units: blocks of images handed to the library together, then one video each. A
    # unit's batches and seed depend on its index alone, so its files are the same whichever
    # process restores it; units go round-robin over the processes of a multi-process launch.
    block = max(PHOTOS_PER_CALL, args.batch_size)
    units: list[tuple[str, list[InputFile]]] = [("images", images[i : i + block]) for i in range(0, len(images), block)]
    units += [("video", [item]) for item in videos]
    unit_outcomes: list[tuple[int, list[Outcome]]] = []
    try:
        owned_images = sum(len(items) for index, (kind, items) in enumerate(units)
                           if kind == "images" and processes.owns(index))
        if owned_images:
            console.bar(owned_images, "image", "restoring")
        for index, (kind, items) in enumerate(units):
            if not processes.owns(index):
                continue
            if kind == "video":
                console.close_bar()
            generator.manual_seed(args.seed + index)
            first = len(restorer.outcomes)
            if kind == "images":
                restorer.restore_images(items)
            else:
                restorer.restore_video(items[0])
            unit_outcomes.append((index, restorer.outcomes[first:]))
    finally:
        console.close_bar()
    merged = sorted((entry for share in processes.gather(unit_outcomes) for entry in share), key=lambda e: e[0])
    outcomes = outcomes + [outcome for _, share in merged for outcome in share]
    lines, code = summarize(outcomes, time.perf_counter() - started, args.output)
    if processes.is_main:
        for line in lines:
            print(line)
    return code
