"""``honestface evaluate --restored DIR --gt DIR [--refs DIR]``: a whole test set.

Pairs the folders by file name and reports the paper's Table 1 columns (LPIPS, DISTS,
CLIP-IQA, MANIQA, MUSIQ, FID, Deg., L2-LD, ALD-e, ALD-m) plus PSNR, SSIM, MS-SWD and
A-LD on all 68 points, as means over the set. With ``--refs`` (``DIR/<name>/`` holding
reference photos of each person, or ``DIR/<name>.<ext>``), "Deg.-ref" is the mean
identity angle between each restored face and its references.

``--test-set DIR`` reads a test set written by ``prepare-dataset --make-test``: its
manifest is checked first (a file whose SHA-256 differs, or a missing file, stops the
evaluation with the list), then the restored faces (``--restored DIR/<name>.png``) are
paired with the set's ground truths and references.

``--protocol`` picks how the numbers are computed and every table names it:
``honestface`` (default; the paper's columns) or ``vqfr`` (VQFR's ``metric_paper``
scripts, which most face-restoration papers report: Deg. from ArcFace ``resnet_face18``
on grey 128 px faces with pairs under 1 degree left out and counted, LMD from AWing's 98
landmarks, PSNR / SSIM after VQFR's mean / variance correction, LPIPS with VGG; the
networks load from ``<models>/metric_weights/``: ``resnet18_110.pth``,
``alignment_WFLW_4HG.pth``).

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
    from ..errors import ConfigError
    from ..evaluation.evaluator import pair_folders, pair_test_set
    from ..evaluation.protocols import get_protocol

    if (args.gt is None) == (args.test_set is None):
        raise ConfigError("give either --gt DIR (with --refs DIR) or --test-set DIR (a prepare-dataset --make-test "
                          "folder)")
    if args.test_set is not None and args.refs is not None:
        raise ConfigError("--test-set brings its own references; leave out --refs")
    for label, folder in (("--restored", args.restored), ("--gt", args.gt), ("--refs", args.refs),
                          ("--test-set", args.test_set)):
        if folder is not None and not Path(folder).is_dir():
            raise ImageError(f"{label}: not a folder: {folder}")
    test_set = None
    if args.test_set is not None:
        pairs, unpaired, test_set = pair_test_set(args.restored, args.test_set)
        with_refs = True
    else:
        pairs, unpaired = pair_folders(args.restored, args.gt, args.refs)
        with_refs = args.refs is not None
    if not pairs:
        raise ImageError(f"no images with the same name in {args.restored} and {args.gt or args.test_set}")
    default = get_protocol(args.protocol).default_metrics + (("deg_ref",) if with_refs else ())
    evaluator = build_evaluator(args, default)
    if test_set is not None:
        evaluator.settings["test_set"] = test_set
    return run_and_print(evaluator, pairs, unpaired, args, per_image=args.per_image)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a restored test set against ground truth (the paper's Table 1 columns)",
        description=sys.modules[__name__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--restored", required=True, metavar="DIR", help="folder of restored faces")
    parser.add_argument("--gt", default=None, metavar="DIR", help="folder of ground-truth faces (same file names)")
    parser.add_argument("--test-set", default=None, metavar="DIR",
                        help="a test set written by prepare-dataset --make-test (its manifest is checked; GT and "
                             "references come from it) instead of --gt / --refs")
    parser.add_argument("--refs", default=None, metavar="DIR", help="reference photos: DIR/<name>/ or DIR/<name>.<ext>")
    parser.add_argument("--per-image", action="store_true", help="print one row per image before the means")
    add_metric_options(parser, "table1 + psnr, ssim, msswd, ald")
    parser.set_defaults(func=run)
    return parser
