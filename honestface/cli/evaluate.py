"""``honestface evaluate --restored DIR --gt DIR [--refs DIR]``: a whole test set.

Pairs the folders by file name and reports the paper's Table 1 columns (LPIPS, DISTS,
CLIP-IQA, MANIQA, MUSIQ, FID, Deg., L2-LD, ALD-e, ALD-m) plus PSNR, SSIM, MS-SWD and
A-LD on all 68 points, as means over the set. With ``--refs`` (``DIR/<name>/`` holding
reference photos of each person, or ``DIR/<name>.<ext>``), "Deg.-ref" is the mean
identity angle between each restored face and its references.

Faces in which no landmarks are found are counted and named (their landmark metrics
are left out of the means); unavailable metrics are listed with the reason; files
present in only one folder are listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ImageError
from .score import add_metric_options, build_evaluator, run_and_print


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluator import pair_folders
    from ..metrics.registry import EVALUATE_METRICS

    for label, folder in (("--restored", args.restored), ("--gt", args.gt), ("--refs", args.refs)):
        if folder is not None and not Path(folder).is_dir():
            raise ImageError(f"{label}: not a folder: {folder}")
    pairs, unpaired = pair_folders(args.restored, args.gt, args.refs)
    if not pairs:
        raise ImageError(f"no images with the same name in {args.restored} and {args.gt}")
    default = EVALUATE_METRICS + (("deg_ref",) if args.refs is not None else ())
    evaluator = build_evaluator(args, default)
    return run_and_print(evaluator, pairs, unpaired, args, per_image=args.per_image)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a restored test set against ground truth (the paper's Table 1 columns)",
        description=sys.modules[__name__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--restored", required=True, metavar="DIR", help="folder of restored faces")
    parser.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth faces (same file names)")
    parser.add_argument("--refs", default=None, metavar="DIR", help="reference photos: DIR/<name>/ or DIR/<name>.<ext>")
    parser.add_argument("--per-image", action="store_true", help="print one row per image before the means")
    add_metric_options(parser, "table1 + psnr, ssim, msswd, ald")
    parser.set_defaults(func=run)
    return parser
