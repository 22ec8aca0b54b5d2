"""``honestface mask IMAGE -o OUT``: the MFA attention mask (paper Eq. 10-11) of a face.

Writes the mask as a grey PNG (white = attended) to OUT and a preview with the mask
tinted over the image (``--overlay``, default ``<OUT stem>_overlay.png``). IMAGE may be
a folder; OUT is then a folder receiving ``<name>_mask.png`` and ``<name>_overlay.png``.
The heatmaps come from the landmark backend (``--landmarks``): FAN heatmaps, or
Gaussians rendered at dlib's points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ImageError, NoFaceError


def _backend(args: argparse.Namespace):
    from ..face import load_landmark_backend

    options = {"aligned_fallback": True} if args.aligned and args.landmarks == "dlib" else {}
    return load_landmark_backend(args.landmarks, models_dir=args.models_dir, device=args.device, **options)


def write_mask(image_path: Path, mask_path: Path, overlay_path: Path, backend, k: float, alpha: float) -> None:
    from ..image_io import load_image, save_image
    from ..mfa import mask_overlay, mask_to_image, mfa_mask_from_images

    image = load_image(image_path).unsqueeze(0)
    mask = mfa_mask_from_images(image, backend, k=k)
    if float(mask.max()) == 0.0:
        raise NoFaceError(f"no face landmarks found in {image_path}; for aligned face crops try --aligned")
    save_image(mask_to_image(mask)[0], mask_path)
    save_image(mask_overlay(image, mask, alpha=alpha)[0], overlay_path)


def run(args: argparse.Namespace) -> int:
    from ..image_io import list_images

    source, out = Path(args.image), Path(args.output)
    backend = _backend(args)
    if source.is_dir():
        images = list_images(source)
        if not images:
            raise ImageError(f"no images in {source}")
        out.mkdir(parents=True, exist_ok=True)
        failed = []
        for path in images:
            try:
                write_mask(path, out / f"{path.stem}_mask.png", out / f"{path.stem}_overlay.png", backend, args.k, args.alpha)
            except NoFaceError:
                failed.append(path.name)
        print(f"wrote masks of {len(images) - len(failed)} image(s) to {out}")
        if failed:
            print(f"no face landmarks in {len(failed)} image(s): {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    if not source.is_file():
        raise ImageError(f"not found: {source}")
    overlay = Path(args.overlay) if args.overlay else out.with_name(f"{out.stem}_overlay.png")
    write_mask(source, out, overlay, backend, args.k, args.alpha)
    print(f"wrote {out} and {overlay}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mask",
        help="write the MFA attention mask of a face and an overlay preview",
        description=sys.modules[__name__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="face image (an aligned crop works best), or a folder")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="mask PNG (or folder when IMAGE is a folder)")
    parser.add_argument("--overlay", default=None, metavar="FILE", help="overlay preview PNG (default: <OUT stem>_overlay.png)")
    parser.add_argument("--k", type=float, default=10.0, help="sharpening constant k of Eq. 11 (default: 10, as in the paper)")
    parser.add_argument("--alpha", type=float, default=0.6, help="tint strength of the overlay (default: 0.6)")
    parser.add_argument("--landmarks", default="dlib", metavar="NAME", help="heatmap source: dlib or fan (default: dlib)")
    parser.add_argument("--aligned", action="store_true",
                        help="IMAGE is an FFHQ-style aligned crop: with dlib, fit landmarks in the standard face box when no face is detected")
    parser.add_argument("--models-dir", default=None, metavar="DIR", help="models root (default: $HONESTFACE_MODELS)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.set_defaults(func=run)
    return parser
