"""Time spent on references when many faces of one person share one reference set.

    python benchmarks/bench_references.py [--faces 16] [--references 5] [--batch-size 4]
                                          [--weights honestface-nano.safetensors] [--restore]

Two ways to give F faces of one person the same N references:

- **per face**: every face carries its own copy of the reference images, so every chunk of
  ``--batch-size`` faces runs the landmark and identity backends and the IDE (FFE, FIE) on
  its copies: F x N reference encodings (what every path did before sets were encoded once);
- **once**: :meth:`HonestFacePipeline.encode_references` encodes the set once (landmarks,
  embeddings and IDE tokens) and every chunk reuses it (what the command line and the nodes
  do, and what ``restore`` does with one set, or one tensor object, given to several faces):
  N encodings, then only Eq. 6 per face.

Printed: the seconds each way spends on the references (and their ratio), with the backends
the checkpoint was trained with (dlib landmarks; its ``config.identity_backend``).
``--restore`` also times both whole restorations.

Faces: the 9 real low-quality crops of ``real_lq/reference_sets/obama`` (repeated up to F),
references: its high-quality references.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
DEFAULT_SET = REPO_ROOT.parent / "shared" / "data" / "real_lq" / "reference_sets" / "obama"


def _images(folder: Path):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def time_references(pipeline, faces, references, batch_size: int) -> dict[str, float]:
    """Seconds on the references: with every face, and encoded once and reused."""
    start = time.perf_counter()
    for first in range(0, faces.shape[0], batch_size):
        count = min(batch_size, faces.shape[0] - first)
        pipeline.prepare_references([references.clone() for _ in range(count)])
    per_face = time.perf_counter() - start
    start = time.perf_counter()
    encoded = pipeline.encode_references(references)
    for first in range(0, faces.shape[0], batch_size):
        count = min(batch_size, faces.shape[0] - first)
        pipeline.prepare_references([encoded] * count)
    once = time.perf_counter() - start
    return dict(per_face=per_face, once=once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=16, help="faces of the person to restore (default 16)")
    parser.add_argument("--references", type=int, default=5, help="references in the set (default 5)")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per forward (default 4, the CLI's)")
    parser.add_argument("--weights", default="honestface-nano.safetensors", help="HonestFace checkpoint")
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="folder with lq_crop/ and refs/")
    parser.add_argument("--restore", action="store_true", help="also time the whole restoration")
    args = parser.parse_args(argv)
    if args.faces < 1 or args.references < 1 or args.batch_size < 1:
        parser.error("--faces, --references and --batch-size must be >= 1")
    if not (args.set / "lq_crop").is_dir() or not (args.set / "refs").is_dir():
        parser.error(f"--set: {args.set} needs lq_crop/ and refs/ folders")

    import torch

    from honestface.face import load_identity_backend, load_landmark_backend
    from honestface.image_io import load_images
    from honestface.pipeline import HonestFacePipeline, load_model

    model = load_model(checkpoint=args.weights)
    landmarks = load_landmark_backend("dlib", aligned_fallback=True)
    identity = load_identity_backend(model.config.identity_backend)
    pipeline = HonestFacePipeline(model, landmarks, identity, batch_size=args.batch_size)
    size = model.config.image_size
    lq_files, ref_files = _images(args.set / "lq_crop"), _images(args.set / "refs")
    if len(ref_files) < args.references:
        parser.error(f"{args.set / 'refs'} has {len(ref_files)} references, fewer than {args.references}")
    faces = load_images([lq_files[i % len(lq_files)] for i in range(args.faces)], size)
    references = load_images(ref_files[: args.references], size)

    time_references(pipeline, faces[:1], references, 1)  # warm-up: backends' first calls
    load = os.getloadavg()[0]
    timed = time_references(pipeline, faces, references, args.batch_size)
    print(f"{args.faces} faces, {args.references} references, batch {args.batch_size}, {model.config.image_size} px, "
          f"landmarks dlib, identity {model.config.identity_backend}; 1-min load average {load:.1f}")
    print(f"references with every face ({args.faces} x {args.references} encodings): {timed['per_face']:.2f} s")
    print(f"references encoded once ({args.references} encodings, reused by every chunk): {timed['once']:.2f} s")
    print(f"ratio: {timed['per_face'] / timed['once']:.1f}x")
    if args.restore:
        with torch.inference_mode():
            start = time.perf_counter()
            pipeline.restore(faces, [references.clone() for _ in range(args.faces)])
            every = time.perf_counter() - start
            start = time.perf_counter()
            pipeline.restore(faces, pipeline.encode_references(references))
            shared = time.perf_counter() - start
        print(f"whole restoration: references with every face {every:.2f} s, encoded once {shared:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
