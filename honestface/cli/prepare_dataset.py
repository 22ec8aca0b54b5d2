"""``honestface prepare-dataset SRC OUT``: photos -> aligned identity folders for training.

SRC holds one folder per person (``SRC/<identity>/*.jpg``, like LFW or CelebRef-HQ);
images directly inside SRC count as one identity named after SRC. For every photo the
largest detected face is aligned FFHQ-style (68-point landmarks, the crop of
:func:`honestface.face.align.align_face`) to ``--size`` pixels and written to
``OUT/<identity>/<name>.png``. Faces whose crop spans fewer than ``--min-face`` source
pixels (they would be upscaled too much to serve as ground truth) are skipped, as are
photos without a face and unreadable files. ``OUT/prepare_report.csv`` lists every
source file with its status (ok / noface / small / unreadable) and face size, and
``OUT/prepare_report.json`` the totals. Identities left with fewer than ``--min-images``
faces are removed (references need other photos of the same person).

CelebRef-HQ (the paper's Sec. 4.1): its archive unpacks to one folder per person inside a
single top folder (``CelebRef-HQ/<identity>/*.png``, 1,005 identities, 512x512 faces that are
already aligned). A SRC holding nothing but one such top folder is read through it.
``--split celebref-hq`` applies the paper's split: the first ``--test-identities`` (100)
identities, in natural order of their folder names (``2`` before ``10``), go to
``OUT/test/<identity>``, the other 905 to ``OUT/train/<identity>`` (train on ``OUT/train``;
``split.json`` lists both). The split is made on the source folders, before any
identity is dropped, so it does not depend on detection. ``--aligned`` skips detection
and alignment and only resizes each image to ``--size`` (the paper: "All images are
resized to 512 x 512"); use it for sets that are aligned already, like CelebRef-HQ.

``--make-test`` writes a fixed test set instead (:mod:`honestface.evaluation.testset`):
``--test-set celebref-hq`` (the first ``--test-identities`` identities of CelebRef-HQ) or
``reface-test`` (every identity of Reface-Test); per identity the first photo is the
ground truth, its LQ is degraded with a seed of its own (``--seed``, the file name), the
other photos are its references; ``OUT/manifest.json`` holds the parameters, versions
and SHA-256 of every file, so a second run writes the same bytes and ``evaluate
--test-set OUT`` can check them.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import torch

from ..errors import HonestFaceError, ImageError
from ..image_io import IMAGE_SUFFIXES, load_image, save_image
from ..progress import ProgressCallback, report

STATUSES = ("ok", "noface", "small", "unreadable", "few_images")
SPLITS = ("none", "celebref-hq")
#: The paper's CelebRef-HQ split: the first 100 identities are the test set.
CELEBREF_TEST_IDENTITIES = 100


@dataclass
class PreparedFace:
    source: str
    identity: str
    status: str
    face_px: float
    output: str = ""
    split: str = ""


def face_extent(landmarks: torch.Tensor) -> float:
    """Side length, in source pixels, of the FFHQ crop square around a face."""
    from ..face.align import ffhq_quad

    quad = ffhq_quad(torch.as_tensor(landmarks, dtype=torch.float64))
    return float((quad[3] - quad[0]).norm())


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``id2`` before ``id10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part]


def dataset_root(source: Path) -> Path:
    """SRC, or its only sub-folder when SRC holds nothing else and that folder holds only
    folders (an archive's top folder, like ``CelebRef-HQ/``)."""
    entries = [p for p in source.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if not p.name.startswith(".")]
        if inner and all(p.is_dir() for p in inner):
            return entries[0]
    return source


def identity_sources(source: Path) -> list[tuple[str, list[Path]]]:
    """(identity, image files) pairs of SRC, identities in natural order of their names."""
    if not source.is_dir():
        raise HonestFaceError(f"source folder not found: {source}")
    source = dataset_root(source)
    groups = []
    loose = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        groups.append((source.name, loose))
    for folder in sorted((p for p in source.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            groups.append((folder.name, files))
    if not groups:
        raise HonestFaceError(f"no images in {source} or its sub-folders")
    return groups


def split_identities(names: Sequence[str], split: str, test_identities: int = CELEBREF_TEST_IDENTITIES
                     ) -> dict[str, str]:
    """identity -> "train" / "test" ("" without a split); ``names`` in source order."""
    if split not in SPLITS:
        raise HonestFaceError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    if split == "none":
        return {name: "" for name in names}
    if len(names) <= test_identities:
        raise HonestFaceError(f"the {split} split puts the first {test_identities} identities in the test set, "
                              f"but the source has only {len(names)}")
    return {name: "test" if index < test_identities else "train" for index, name in enumerate(names)}


def prepare_dataset(source: str | Path, output: str | Path, size: int = 512, min_face: float = 64.0,
                    min_images: int = 1, max_per_identity: int | None = None, detector=None,
                    image_format: str = "png", progress: ProgressCallback | None = None,
                    split: str = "none", test_identities: int = CELEBREF_TEST_IDENTITIES,
                    aligned: bool = False) -> dict:
    """Detect, align and write identity folders; returns the report's totals.

    Args:
        source, output: folders (``output`` may exist; identity folders are replaced).
        size: side of the aligned crops.
        min_face: smallest accepted FFHQ crop extent in source pixels.
        min_images: identities with fewer aligned faces are dropped.
        max_per_identity: keep at most this many photos per identity (first by name).
        detector: a :class:`~honestface.face.base.FaceDetector` returning 68 landmarks
            (default: dlib HOG).
        image_format: ``"png"`` (lossless, default) or ``"jpg"`` (quality 95).
        split: ``"none"`` or ``"celebref-hq"`` (first ``test_identities`` identities ->
            ``output/test``, the rest -> ``output/train``; see the module doc).
        aligned: the images are aligned faces already: resize them to ``size`` (bicubic,
            antialiased), no detection.
    """
    if image_format not in ("png", "jpg"):
        raise HonestFaceError(f"image format must be png or jpg, got '{image_format}'")
    if size < 16:
        raise HonestFaceError(f"size must be at least 16, got {size}")
    source, output = Path(source), Path(output)
    groups = identity_sources(source)
    source = dataset_root(source)
    splits = split_identities([identity for identity, _ in groups], split, test_identities)
    if detector is None and not aligned:
        from ..face import load_face_detector

        detector = load_face_detector("dlib")
    output.mkdir(parents=True, exist_ok=True)
    rows: list[PreparedFace] = []
    total = sum(len(files[:max_per_identity] if max_per_identity else files) for _, files in groups)
    done = 0
    for identity, files in groups:
        if max_per_identity:
            files = files[:max_per_identity]
        target = output / splits[identity] / identity
        if target.exists():
            shutil.rmtree(target)
        kept = []
        for path in files:
            row = PreparedFace(str(path.relative_to(source)), identity, "ok", 0.0, split=splits[identity])
            try:
                image = load_image(path)
            except ImageError:
                row.status = "unreadable"
            else:
                crop = _training_face(image, row, aligned, detector, size, min_face)
                if crop is not None:
                    written = target / f"{path.stem}.{image_format}"
                    _save(crop, written, image_format)
                    row.output = str(written.relative_to(output))
                    kept.append(row)
            rows.append(row)
            done += 1
            report(progress, done, total)
        if len(kept) < min_images:
            for row in kept:
                row.status = "few_images"
                row.output = ""
            if target.exists():
                shutil.rmtree(target)
    if split != "none":
        with open(output / "split.json", "w", encoding="utf-8") as handle:
            json.dump({"split": split, "test_identities": test_identities,
                       "test": [name for name, part in splits.items() if part == "test"],
                       "train": [name for name, part in splits.items() if part == "train"]}, handle, indent=1)
    return _write_report(output, rows, size, min_face, min_images)


def _training_face(image: torch.Tensor, row: PreparedFace, aligned: bool, detector, size: int,
                   min_face: float) -> torch.Tensor | None:
    """The (3, size, size) face of one photo, or None with ``row.status`` saying why not."""
    from ..face.align import align_face
    from ..image_io import resize_to

    if aligned:
        row.face_px = float(min(image.shape[-2:]))
        return resize_to(image[None], size)[0]
    faces = [f for f in detector.detect(image) if f.landmarks is not None]
    if not faces:
        row.status = "noface"
        return None
    largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    row.face_px = face_extent(largest.landmarks)
    if row.face_px < min_face:
        row.status = "small"
        return None
    return align_face(image, torch.as_tensor(largest.landmarks, dtype=torch.float32), size)[0]


def _save(crop: torch.Tensor, path: Path, image_format: str) -> None:
    if image_format == "png":
        save_image(crop, path)
        return
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (crop.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    Image.fromarray(array).save(path, quality=95)


def _write_report(output: Path, rows: Sequence[PreparedFace], size: int, min_face: float, min_images: int) -> dict:
    with open(output / "prepare_report.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "identity", "status", "face_px", "output", "split"])
        for row in rows:
            writer.writerow([row.source, row.identity, row.status, f"{row.face_px:.1f}", row.output, row.split])
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    identities = sorted({row.identity for row in rows if row.status == "ok"})
    totals = {"files": len(rows), "counts": counts, "identities": len(identities),
              "faces": counts.get("ok", 0), "size": size, "min_face": min_face, "min_images": min_images}
    if any(row.split for row in rows):
        totals["split"] = {part: {"identities": len({r.identity for r in rows if r.split == part and r.status == "ok"}),
                                  "faces": sum(1 for r in rows if r.split == part and r.status == "ok")}
                           for part in ("train", "test")}
    with open(output / "prepare_report.json", "w", encoding="utf-8") as handle:
        json.dump(totals, handle, indent=1)
    return totals


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-dataset", help="align faces of identity folders into a training set",
        description="\n\n".join(__doc__.split("\n\n")[:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder of identity folders (SRC/<identity>/*.jpg)")
    parser.add_argument("output", help="output folder (OUT/<identity>/*.png and the reports)")
    parser.add_argument("--size", type=int, default=512, help="aligned crop size (default 512)")
    parser.add_argument("--min-face", type=float, default=64.0,
                        help="skip faces whose crop spans fewer source pixels (default 64)")
    parser.add_argument("--min-images", type=int, default=1,
                        help="drop identities with fewer aligned faces (default 1; 2+ for references)")
    parser.add_argument("--max-per-identity", type=int, default=None, help="use at most this many photos each")
    parser.add_argument("--detector", default="hog", choices=("hog", "mmod"), help="dlib detector (default hog)")
    parser.add_argument("--format", dest="image_format", default="png", choices=("png", "jpg"))
    parser.add_argument("--split", default="none", choices=SPLITS,
                        help="celebref-hq: the paper's split, the first --test-identities identities (natural "
                             "order of the folder names) to OUT/test, the rest to OUT/train (default none)")
    parser.add_argument("--test-identities", type=int, default=CELEBREF_TEST_IDENTITIES,
                        help=f"identities in the test part of the split (default {CELEBREF_TEST_IDENTITIES})")
    parser.add_argument("--aligned", action="store_true",
                        help="the photos are aligned faces already (CelebRef-HQ): only resize them to --size")
    parser.add_argument("--models-dir", default=None, help="models folder (for the mmod detector file)")
    test = parser.add_argument_group("fixed test set (--make-test)")
    test.add_argument("--make-test", action="store_true",
                      help="write LQ, GT and references of a test set with a SHA-256 manifest (OUT must be empty)")
    test.add_argument("--test-set", default="celebref-hq", choices=("celebref-hq", "reface-test"),
                      help="celebref-hq: the first --test-identities identities of CelebRef-HQ; reface-test: every "
                           "identity of the Reface-Test folder (default celebref-hq)")
    test.add_argument("--seed", type=int, default=0, help="base of the per-image degradation seeds (default 0)")
    test.add_argument("--gt-per-identity", type=int, default=1,
                      help="photos per identity used as ground truth, first by name (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..face import load_face_detector
    from ..progress import tqdm_progress

    if getattr(args, "make_test", False):
        return run_make_test(args)
    detector = None if args.aligned else load_face_detector("dlib", models_dir=args.models_dir, model=args.detector)
    progress, close = tqdm_progress("prepare-dataset", total=0)
    try:
        totals = prepare_dataset(args.source, args.output, size=args.size, min_face=args.min_face,
                                 min_images=args.min_images, max_per_identity=args.max_per_identity,
                                 detector=detector, image_format=args.image_format, progress=progress,
                                 split=args.split, test_identities=args.test_identities, aligned=args.aligned)
    finally:
        close()
    print(json.dumps(totals))
    return 0 if totals["faces"] else 1


def run_make_test(args: argparse.Namespace) -> int:
    from ..evaluation.testset import make_test_set
    from ..progress import tqdm_progress

    progress, close = tqdm_progress("make-test", total=0)
    try:
        manifest = make_test_set(args.source, args.output, test_set=args.test_set, size=args.size, seed=args.seed,
                                 test_identities=args.test_identities, gt_per_identity=args.gt_per_identity,
                                 progress=progress)
    finally:
        close()
    print(json.dumps({"test_set": manifest["test_set"], "faces": len(manifest["faces"]),
                      "files": len(manifest["files"]), "skipped": len(manifest["skipped"]),
                      "manifest": str(Path(args.output) / "manifest.json")}))
    return 0


__all__: list[str] = [
    "CELEBREF_TEST_IDENTITIES",
    "SPLITS",
    "STATUSES",
    "PreparedFace",
    "add_parser",
    "dataset_root",
    "face_extent",
    "identity_sources",
    "natural_key",
    "prepare_dataset",
    "split_identities",
]
