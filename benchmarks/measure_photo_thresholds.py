"""The two measured constants of whole-photo restoration, re-measured on real data.

    python benchmarks/measure_photo_thresholds.py kind [--count 300] [--data ../shared/data]
    python benchmarks/measure_photo_thresholds.py identity [--people 150] [--identity dlib-torch]
                                                  [--size 128] [--degrade 1]
    python benchmarks/measure_photo_thresholds.py crops --split tune|report [--count 40]

``kind``: the alignment error of :func:`honestface.face.input_kind.classify_input` (dlib
HOG + 68 points) on ``count`` random LFW 250x250 photos (should be photos), ``count``
random CelebA 256 aligned crops and every real low-quality 512 crop (should be aligned
crops); prints the percentiles and the error rates at several tolerances, and at
``ALIGNED_TOLERANCE``.

``identity``: for ``people`` random LFW people with at least 4 photos with a face, every
photo is aligned at ``size`` px; a probe photo is compared with the mean of 3 other photos
of the same person (same) and of other people (different), as the angle in degrees the
pipeline's ``identity_distance`` uses. ``--degrade F`` shrinks the probe F times (area) and
enlarges it back (bicubic), as a low-quality face in a photo. Prints the percentiles and
the false reject / false accept rates per threshold, and at the stated threshold.

``crops``: does ``--mode auto`` restore degraded aligned crops as crops, and keep square
photos photos? CelebA 256 crops (the first crop of ``count`` identities) are resized to
128, 256 and 512 px and degraded at two levels by a degradation written here, apart from
the project's (:func:`degrade`; sizes relative to 128 px: moderate = Gaussian blur sigma
2.5, shrink x4, noise 5/255, JPEG 60; heavy = sigma 4, x8, noise 10, JPEG 40); LFW 250x250
photos (the first photo of ``count`` people) and the square real whole photos stay as
they are. ``--split tune`` takes the even-numbered CelebA identities and LFW people (in
sorted order; the thresholds of :mod:`honestface.face.input_kind` were chosen on them),
``--split report`` the odd-numbered ones (held out). Prints, per set, how many are taken
for crops at several weak-face scores and at the stated one (``WEAK_FACE_SCORE``).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def measure_kind(data: Path, count: int, seed: int) -> None:
    import numpy as np

    from honestface.face import load_face_detector
    from honestface.face.input_kind import ALIGNED_TOLERANCE, classify_input
    from honestface.image_io import load_image

    detector = load_face_detector("dlib")
    rng = random.Random(seed)
    sets = {"lfw photos": rng.sample(sorted(data.glob("lfw/*/*.jpg")), count),
            "celeba crops": rng.sample(sorted(data.glob("celeba/*/*.jpg")), count),
            "real crops": sorted((data / "real_lq" / "cropped").iterdir())}
    for name, paths in sets.items():
        kinds = [classify_input(load_image(p), detector) for p in paths]
        errors = np.array([np.nan if k.error is None else k.error for k in kinds])
        print(f"{name}: {len(paths)} images, {int(np.isnan(errors).sum())} without a face; error percentiles "
              f"0/1/5/50/95/99/100: {np.round(np.nanpercentile(errors, [0, 1, 5, 50, 95, 99, 100]), 3).tolist()}")
        for tolerance in sorted({0.05, 0.08, 0.10, 0.12, 0.15, 0.20, ALIGNED_TOLERANCE}):
            aligned = np.nan_to_num(errors, nan=np.inf) <= tolerance
            wrong = aligned.sum() if name.startswith("lfw") else (~aligned).sum()
            mark = "  <- ALIGNED_TOLERANCE" if tolerance == ALIGNED_TOLERANCE else ""
            print(f"  tolerance {tolerance:.2f}: {wrong} wrong ({wrong / len(paths):.1%}){mark}")


LEVELS = {"moderate": (2.5, 4, 5.0, 60), "heavy": (4.0, 8, 10.0, 40)}  # sigma, shrink, noise, JPEG at 128 px


def degrade(rgb, level: str, rng):
    """(S, S, 3) uint8 aligned face -> the same degraded at ``level`` (see the module doc):
    blur, shrink (area), Gaussian noise, JPEG, enlarge back (bicubic); OpenCV and PIL only."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    sigma, shrink, noise, quality = LEVELS[level]
    side = rgb.shape[0]
    image = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma * side / 128)
    small = cv2.resize(image, (side // shrink, side // shrink), interpolation=cv2.INTER_AREA)
    small = np.clip(small + rng.normal(0.0, noise, small.shape), 0, 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, "JPEG", quality=quality)
    small = np.asarray(Image.open(buffer).convert("RGB"))
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)


def measure_crops(data: Path, count: int, split: str, seed: int) -> None:
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from honestface.face import load_face_detector
    from honestface.face.input_kind import ALIGNED_TOLERANCE, WEAK_FACE_SCORE, aligned_face_evidence, classify_input
    from honestface.face.photo import detect_photo_faces
    from honestface.image_io import load_image

    detector = load_face_detector("dlib")
    rng = np.random.default_rng(seed)
    half = 0 if split == "tune" else 1
    identities = sorted(p for p in (data / "celeba").iterdir() if p.is_dir())[half::2][:count]
    people = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())[half::2][:count]

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()

    def record(image) -> tuple[str, float, float]:
        """(what the detector path decided, weak-face score, fitted error) of one image."""
        faces = [f for f in detect_photo_faces(image, detector) if f.landmarks is not None]
        if faces:
            return classify_input(image, detector).kind, float("nan"), float("nan")
        evidence = aligned_face_evidence(image)
        return "none", evidence.score, evidence.error

    sets: dict[str, list] = {}
    for folder in identities:
        face = np.asarray(Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB"))
        for size in (128, 256, 512):
            resized = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if size < 256 else cv2.INTER_CUBIC)
            for level in LEVELS:
                sets.setdefault(f"celeba {level} {size}", []).append(record(tensor(degrade(resized, level, rng))))
    for folder in people:
        sets.setdefault("lfw photos", []).append(record(load_image(sorted(folder.glob("*.jpg"))[0], torch.uint8)))
    whole = [p for p in sorted((data / "real_lq" / "whole").iterdir())
             if (lambda i: i.shape[1] == i.shape[2])(load_image(p, torch.uint8))]
    sets["real whole square photos"] = [record(load_image(p, torch.uint8)) for p in whole]

    scores = sorted({-2.5, -2.0, -1.5, -1.2, -1.0, -0.8, -0.6, -0.3, 0.0, WEAK_FACE_SCORE})
    print(f"split {split}: {len(identities)} CelebA identities, {len(people)} LFW people, {len(whole)} square "
          f"real whole photos; tolerance {ALIGNED_TOLERANCE}")
    totals: dict[float, list[int]] = {t: [0, 0] for t in scores}
    for name, rows in sets.items():
        photo = not name.startswith("celeba")
        detected = sum(kind == "aligned" for kind, _, _ in rows)
        line = f"  {name}: {len(rows)} images, {detected} crops by the detector, {sum(k == 'none' for k, _, _ in rows)} without a face"
        for t in scores:
            crops = detected + sum(kind == "none" and score >= t and error <= ALIGNED_TOLERANCE
                                   for kind, score, error in rows)
            if not photo:
                totals[t][0] += crops
                totals[t][1] += len(rows)
            mark = "*" if t == WEAK_FACE_SCORE else ""
            line += f"; {t:+.1f}{mark}: {crops} ({crops / len(rows):.1%}) crops"
        print(line)
    for t in scores:
        mark = "  <- WEAK_FACE_SCORE" if t == WEAK_FACE_SCORE else ""
        print(f"  score {t:+.1f}: degraded crops restored as crops {totals[t][0]}/{totals[t][1]} "
              f"({totals[t][0] / totals[t][1]:.1%}){mark}")


