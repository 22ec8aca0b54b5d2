"""Quality of the shipped ``honestface-nano`` model (or any HonestFace checkpoint) on
held-out people, against the targets of its model card.

    python benchmarks/bench_nano.py [--weights honestface-nano.safetensors]
                                    [--data ../shared/data] [--max-faces 100] [--json out.json]

Faces: photos of the identities the checkpoint's training run held out (recorded in its
metadata), each with 3 other photos of the person as references. LQ: the project's
degradation at its fixed moderate level (blur sigma 2.5 px at 128 px, 4x, noise 5, JPEG
60; ``DegradationConfig.moderate()``). Printed: the metric table (PSNR, SSIM, dlib
identity distance, ALD-e, ALD-m for the bicubic LQ, the model input, the restoration
without and with references), the targets with pass/fail, and the restoration speed.
The exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="honestface-nano.safetensors",
                        help="HonestFace checkpoint that bundles its UNet/VAE (default: the shipped nano model)")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding the training roots (default: ../shared/data)")
    parser.add_argument("--max-faces", type=int, default=100)
    parser.add_argument("--references", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234, help="degradation seed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", default=None, help="also write the per-face values here")
    args = parser.parse_args(argv)

    import torch

    from honestface.errors import HonestFaceError
    from honestface.evaluation.heldout import (
        evaluate_heldout,
        heldout_identities,
        heldout_pipeline,
        load_heldout_faces,
        quality_targets,
    )
    from honestface.paths import find_model_file

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        weights = find_model_file("honestface", args.weights, what="HonestFace checkpoint")
        pipeline, landmarks, identity = heldout_pipeline(weights, batch_size=args.batch_size)
        identities = heldout_identities(weights)
        faces = load_heldout_faces(args.data, identities, pipeline.image_size, args.max_faces, args.references)
        started = time.perf_counter()
        result = evaluate_heldout(pipeline, faces, landmarks, identity, seed=args.seed)
        elapsed = time.perf_counter() - started
    except HonestFaceError as error:
        print(f"bench_nano: error: {error}", file=sys.stderr)
        return 2
    print(f"{weights.name}: {len(faces)} faces of {len(identities)} held-out identities, "
          f"{args.references} references each; degradation {result.degradation}")
    print(result.format_table())
    failed = 0
    for name, met, numbers in quality_targets(result.table()):
        failed += not met
        print(f"{'PASS' if met else 'FAIL'}  {name}: {numbers}")
    for column in ("PSNR", "ID dist", "ALD-e", "ALD-m"):
        mean, stderr, count = result.paired_difference("restored, refs", "restored, no refs", column)
        print(f"refs - no refs, {column:<7}: {mean:+.5f} +- {stderr:.5f} (standard error, {count} faces)")
    print(f"evaluation (2 restorations + metrics per face): {elapsed:.1f} s, "
          f"{elapsed / len(faces):.2f} s per face, {torch.get_num_threads()} threads")
    if args.json:
        Path(args.json).write_text(result.to_json(), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
