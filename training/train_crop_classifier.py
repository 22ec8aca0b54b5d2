"""Train the aligned-crop classifier (:mod:`honestface.face.crop_classifier`).

    python training/train_crop_classifier.py --data ../shared/data --output runs/crop-classifier
    python benchmarks/measure_photo_thresholds.py crops --split select \
        --classifier runs/crop-classifier/aligned-crop-classifier.safetensors
    cp runs/crop-classifier/aligned-crop-classifier.safetensors honestface/weights/

The shipped weights were trained with ``--skip-people 80`` and the other defaults, before
the select split existed; the default now leaves out 120 people, so that a new classifier
can be chosen on the select split and then measured once on report.

The classifier is the last look of ``auto`` mode at a square image in which no face was
detected: is it an FFHQ-aligned face crop (too degraded for the detector) or anything else?

Data (people of no split of ``benchmarks/measure_photo_thresholds.py crops``, which uses
the first 120 CelebA identities and the first 120 LFW people in name order):

- aligned crops (label 1): every CelebA crop of the other identities, and the FFHQ crop
  the alignment cuts from the other LFW photos around their dlib face; each moved by a
  small jitter (scale within 6 %, shift within 3 % of the side, rotation within 4 degrees),
  as other aligners place faces;
- other squares (label 0): the same LFW faces framed otherwise (face 1.4 - 4 times
  smaller, 1.35 - 2.5 times larger, or shifted by 15 - 45 % of the side), CelebA crops
  zoomed in, the whole LFW photos, pieces of their background, and flat, gradient, noise
  and blob images. Framings between the two (scale 0.94 - 1.4 or shift 3 - 15 %) are in
  neither set: there the answer does not matter much.

Every image is kept at 128 px and, in each epoch, degraded afresh by the training
degradation (:mod:`honestface.degradation`: blur, 1 - 12x down-sampling by three
interpolations, noise, JPEG, some grey; a quarter left clean), flipped at random, and seen
as the classifier's 32 px grey thumbnail (``--input-size``, ``--channels``, ``--hidden``
and ``--color`` change the network; ``--augment`` adds a random exposure, gamma and a
covering band before the degradation, ``--invert`` shows 30 % of the images as negatives). A tenth of the people are kept apart; the file
records, at several thresholds, how many of their crops and other squares the classifier
takes for crops. The threshold in use (``CROP_PROBABILITY``) is chosen in
:mod:`honestface.face.input_kind`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from honestface.degradation import DegradationConfig, degrade
from honestface.face.crop_classifier import (
    CROP_CLASSIFIER_FILE,
    AlignedCropClassifier,
    AlignedCropClassifierConfig,
    save_crop_classifier,
)

#: Identities / people (in name order) the crop benchmark uses (its tune, report and select
#: splits); never trained on.
BENCHMARK_PEOPLE = 120
#: Side (px) at which every training image is stored and degraded.
BANK_SIDE = 128

#: Thresholds at which the kept-apart people's results are recorded in the file.
KEPT_APART_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)

#: The training degradation, from clean to heavier than the benchmark's heavy level.
DEGRADATION = DegradationConfig(kernel_size=21, blur_sigma=(0.3, 5.0), downsample_scale=(1.0, 12.0),
                                noise_sigma=(0.0, 15.0), jpeg_quality=(25.0, 95.0), gray_probability=0.1,
                                gray_ground_truth=False, severity_spread=0.3, clean_probability=0.25,
                                downsample_modes=("bilinear", "bicubic", "area"))


def framed(image: np.ndarray, to_crop: np.ndarray, scale: float, dx: float, dy: float, angle: float) -> np.ndarray:
    """The BANK_SIDE square an aligned crop would be, zoomed out ``scale`` times (the face
    fills 1 / scale of its aligned size), shifted by (dx, dy) of the side and turned by
    ``angle`` degrees; ``to_crop``: the (2, 3) map from ``image`` to its aligned crop at
    BANK_SIDE px (reflected beyond the border)."""
    import cv2

    centre = (BANK_SIDE - 1) / 2
    turn = cv2.getRotationMatrix2D((centre, centre), angle, 1.0 / scale)
    turn[:, 2] -= np.array([dx, dy]) * BANK_SIDE
    matrix = np.vstack([turn, [0, 0, 1]]) @ np.vstack([to_crop, [0, 0, 1]])
    return cv2.warpAffine(image, matrix[:2], (BANK_SIDE, BANK_SIDE), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT)


def aligned_jitter(rng) -> tuple[float, float, float, float]:
    return (float(np.exp(rng.uniform(-0.06, 0.06))), *rng.uniform(-0.03, 0.03, 2).tolist(), float(rng.uniform(-4, 4)))


def other_framing(rng) -> tuple[float, float, float, float]:
    """A framing clearly not the aligned one (see the module doc)."""
    kind = rng.integers(3)
    if kind == 0:
        scale = float(np.exp(rng.uniform(math.log(1.4), math.log(4.0))))
        return scale, *rng.uniform(-0.1, 0.1, 2).tolist(), float(rng.uniform(-10, 10))
    if kind == 1:
        scale = float(np.exp(rng.uniform(math.log(1 / 2.5), math.log(1 / 1.35))))
        return scale, *rng.uniform(-0.1, 0.1, 2).tolist(), float(rng.uniform(-10, 10))
    direction = rng.uniform(0, 2 * math.pi)
    shift = rng.uniform(0.15, 0.45)
    return (float(np.exp(rng.uniform(-0.2, 0.2))), shift * math.cos(direction), shift * math.sin(direction),
            float(rng.uniform(-10, 10)))


def synthetic_squares(count: int, rng) -> list[np.ndarray]:
    """Flat, gradient, noise and smooth-blob squares (grey or coloured)."""
    import cv2

    y, x = np.mgrid[0:BANK_SIDE, 0:BANK_SIDE] / BANK_SIDE
    out = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            plane = np.full((BANK_SIDE, BANK_SIDE), rng.uniform(0, 255))
        elif kind == 1:
            angle = rng.uniform(0, 2 * math.pi)
            plane = 255 * (np.cos(angle) * x + np.sin(angle) * y + 1) / 2
        elif kind == 2:
            plane = 255 * np.hypot(x - rng.uniform(0, 1), y - rng.uniform(0, 1)) / 1.2
        elif kind == 3:
            plane = rng.uniform(0, 255, (BANK_SIDE, BANK_SIDE))
        else:
            plane = cv2.GaussianBlur(rng.uniform(0, 255, (BANK_SIDE, BANK_SIDE)), (0, 0), rng.uniform(3, 16)) * 4 - 382
        rgb = np.clip(plane, 0, 255)[..., None] * rng.uniform(0.6, 1.0, 3)
        out.append(rgb.astype(np.uint8))
    return out


def build_bank(data: Path, photos_per_person: int, seed: int, log,
               skip_people: int = BENCHMARK_PEOPLE) -> dict[str, torch.Tensor]:
    """(N, 3, BANK_SIDE, BANK_SIDE) uint8 images, (N,) labels and (N,) person groups."""
    import cv2
    from PIL import Image

    from honestface.face import load_face_detector
    from honestface.face.align import alignment_affine
    from honestface.face.photo import detect_photo_faces

    rng = np.random.default_rng(seed)
    detector = load_face_detector("dlib")
    images, labels, groups = [], [], []

    def add(array, label, group):
        images.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))
        labels.append(label)
        groups.append(group)

    identities = sorted(p for p in (data / "celeba").iterdir() if p.is_dir())[skip_people:]
    people = sorted(p for p in (data / "lfw").iterdir() if p.is_dir())[skip_people:]
    if not identities or not people:
        raise SystemExit(f"train_crop_classifier: no CelebA identities / LFW people beyond the first "
                         f"{skip_people} under {data} (celeba/<identity>/*.jpg, lfw/<person>/*.jpg)")
    identity_crop = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    for group, folder in enumerate(identities):
        for path in sorted(folder.glob("*.jpg")):
            crop = np.asarray(Image.open(path).convert("RGB"))
            to_crop = identity_crop * (BANK_SIDE / crop.shape[0])
            add(framed(crop, to_crop, *aligned_jitter(rng)), 1, group)
            scale = float(np.exp(rng.uniform(math.log(1 / 2.5), math.log(1 / 1.35))))
            add(framed(crop, to_crop, scale, *rng.uniform(-0.1, 0.1, 2).tolist(), 0.0), 0, group)
    log(f"CelebA: {len(identities)} identities, {sum(labels)} aligned crops")
    started = time.perf_counter()
    for index, folder in enumerate(people):
        group = len(identities) + index
        for path in sorted(folder.glob("*.jpg"))[:photos_per_person]:
            photo = np.asarray(Image.open(path).convert("RGB"))
            add(cv2.resize(photo, (BANK_SIDE, BANK_SIDE), interpolation=cv2.INTER_AREA), 0, group)
            for _ in range(2):  # pieces of the photo, mostly background
                side = int(rng.integers(40, 130))
                top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
                add(cv2.resize(photo[top:top + side, left:left + side], (BANK_SIDE, BANK_SIDE),
                               interpolation=cv2.INTER_AREA if side > BANK_SIDE else cv2.INTER_CUBIC), 0, group)
            faces = [f for f in detect_photo_faces(torch.from_numpy(photo).permute(2, 0, 1), detector)
                     if f.landmarks is not None]
            if not faces:
                continue
            to_crop = alignment_affine(torch.as_tensor(np.asarray(faces[0].landmarks, np.float32)),
                                       BANK_SIDE).numpy().astype(np.float64)
            add(framed(photo, to_crop, *aligned_jitter(rng)), 1, group)
            for _ in range(4):
                add(framed(photo, to_crop, *other_framing(rng)), 0, group)
        if (index + 1) % 50 == 0:
            log(f"LFW: {index + 1}/{len(people)} people ({time.perf_counter() - started:.0f} s)")
    synthetic = synthetic_squares(400, rng)
    for index, square in enumerate(synthetic):
        add(square, 0, len(identities) + len(people) + index % 40)  # 40 groups, split like people
    return {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.float32),
            "groups": torch.tensor(groups)}


def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> the same under a random exposure and gamma (half of them),
    and with one random band covering part of it (a third: sunglasses, a hand, a caption),
    so that dark faces on dark ground and covered eyes are seen in training."""
    count, side = images.shape[0], images.shape[-1]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, *shape, generator=generator)

    changed = (torch.rand(count, generator=generator) < 0.5).view(-1, 1, 1, 1)
    gamma, exposure = uniform(-0.6, 0.6).exp().view(-1, 1, 1, 1), uniform(0.35, 1.0).view(-1, 1, 1, 1)
    work = torch.where(changed, images.clamp_min(0).pow(gamma) * exposure, images)
    width, height = uniform(0.15, 0.6) * side, uniform(0.06, 0.25) * side
    left, top = uniform(0, 1) * (side - width), uniform(0, 1) * (side - height)
    grid = torch.arange(side, dtype=torch.float32)
    inside_x = (grid >= left[:, None]) & (grid < (left + width)[:, None])
    inside_y = (grid >= top[:, None]) & (grid < (top + height)[:, None])
    covered = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    covered &= (torch.rand(count, generator=generator) < 1 / 3).view(-1, 1, 1, 1)
    fill = uniform(0, 1, 3).pow(2).view(-1, 3, 1, 1)  # mostly dark
    return torch.where(covered, fill, work)


