"""The two measured constants of whole-photo restoration, re-measured on real data.

    python benchmarks/measure_photo_thresholds.py kind [--count 300] [--data ../shared/data]
    python benchmarks/measure_photo_thresholds.py identity [--people 150] [--identity dlib-torch]
                                                  [--size 128] [--degrade 1]
    python benchmarks/measure_photo_thresholds.py crops --split select|tune|report [--count 40]

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
2.5, shrink x4, noise 5/255, JPEG 60; heavy = sigma 4, x8, noise 10, JPEG 40). Square
images that are not aligned crops, which should stay photos, come from the first photo
of ``count`` LFW people: the 250x250 photo as it is and degraded at 128, 250 and 512 px;
squares around its face (:func:`reframe`: the aligned square scaled so the face fills
90 / 30 / 20 % of what it fills in an aligned crop, or shifted by 25 % of the side), clean
and degraded; its four 100 px corners (mostly background) enlarged, clean and degraded;
flat, gradient and noise squares; and the square real whole photos. The people, in
sorted order: ``--split tune`` takes the even-numbered of the first 80 CelebA identities
and LFW people (the thresholds of :mod:`honestface.face.input_kind` were chosen on them),
``--split report`` the odd-numbered ones (held out, reported), ``--split select`` people
80 - 119 (to choose between trained classifiers without touching report); the aligned-crop
classifier is trained on none of them (it skips the first 120 of each, so ``--count``
stays at most 40). Prints, per set, how many are
taken for crops by the detector alone, by the two earlier second looks (dlib's HOG at a
lowered threshold: ``OLD_RULE``, ``HOG_RULE``), by the HOG look or the classifier, and by
the stated rule (the classifier, :mod:`honestface.face.input_kind`), the totals, and the
totals with each constant of the stated rule swept.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

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
        taken = sum(k.kind == "aligned" for k in kinds)
        print(f"{name}: classify_input takes {taken} of {len(paths)} for aligned crops "
              f"({sum(k.kind == 'aligned' and 'crop classifier' in k.reason for k in kinds)} by the crop classifier"
              f"{'' if name == 'real crops' else ', trained on some of these people: crops gives held-out figures'})")
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


class Rule(NamedTuple):
    """How a square image is taken for an aligned crop (the first rule, alignment error of
    the detected face <= ALIGNED_TOLERANCE, always holds). Without a detected face:
    the HOG look (a weak face with box IoU >= ``iou`` with the aligned face box and HOG
    score >= ``score``, 68 points fitted in that box within ``fitted_error``; ``score`` inf:
    no HOG look) or the classifier (probability >= ``classifier``; None: no classifier).
    With a detected face whose error exceeds the tolerance but not ``detected_error``: the
    classifier too (0: never)."""

    iou: float = 1.0
    score: float = float("inf")
    fitted_error: float = 0.0
    classifier: float | None = None
    detected_error: float = 0.0


#: The second look before the negatives were measured, and the HOG look before the classifier.
OLD_RULE = Rule(0.3, -2.0, 0.10)
HOG_RULE = Rule(0.5, -1.5, 0.12)


def hog_look(image, floor: float = -2.5) -> dict:
    """The earlier second look at a square (3, S, S) uint8 image without a detected face:
    dlib's HOG detector with its threshold lowered to ``floor`` on a 320 px copy -> the
    (score, IoU with the aligned face box) of every box it returns, and the alignment error
    of the 68 points fitted in the aligned face box."""
    import cv2

    from honestface.face._images import to_uint8_hwc
    from honestface.face.dlib_backend import (
        LANDMARKS_68_FILE,
        _aligned_box,
        _load,
        dlib_model_file,
        fit_shape,
    )
    from honestface.face.input_kind import alignment_error

    array = to_uint8_hwc(image, "image")[0]
    side, work_side = array.shape[0], 320
    work = cv2.resize(array, (work_side, work_side),
                      interpolation=cv2.INTER_AREA if side > work_side else cv2.INTER_CUBIC)
    rects, scores, _ = _load("hog", "").run(work, 1, float(floor))
    target = _aligned_box(work_side, work_side)

    def iou(a, b) -> float:
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
        return width * height / union if union > 0 else 0.0

    candidates = [(float(score), iou((r.left(), r.top(), r.right(), r.bottom()), target))
                  for r, score in zip(rects, scores)]
    points = fit_shape(_load("shape", str(dlib_model_file(LANDMARKS_68_FILE))), array, _aligned_box(side, side))
    return {"candidates": candidates, "fit_error": alignment_error(points, side)}


def stated_rule() -> Rule:
    from honestface.face import input_kind as k

    return Rule(classifier=k.CROP_PROBABILITY, detected_error=k.CLASSIFIED_ERROR)


def decide(record: dict, rule: Rule) -> bool:
    """Is the image taken for an aligned crop under ``rule``? The decision of
    :func:`honestface.face.input_kind.classify_input` at the stated rule."""
    from honestface.face.input_kind import ALIGNED_TOLERANCE

    classified = rule.classifier is not None and record["crop_probability"] >= rule.classifier
    if record["detected"]:
        return record["error"] <= ALIGNED_TOLERANCE or (classified and record["error"] <= rule.detected_error)
    if classified:
        return True
    best = max((s for s, overlap in record["candidates"] if overlap >= rule.iou), default=float("-inf"))
    return best >= rule.score and record["fit_error"] <= rule.fitted_error


REFRAMINGS = {"tight (face 90 %)": (0.65, 0.0, 0.0), "wide (face 30 %)": (2.0, 0.0, 0.0),
              "widest (face 20 %)": (3.0, 0.0, 0.0), "shifted x 25 %": (1.0, 0.25, 0.0),
              "shifted y 25 %": (1.0, 0.0, 0.25), "shifted xy -25 %": (1.0, -0.25, -0.25)}


def reframe(photo, landmarks, scale: float, dx: float, dy: float, size: int):
    """The square the FFHQ alignment cuts around a photo's face, ``scale`` times as large
    (the face fills 1 / scale of what it fills in an aligned crop) and shifted by (dx, dy)
    of its side, at ``size`` px (mirrored beyond the photo's border)."""
    import cv2
    import numpy as np
    import torch

    from honestface.face.align import alignment_affine

    to_crop = np.vstack([alignment_affine(torch.as_tensor(landmarks), 256).numpy().astype(np.float64), [0, 0, 1]])
    c = 127.5
    frame = np.array([[1 / scale, 0, c - c / scale - dx * 256], [0, 1 / scale, c - c / scale - dy * 256], [0, 0, 1]])
    matrix = (np.diag([size / 256, size / 256, 1]) @ frame @ to_crop)[:2]
    return cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_AREA if size < 256 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


#: The select split starts after the 80 people of tune and report.
SELECT_FROM = 80


def split_people(folders: list, split: str, count: int) -> list:
    """The ``count`` people of ``split`` from all people in sorted order (see the module doc)."""
    if split == "select":
        return folders[SELECT_FROM:SELECT_FROM + count]
    return folders[0 if split == "tune" else 1::2][:count]


def measure_crops(data: Path, count: int, split: str, seed: int, classifier_path: str | None = None) -> None:
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from honestface.face import load_face_detector
    from honestface.face.crop_classifier import load_crop_classifier
    from honestface.face.input_kind import alignment_error
    from honestface.face.photo import detect_photo_faces
    from honestface.image_io import load_image

    detector = load_face_detector("dlib")
    classifier = load_crop_classifier(classifier_path)  # None: the shipped weights
    rng = np.random.default_rng(seed)
    identities = split_people(sorted(p for p in (data / "celeba").iterdir() if p.is_dir()), split, count)
    people = split_people(sorted(p for p in (data / "lfw").iterdir() if p.is_dir()), split, count)
    trained_from = classifier.record.get("bank", {}).get("celeba_identities_skipped", 0)
    last = SELECT_FROM + count if split == "select" else 2 * count
    if last > trained_from:
        print(f"warning: split {split} with --count {count} reaches identities the aligned-crop classifier was "
              f"trained on (it skipped the first {trained_from}): its figures are not held out", file=sys.stderr)

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()

    def record(image) -> dict:
        """What the decision needs of one (3, S, S) uint8 image, for any rule."""
        side = image.shape[-1]
        faces = [f for f in detect_photo_faces(image, detector) if f.landmarks is not None]
        probability = float(classifier.probability(image))
        if faces:
            return {"detected": True, "error": alignment_error(faces[0].landmarks, side),
                    "crop_probability": probability}
        return {"detected": False, "crop_probability": probability, **hog_look(image)}

    def resized(array, size):
        shrinking = size < array.shape[0]
        return cv2.resize(array, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)

    sets: dict[str, list] = {}

    def add(name, array, **extra):
        sets.setdefault(name, []).append({**record(tensor(array)), **extra})

    for folder in identities:
        face = np.asarray(Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB"))
        for size in (128, 256, 512):
            for level in LEVELS:
                add(f"crop {level} {size}", degrade(resized(face, size), level, rng), person=folder.name)
    # negatives: square images that are not aligned crops
    for i, folder in enumerate(people):
        photo = np.asarray(Image.open(sorted(folder.glob("*.jpg"))[0]).convert("RGB"))
        add("photo LFW 250", photo)
        for size in (128, 250, 512):
            for level in LEVELS:
                add(f"photo {level} {size}", degrade(photo if size == 250 else resized(photo, size), level, rng))
        faces = [f for f in detect_photo_faces(tensor(photo), detector) if f.landmarks is not None]
        size, level = (128, 256, 512)[i % 3], tuple(LEVELS)[i % 2]
        for name, (scale, dx, dy) in REFRAMINGS.items() if faces else ():
            square = reframe(photo, faces[0].landmarks, scale, dx, dy, size)
            add(f"reframed {name}", square)
            add(f"reframed {name}, degraded", degrade(square, level, rng))
        for j, (y, x) in enumerate(((0, 0), (0, 150), (150, 0), (150, 150))):  # 100 px corners, mostly background
            corner = resized(photo[y:y + 100, x:x + 100], (128, 256, 512)[(i + j) % 3])
            add("background corner", corner)
            add("background corner, degraded", degrade(corner, tuple(LEVELS)[(i + j) % 2], rng))
    for size in (128, 256, 512):
        y, x = np.mgrid[0:size, 0:size] / size
        for plane in (np.full((size, size), 128.0), 255 * x, 255 * y, 255 * np.hypot(x - 0.5, y - 0.5) / 0.71,
                      rng.uniform(0, 255, (size, size)),
                      cv2.GaussianBlur(rng.uniform(0, 255, (size, size)), (0, 0), size / 16) * 4 - 382):
            rgb = np.repeat(np.clip(plane, 0, 255).astype(np.uint8)[..., None], 3, 2)
            add("flat / gradient / noise", rgb)
            add("flat / gradient / noise, degraded", degrade(rgb, "heavy", rng))
    whole = [p for p in sorted((data / "real_lq" / "whole").iterdir())
             if (lambda i: i.shape[1] == i.shape[2])(load_image(p, torch.uint8))]
    sets["real whole square photos"] = [record(load_image(p, torch.uint8)) for p in whole]

    stated = stated_rule()
    hog_or_classifier = HOG_RULE._replace(classifier=stated.classifier)
    print(f"split {split}: {len(identities)} CelebA identities, {len(people)} LFW people, {len(whole)} square "
          f"real whole photos; old second look {tuple(OLD_RULE)}, HOG look {tuple(HOG_RULE)}, stated {stated}")
    rules = (("detector alone", Rule()), ("old", OLD_RULE), ("HOG look", HOG_RULE),
             ("HOG look or classifier", hog_or_classifier), ("stated", stated))
    print("  taken for aligned crops: " + " / ".join(label for label, _ in rules))
    positives = [r for name, rows in sets.items() if name.startswith("crop") for r in rows]
    negatives = [r for name, rows in sets.items() if not name.startswith("crop") for r in rows]
    for name, rows in sets.items():
        taken = " / ".join(str(sum(decide(r, rule) for r in rows)) for _, rule in rules)
        print(f"  {name}: {len(rows)} images, {sum(not r['detected'] for r in rows)} without a face: {taken}")
    for label, rule in rules[1:]:
        crops, wrong = sum(decide(r, rule) for r in positives), sum(decide(r, rule) for r in negatives)
        print(f"  {label} rule: degraded crops restored as crops {crops}/{len(positives)} "
              f"({crops / len(positives):.1%}); "
              f"negatives taken for crops {wrong}/{len(negatives)} ({wrong / len(negatives):.1%})")
    missed = [r for r in positives if not decide(r, stated)]
    print(f"  crops the stated rule misses: {sum(r['detected'] for r in missed)} restored as photos (their face "
          f"detected, aligned and pasted back), {sum(not r['detected'] for r in missed)} passed through unchanged")
    by_person = Counter(r["person"] for r in missed)
    print(f"  of {len(by_person)} identities (of 6 versions each): "
          + ", ".join(f"{person} {count}" for person, count in by_person.most_common()))
    print("  the stated rule with one value changed (crops taken / negatives taken):")
    for field, values in (("classifier", (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)),
                          ("detected_error", (0.0, 0.15, 0.2, 0.25, 0.3, 0.4))):
        line = []
        for value in values:
            rule = stated._replace(**{field: value})
            taken = sum(decide(r, rule) for r in positives), sum(decide(r, rule) for r in negatives)
            line.append(f"{value}: {taken[0]} / {taken[1]}")
        print(f"    {field}: " + "; ".join(line))


def measure_identity(data: Path, people: int, identity: str, size: int, degrade: float, seed: int) -> None:
    import numpy as np
    import torch

    from honestface.face import (
        align_face,
        detect_photo_faces,
        load_face_detector,
        load_identity_backend,
    )
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
    parser.add_argument("--split", choices=("select", "tune", "report"), default="report")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--count", type=int, default=None,
                        help="kind: photos and crops (default 300); crops: identities and people per split (default "
                             "40; more would reach the people the aligned-crop classifier was trained on)")
    parser.add_argument("--classifier", default=None,
                        help="crops: an aligned-crop classifier file to measure (default: the shipped one)")
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--identity", default="dlib-torch")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--degrade", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.what == "kind":
        measure_kind(Path(args.data), args.count or 300, args.seed)
    elif args.what == "crops":
        measure_crops(Path(args.data), args.count or 40, args.split, args.seed, args.classifier)
    else:
        measure_identity(Path(args.data), args.people, args.identity, args.size, args.degrade, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
