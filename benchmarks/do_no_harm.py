"""Do no harm: does the restorer leave good faces as they were and improve bad ones?

    python benchmarks/do_no_harm.py [--weights honestface-nano.safetensors] [--faces 24]
                                    [--photos 12] [--json out.json] [--plot curve.png]
    python benchmarks/do_no_harm.py --skip-faces 24 --faces 48 --seed 7 --photos 0   # to choose on

1. Aligned crops (:mod:`honestface.evaluation.do_no_harm`): faces of the people the
   checkpoint's training held out (its metadata), at the model's size, degraded at four
   levels (clean, mild, moderate, heavy) by a degradation written apart from the training
   one, restored without and with 3 other photos of the person. Printed per level: PSNR and
   dlib identity change against the input, faces clearly worse, and the targets; and, with
   no restorer, how many faces a second draw of the same degradation makes "clearly worse"
   by identity (the identity criterion's floor).
2. Whole photos, as ``honestface restore`` runs them (default settings):
   - ordinary photos: LFW news photos (people the model never trained on; LFW is not a
     training set here), one per person: dlib identity distance between the input face and
     the output face (aligned with the same transform) and PSNR of the face box against the
     input;
   - a clean face of 256 and of 512 px (held-out people) pasted into a 900x700 photo: PSNR of
     the face region against the input;
   - the same 256 px faces mildly degraded: PSNR of the face region against the clean face,
     before and after.

Choose between models (training runs, options) on faces set apart from the reported ones
(``--skip-faces``, another ``--seed``), and report the default run.

The exit status is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _mean(values):
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def lfw_photos(data: Path, count: int) -> list[Path]:
    """One photo of each of ``count`` LFW people spread over the alphabet (deterministic)."""
    people = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())
    step = max(1, len(people) // max(1, count))
    chosen = []
    for person in people[::step][:count]:
        files = sorted(person.glob("*.jpg"))
        if files:
            chosen.append(files[0])
    return chosen


def box_psnr(a, b, box) -> float:
    from honestface.metrics.pixel import psnr

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    return float(psnr(a[None, :, y0:y1, x0:x1].clamp(0, 1), b[None, :, y0:y1, x0:x1].clamp(0, 1))[0])


def whole_photo_checks(pipeline, detector, identity, faces, photos: list[Path], restore_kwargs: dict) -> dict:
    """The whole-photo measurements of the module doc."""
    import torch
    import torch.nn.functional as F

    from honestface.evaluation.do_no_harm import LEVELS, degrade_faces
    from honestface.face.photo import align_selected_faces, detect_photo_faces
    from honestface.image_io import load_image
    from honestface.whole_photo import restore_whole_photos

    out: dict = {"ordinary": [], "clean_256": [], "clean_512": [], "mild_256": []}
    for path in photos:
        photo = load_image(path)
        result = restore_whole_photos(pipeline, [photo], detector, **restore_kwargs)[0]
        found = [f for f in detect_photo_faces(photo, detector, pipeline.landmark_backend) if f.selected]
        if not found:
            continue
        face = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        before = align_selected_faces(photo, [face], 256)[0].crop
        after = align_selected_faces(result.image, [face], 256)[0].crop
        distance = float((identity.embed(after[None]) - identity.embed(before[None])).norm())
        out["ordinary"].append({"photo": f"lfw/{path.parent.name}/{path.name}", "identity_distance": distance,
                                "face_box_psnr": box_psnr(result.image, photo, face.box)})

    mild = next(level for level in LEVELS if level.name == "mild")
    background = torch.linspace(0.25, 0.75, 900).view(1, 1, 900).expand(3, 700, 900).contiguous()
    for index, case in enumerate(faces):
        for side in (256, 512):
            clean = F.interpolate(case.gt[None], size=(side, side), mode="bicubic", align_corners=False,
                                  antialias=True)[0].clamp(0, 1)
            clean = (clean * 255).round() / 255
            variants = [("clean", clean)]
            if side == 256:
                variants.append(("mild", degrade_faces(clean[None], mild, 100 + index)[0]))
            for kind, face_image in variants:
                photo = background.clone()
                top, left = (700 - side) // 2, (900 - side) // 2
                photo[:, top:top + side, left:left + side] = face_image
                box = (left, top, left + side, top + side)
                restored = restore_whole_photos(pipeline, [photo], detector, **restore_kwargs)[0].image
                reference = photo.clone()
                reference[:, top:top + side, left:left + side] = clean
                if kind == "clean":
                    out[f"clean_{side}"].append({"face": case.name, "face_region_psnr": box_psnr(restored, photo, box)})
                else:
                    out["mild_256"].append({"face": case.name, "psnr_before": box_psnr(photo, reference, box),
                                            "psnr_after": box_psnr(restored, reference, box)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="honestface-nano.safetensors",
                        help="HonestFace checkpoint that bundles its UNet/VAE (default: the shipped nano model)")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding celeba/ and lfw/ (default: ../shared/data)")
    parser.add_argument("--heldout-from", default=None,
                        help="checkpoint whose metadata names the held-out people (default: --weights; a training "
                             "checkpoint of the same run has none)")
    parser.add_argument("--faces", type=int, default=24, help="held-out faces for the aligned-crop curve")
    parser.add_argument("--skip-faces", type=int, default=0,
                        help="leave out the first N held-out faces (the reported ones): a set apart to choose "
                             "between models on, e.g. --skip-faces 24 --faces 48 --seed 7 --photos 0")
    parser.add_argument("--photos", type=int, default=12, help="LFW photos (0 skips the whole-photo checks)")
    parser.add_argument("--big-faces", type=int, default=4, help="held-out faces pasted into photos at 256/512 px")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2024, help="degradation seed")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", default=None, help="write every per-face value here")
    parser.add_argument("--plot", default=None, help="write the do-no-harm curve (PNG) here")
    args = parser.parse_args(argv)

    import torch

    from honestface.errors import HonestFaceError
    from honestface.evaluation.do_no_harm import (
        do_no_harm_targets,
        evaluate_do_no_harm,
        identity_noise_floor,
        plot_do_no_harm,
    )
    from honestface.evaluation.heldout import heldout_identities, heldout_pipeline, load_heldout_faces
    from honestface.face import load_face_detector
    from honestface.image_io import save_image
    from honestface.paths import find_model_file

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        weights = find_model_file("honestface", args.weights, what="HonestFace checkpoint")
        pipeline, _, identity = heldout_pipeline(weights, batch_size=args.batch_size)
        identities = heldout_identities(find_model_file("honestface", args.heldout_from, what="HonestFace checkpoint")
                                        if args.heldout_from else weights)
        faces = load_heldout_faces(Path(args.data), identities, pipeline.image_size,
                                   args.skip_faces + args.faces, 3)[args.skip_faces:]
        gt = torch.stack([f.gt for f in faces])
        result = evaluate_do_no_harm(lambda lq, refs: pipeline.restore(lq, refs), gt,
                                     [f.references for f in faces], identity, [f.name for f in faces],
                                     seed=args.seed)
        photos = {}
        if args.photos > 0:
            detector = load_face_detector("dlib")
            big = load_heldout_faces(Path(args.data), identities, 256, args.big_faces, 1)
            photos = whole_photo_checks(pipeline, detector, identity, big,
                                        lfw_photos(Path(args.data), args.photos), {})
    except HonestFaceError as error:
        print(f"do_no_harm: error: {error}", file=sys.stderr)
        return 2
    print(f"{weights.name}: {len(faces)} aligned {pipeline.image_size} px faces of {len(identities)} held-out "
          f"people, 3 references each")
    print(result.format_table())
    floor = identity_noise_floor(gt, identity, seed=args.seed, other_seed=args.seed + 1)
    print("no restorer, a second draw of the degradation, faces 'clearly worse' by identity (the metric's floor): "
          + ", ".join(f"{level} {count}/{len(faces)}" for level, count in floor.items()))
    mean, stderr, count = result.paired_difference("moderate", "ID change")
    print(f"references - none, ID change at moderate: {mean:+.4f} +- {stderr:.4f} (SE, {count} faces)")
    targets = do_no_harm_targets(result)
    if photos:
        ordinary = photos["ordinary"]
        identity_mean = _mean([r["identity_distance"] for r in ordinary])
        box_mean = _mean([r["face_box_psnr"] for r in ordinary])
        print(f"ordinary photos ({len(ordinary)} LFW): identity distance input->output {identity_mean:.3f}, "
              f"face box PSNR {box_mean:.1f} dB")
        targets.append(("ordinary photos: identity distance <= 0.15", identity_mean <= 0.15, f"{identity_mean:.3f}"))
        targets.append(("ordinary photos: face box >= 30 dB from the input", box_mean >= 30, f"{box_mean:.1f} dB"))
        for side in (256, 512):
            rows = photos[f"clean_{side}"]
            low = min((r["face_region_psnr"] for r in rows), default=float("nan"))
            print(f"clean {side} px face in a photo: face region PSNR to input min {low:.1f} dB, "
                  f"mean {_mean([r['face_region_psnr'] for r in rows]):.1f} dB")
            targets.append((f"clean {side} px face in a photo: face region >= 35 dB", low >= 35, f"min {low:.1f} dB"))
        mild = photos["mild_256"]
        gains = [r["psnr_after"] - r["psnr_before"] for r in mild]
        print(f"mild 256 px face in a photo: PSNR change {_mean(gains):+.2f} dB (worst {min(gains):+.2f})")
        targets.append(("mild 256 px face in a photo: not made worse", min(gains) >= -0.1,
                        f"worst {min(gains):+.2f} dB"))
    failed = 0
    for name, met, numbers in targets:
        failed += not met
        print(f"{'PASS' if met else 'FAIL'}  {name}: {numbers}")
    print(f"{time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads")
    if args.json:
        data = json.loads(result.to_json())
        data["photos"] = photos
        Path(args.json).write_text(json.dumps(data, indent=1), encoding="utf-8")
    if args.plot:
        save_image(plot_do_no_harm(result), args.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