def measure_identity(data: Path, people: int, identity: str, size: int, degrade: float, seed: int) -> None:
    import numpy as np
    import torch

    from honestface.face import align_face, detect_photo_faces, load_face_detector, load_identity_backend
    from honestface.image_io import load_image
    from honestface.metrics.identity import identity_angle_degrees
    from honestface.pipeline import identity_match_threshold

    detector, backend = load_face_detector("dlib"), load_identity_backend(identity)
    rng = random.Random(seed)
    folders = rng.sample(sorted(p for p in (data / "lfw").iterdir() if p.is_dir()), people)
    embeddings = {}
    for folder in folders:
        crops = []
        for path in sorted(folder.glob("*.jpg"))[:5]:
            photo = load_image(path)
            faces = [f for f in detect_photo_faces(photo, detector) if f.selected]
            if faces:
                crops.append(align_face(photo, torch.from_numpy(faces[0].landmarks), size)[0])
        if len(crops) < 4:
            continue
        crops = torch.stack(crops)
        if degrade > 1:
            small = torch.nn.functional.interpolate(crops[:1], scale_factor=1 / degrade, mode="area")
            crops[0] = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic").clamp(0, 1)[0]
        embeddings[folder.name] = backend.embed(crops).double()

    def centre(e):
        return torch.nn.functional.normalize(e, dim=-1).mean(0)

    names = sorted(embeddings)
    same, different = [], []
    for i, name in enumerate(names):
        probe = embeddings[name][0]
        same.append(float(identity_angle_degrees(probe, centre(embeddings[name][1:4]))))
        for other in [names[(i + k) % len(names)] for k in range(1, 6)]:
            different.append(float(identity_angle_degrees(probe, centre(embeddings[other][1:4]))))
    same, different = np.array(same), np.array(different)
    stated = identity_match_threshold(identity)
    print(f"{identity} at {size} px, probe degraded x{degrade:g}: {len(names)} people, {len(same)} same-person and "
          f"{len(different)} different-person pairs")
    print(f"  same: percentiles 50/90/99/100 {np.round(np.percentile(same, [50, 90, 99, 100]), 1).tolist()}")
    print(f"  different: percentiles 0/1/5/50 {np.round(np.percentile(different, [0, 1, 5, 50]), 1).tolist()}")
    for threshold in sorted({18.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, stated}):
        mark = "  <- stated threshold" if threshold == stated else ""
        print(f"  {threshold:5.1f} deg: false reject {(same >= threshold).mean():.1%}, "
              f"false accept {(different < threshold).mean():.1%}{mark}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("kind", "identity", "crops"))
    parser.add_argument("--split", choices=("tune", "report"), default="report")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--identity", default="dlib-torch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--degrade", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.what == "kind":
        measure_kind(Path(args.data), args.count, args.seed)
    elif args.what == "crops":
        measure_crops(Path(args.data), args.count, args.split, args.seed)
    else:
        measure_identity(Path(args.data), args.people, args.identity, args.size, args.degrade, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