def inverted(images: torch.Tensor, generator: torch.Generator, share: float = 0.3) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> ``share`` of them as negatives (1 - x): where eyes and brows
    are darker than the skin in most training faces, they are lighter in many others; the
    framing is the same either way."""
    flip = (torch.rand(images.shape[0], generator=generator) < share).view(-1, 1, 1, 1)
    return torch.where(flip, 1.0 - images, images)


def degraded(images: torch.Tensor, generator: torch.Generator, augment: bool = False,
             invert: bool = False) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> the same (under :func:`photometric` changes with ``augment``,
    some :func:`inverted` with ``invert``) degraded afresh and flipped at random, float in
    [0, 1]."""
    work = images.float() / 255.0
    if augment:
        work = photometric(work, generator)
    if invert:
        work = inverted(work, generator)
    work = degrade(work, DEGRADATION, generator)
    flip = torch.rand(work.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), work.flip(-1), work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="folder holding celeba/ and lfw/")
    parser.add_argument("--output", default="runs/crop-classifier")
    parser.add_argument("--photos-per-person", type=int, default=12, help="LFW photos per person (at most)")
    parser.add_argument("--skip-people", type=int, default=BENCHMARK_PEOPLE,
                        help="leave out the first N CelebA identities and LFW people (the crop benchmark's)")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of people kept apart (recorded in the file)")
    parser.add_argument("--seed", type=int, default=7)
    defaults = AlignedCropClassifierConfig()
    parser.add_argument("--input-size", type=int, default=defaults.input_size, help="side of the grey thumbnail")
    parser.add_argument("--channels", type=int, nargs="+", default=list(defaults.channels),
                        help="conv channels per stage")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="width of the last hidden layer")
    parser.add_argument("--color", action="store_true", help="a colour thumbnail instead of a grey one")
    parser.add_argument("--augment", action="store_true",
                        help="random exposure, gamma and a covering band before the degradation")
    parser.add_argument("--invert", action="store_true", help="show 30 %% of the training images as negatives")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)
        with open(output / "train.log", "a") as handle:
            handle.write(message + "\n")

    cache = output / "bank.pt"
    settings = {"data": str(Path(args.data).resolve()), "photos_per_person": args.photos_per_person,
                "seed": args.seed, "skip_people": args.skip_people}
    bank = torch.load(cache, weights_only=True) if cache.is_file() else None
    if bank is None or bank.get("settings") != json.dumps(settings):
        bank = build_bank(Path(args.data), args.photos_per_person, args.seed, log, args.skip_people)
        bank["settings"] = json.dumps(settings)
        torch.save(bank, cache)
    images, labels, groups = bank["images"], bank["labels"], bank["groups"]
    rng = np.random.default_rng(args.seed)
    unique = np.unique(groups.numpy())
    held = set(rng.choice(unique, size=max(1, int(len(unique) * args.val_fraction)), replace=False).tolist())
    is_val = torch.tensor([int(g) in held for g in groups.tolist()])
    train_index, val_index = (~is_val).nonzero()[:, 0], is_val.nonzero()[:, 0]
    log(f"bank: {len(labels)} images ({int(labels.sum())} aligned crops); training {len(train_index)}, "
        f"kept apart {len(val_index)} ({len(held)} people / groups)")

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = AlignedCropClassifier(AlignedCropClassifierConfig(args.input_size, tuple(args.channels), args.hidden,
                                                                args.color))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_index) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch)
    positive = labels[train_index].mean()
    weight = {1: 0.5 / positive, 0: 0.5 / (1 - positive)}  # both classes count alike
    # the kept-apart set is degraded once, the same way every epoch
    val_images = torch.cat([degraded(images[val_index[i:i + 256]], torch.Generator().manual_seed(i), args.augment,
                                     args.invert)
                            for i in range(0, len(val_index), 256)])
    val_labels = labels[val_index]
    for epoch in range(args.epochs):
        started, total = time.perf_counter(), 0.0
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator)]
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            target = labels[batch]
            logits = model(degraded(images[batch], generator, args.augment, args.invert))
            loss = (F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                    * torch.where(target > 0, weight[1], weight[0])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(model(val_images[i:i + 512])) for i in range(0, len(val_images), 512)])
        accuracy = float(((scores >= 0.5).float() == val_labels).float().mean())
        log(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(order):.4f}, kept-apart accuracy {accuracy:.3f} "
            f"({time.perf_counter() - started:.0f} s)")

    negatives, positives = scores[val_labels == 0], scores[val_labels == 1]
    sweep = {f"{t:g}": {"crops_taken": int((positives >= t).sum()), "others_taken": int((negatives >= t).sum())}
             for t in KEPT_APART_THRESHOLDS}
    record = {"kept_apart": {"crops": len(positives), "others": len(negatives), "by_threshold": sweep},
              "bank": {"images": len(labels), "aligned_crops": int(labels.sum()),
                       "celeba_identities_skipped": args.skip_people, "lfw_people_skipped": args.skip_people},
              "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                           "photos_per_person": args.photos_per_person, "augment": args.augment,
                           "invert": args.invert}}
    path = save_crop_classifier(output / CROP_CLASSIFIER_FILE, model, record)
    log(f"kept apart ({len(positives)} crops / {len(negatives)} other squares), taken at each threshold: "
        + "; ".join(f"{t}: {v['crops_taken']} / {v['others_taken']}" for t, v in sweep.items()))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
