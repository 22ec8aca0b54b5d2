"""``honestface score RESTORED GT``: metrics of restored faces against their ground truth.

RESTORED and GT are two image files, or two folders whose images are paired by file
name (without extension). Prints a table (paper column names, arrows give the better
direction); ``--json`` / ``--csv`` also write the scores to a file. Metrics that cannot
be computed here (missing weights, missing backend) are listed with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ImageError


def add_metric_options(parser: argparse.ArgumentParser, default_metrics: str) -> None:
    """Options shared by ``score`` and ``evaluate``."""
    parser.add_argument("--protocol", default="honestface", choices=("honestface", "vqfr"),
                        help="honestface (default): the paper's columns; vqfr: VQFR's metric_paper scripts (Deg. from "
                             "ArcFace resnet_face18 on grey 128 px, LMD from AWing's 98 landmarks; files in "
                             "<models>/metric_weights/). Every table names its protocol")
    parser.add_argument("--metrics", default=None, metavar="LIST",
                        help=f"comma-separated metric keys or column names, 'table1' or 'all' (default: {default_metrics})")
    parser.add_argument("--landmarks", default="auto", metavar="NAME",
                        help="landmark backend for L2-LD / A-LD: auto, dlib (offline) or fan (default: auto = fan "
                             "when its file is in the models folder, else dlib); named in the columns: L2-LD(dlib)")
    parser.add_argument("--identity", default="auto", metavar="NAME",
                        help="identity backend for Deg.: auto, dlib, arcface-onnx, arcface-torch, adaface (default: "
                             "auto = ArcFace, the paper's, when insightface/models/buffalo_l/w600k_r50.onnx is in the "
                             "models folder, else dlib, then shown as Deg.(dlib))")
    parser.add_argument("--models-dir", default=None, metavar="DIR",
                        help="models root (ComfyUI layout; default: $HONESTFACE_MODELS); pyiqa weights in DIR/pyiqa")
    parser.add_argument("--device", default="cpu", help="torch device for the networks (default: cpu)")
    parser.add_argument("--y-channel", action="store_true", help="PSNR / SSIM on the luma channel instead of RGB")
    parser.add_argument("--msswd-seed", type=int, default=0, help="seed of MS-SWD's random projections (default: 0)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE", help="also write per-image scores as CSV")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_evaluator(args: argparse.Namespace, default_metrics: tuple[str, ...]):
    from ..distributed import current_processes
    from ..evaluation.evaluator import Evaluator
    from ..metrics.registry import parse_metric_list

    metrics = parse_metric_list(args.metrics, default_metrics)
    # under a multi-process launch, "cuda" is this process's GPU
    return Evaluator(metrics, landmark_backend=args.landmarks, identity_backend=args.identity,
                     models_dir=args.models_dir, device=current_processes().device(args.device), y_channel=args.y_channel,
                     msswd_seed=args.msswd_seed, protocol=getattr(args, "protocol", "honestface"))


def run_and_print(evaluator, pairs, unpaired, args: argparse.Namespace, per_image: bool) -> int:
    """Score the pairs and print/write the report.

    Under a multi-process launch (``accelerate launch`` / ``torchrun``) every process scores
    its share and the main process prints and writes the merged report.
    """
    from ..distributed import current_processes
    from ..progress import tqdm_progress

    processes = current_processes()
    try:
        progress, close = tqdm_progress("scoring", len(pairs), disable=args.no_progress or not processes.is_main)
        try:
            report = evaluator.evaluate_pairs(pairs, unpaired, progress, processes=processes)
        finally:
            close()
        if processes.is_main:
            print(report.format_table(per_image=per_image))
            if args.json is not None:
                print(f"wrote {report.write_json(args.json)}")
            if args.csv is not None:
                print(f"wrote {report.write_csv(args.csv)}")
    finally:
        processes.close()
    return 0


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluator import ImagePair, pair_folders
    from ..evaluation.protocols import get_protocol
    from ..metrics.registry import METRICS

    restored, ground_truth = Path(args.restored), Path(args.gt)
    for path in (restored, ground_truth):
        if not path.exists():
            raise ImageError(f"not found: {path}")
    if restored.is_dir() and ground_truth.is_dir():
        pairs, unpaired = pair_folders(restored, ground_truth)
        if not pairs:
            raise ImageError(f"no images with the same name in {restored} and {ground_truth}")
    elif restored.is_file() and ground_truth.is_file():
        pairs, unpaired = [ImagePair(restored.stem, restored, ground_truth)], {}
    else:
        raise ImageError("RESTORED and GT must both be image files or both be folders")
    per_image = tuple(k for k in get_protocol(args.protocol).default_metrics if not METRICS[k].set_level)
    evaluator = build_evaluator(args, per_image)
    return run_and_print(evaluator, pairs, unpaired, args, per_image=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score",
        help="score restored faces against ground truth (A-LD, L2-LD, Deg., PSNR, SSIM, LPIPS, ...)",
        description=sys.modules[__name__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("restored", metavar="RESTORED", help="restored image, or a folder of them")
    parser.add_argument("gt", metavar="GT", help="ground-truth image, or a folder paired by file name")
    add_metric_options(parser, "every per-image metric")
    parser.set_defaults(func=run)
    return parser
