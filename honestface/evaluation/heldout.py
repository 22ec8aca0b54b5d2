"""Restoration quality on held-out people at a fixed degradation.

The numbers behind ``benchmarks/bench_nano.py``, the regression test of the shipped
``honestface-nano`` weights and the model card: for faces of identities the model never
saw in training, the ground truth is degraded at a fixed level
(:meth:`~honestface.degradation.DegradationConfig.moderate` by default), restored without
and with references of the same person, and compared with the ground truth:

- PSNR / SSIM, also for the bicubic-upscaled LQ (the usual baseline) and the model input;
- identity distance: Euclidean distance of dlib's 128-d face descriptors (``ID dist``);
- ALD-e / ALD-m: affine landmark distance (eyes / mouth) of dlib's 68 landmarks.

dlib's models expect faces larger than the small model's 128 px, so every image is
brought to ``analysis_size`` (bicubic) before landmarks and descriptors are computed;
faces are aligned, so the backends fall back to the aligned-face box when the detector
finds nothing (blurry inputs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..degradation import DegradationConfig, apply_degradation, bicubic_baseline, sample_degradation_params
from ..errors import ConfigError, HonestFaceError
from ..image_io import list_images, load_image, resize_to
from ..metrics.landmark import ald_eyes, ald_mouth
from ..metrics.pixel import psnr, ssim
from ..progress import ProgressCallback, report

#: Rows of the result, in table order.
CONDITIONS = ("LQ, bicubic", "LQ, model input", "restored, no refs", "restored, refs")
COLUMNS = ("PSNR", "SSIM", "ID dist", "ALD-e", "ALD-m")


@dataclass
class HeldoutFace:
    """One evaluation case: a ground-truth face and other photos of the same person."""

    name: str  # "<root>/<identity>/<file>"
    gt: torch.Tensor  # (3, S, S) in [0, 1]
    references: torch.Tensor  # (N, 3, S, S) in [0, 1]


@dataclass
class HeldoutResult:
    """Per-face values and means for every condition of :data:`CONDITIONS`."""

    per_face: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    faces: list[str] = field(default_factory=list)
    degradation: dict = field(default_factory=dict)
    #: faces restored with references whose LQ landmarks were not found (their reference
    #: was chosen with the aligned-box landmarks; :class:`~honestface.pipeline.RestoreInfo`)
    landmark_misses: list[str] = field(default_factory=list)

    def mean(self, condition: str, column: str) -> float:
        values = [v for v in self.per_face[condition][column] if math.isfinite(v)]
        return sum(values) / len(values) if values else float("nan")

    def paired_difference(self, condition_a: str, condition_b: str, column: str) -> tuple[float, float, int]:
        """Mean of the per-face differences ``a - b`` of ``column``, its standard error and
        the number of faces with both values (how far a difference is from noise)."""
        pairs = [(a, b) for a, b in zip(self.per_face[condition_a][column], self.per_face[condition_b][column])
                 if math.isfinite(a) and math.isfinite(b)]
        if not pairs:
            return float("nan"), float("nan"), 0
        diffs = [a - b for a, b in pairs]
        mean = sum(diffs) / len(diffs)
        if len(diffs) < 2:
            return mean, float("nan"), len(diffs)
        variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
        return mean, math.sqrt(variance / len(diffs)), len(diffs)

    def table(self) -> dict[str, dict[str, float]]:
        return {c: {k: self.mean(c, k) for k in COLUMNS} for c in self.per_face}

    def format_table(self) -> str:
        lines = [f"{'condition':<20}" + "".join(f"{c:>10}" for c in COLUMNS)]
        for condition, row in self.table().items():
            lines.append(f"{condition:<20}" + "".join(f"{row[c]:>10.4f}" for c in COLUMNS))
        lines.append(f"LQ landmarks not found (reference chosen with the aligned-box landmarks): "
                     f"{len(self.landmark_misses)} of {len(self.faces)} faces"
                     + (f": {', '.join(self.landmark_misses)}" if self.landmark_misses else ""))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"faces": self.faces, "degradation": self.degradation, "means": self.table(),
                           "landmark_misses": self.landmark_misses, "per_face": self.per_face}, indent=1)


def quality_targets(table: dict[str, dict[str, float]], psnr_gain: float = 1.5) -> list[tuple[str, bool, str]]:
    """The small model's quality targets on a :meth:`HeldoutResult.table`:
    (name, met, the numbers behind it).

    - PSNR at least ``psnr_gain`` dB above the bicubic LQ, and SSIM above it;
    - identity: the restored face (with references) is closer to the ground truth than
      the LQ is (bicubic and model input), and references help (closer than without).
    """
    bicubic, lq = table["LQ, bicubic"], table["LQ, model input"]
    plain, refs = table["restored, no refs"], table["restored, refs"]
    gain = refs["PSNR"] - bicubic["PSNR"]
    return [
        (f"PSNR >= bicubic + {psnr_gain} dB", gain >= psnr_gain,
         f"{refs['PSNR']:.2f} vs {bicubic['PSNR']:.2f} ({gain:+.2f} dB)"),
        ("SSIM above bicubic", refs["SSIM"] > bicubic["SSIM"], f"{refs['SSIM']:.4f} vs {bicubic['SSIM']:.4f}"),
        ("ID dist: restored < LQ", refs["ID dist"] < min(bicubic["ID dist"], lq["ID dist"]),
         f"{refs['ID dist']:.4f} vs {bicubic['ID dist']:.4f} (bicubic) / {lq['ID dist']:.4f} (input)"),
        ("ID dist: refs < no refs", refs["ID dist"] < plain["ID dist"],
         f"{refs['ID dist']:.4f} vs {plain['ID dist']:.4f}"),
    ]


def heldout_identities(checkpoint: str | Path) -> list[str]:
    """``<root>/<identity>`` names a checkpoint's training run held out (its metadata)."""
    from ..loaders.checkpoint import read_checkpoint_metadata

    text = read_checkpoint_metadata(checkpoint).get("heldout_identities")
    if not text:
        raise ConfigError(f"{Path(checkpoint).name} does not record its held-out identities "
                          "(exported by an older training program?)")
    return list(json.loads(text))


def load_heldout_faces(data_dir: str | Path, identities: Sequence[str], size: int, max_faces: int | None = None,
                       references: int = 3) -> list[HeldoutFace]:
    """Faces of ``identities`` (``<root>/<identity>`` under ``data_dir``), each with the
    next ``references`` photos of the person (cyclic in file order, never the face itself).

    Identities are visited in turn (one face of each, then the next face of each, ...) so a
    small ``max_faces`` still covers every person.
    """
    data_dir = Path(data_dir)
    people = []
    for name in identities:
        folder = data_dir / name
        if not folder.is_dir():
            raise ConfigError(f"held-out identity folder not found: {folder}")
        files = list_images(folder)
        if len(files) > references:
            people.append((name, files))
    if not people:
        raise ConfigError(f"no held-out identity in {data_dir} has more than {references} photos")
    cache: dict[Path, torch.Tensor] = {}

    def read(path: Path) -> torch.Tensor:
        if path not in cache:
            cache[path] = resize_to(load_image(path).unsqueeze(0), size)[0]
        return cache[path]

    faces: list[HeldoutFace] = []
    rounds = max(len(files) for _, files in people)
    for index in range(rounds):
        for name, files in people:
            if index >= len(files):
                continue
            others = [files[(index + k) % len(files)] for k in range(1, references + 1)]
            faces.append(HeldoutFace(f"{name}/{files[index].name}", read(files[index]),
                                     torch.stack([read(p) for p in others])))
            if max_faces is not None and len(faces) >= max_faces:
                return faces
    return faces


def heldout_pipeline(checkpoint: str | Path, batch_size: int = 8):
    """-> (pipeline, landmark backend, identity backend) for :func:`evaluate_heldout`.

    The pipeline runs the checkpoint's model with dlib landmarks and the identity backend
    its IDE was trained with (``config.identity_backend``); the returned dlib backends score
    the results (dlib's own detection, alignment and descriptor).
    """
    from ..face import load_identity_backend, load_landmark_backend
    from ..loaders.model_files import load_model
    from ..pipeline import HonestFacePipeline

    model = load_model(checkpoint=checkpoint)
    landmarks = load_landmark_backend("dlib", aligned_fallback=True)
    model_identity = load_identity_backend(model.config.identity_backend)
    # the pipeline's own backend finds no face where there is none: the pipeline then fits
    # the points in the aligned box itself (the same points) and counts the miss
    pipeline = HonestFacePipeline(model, load_landmark_backend("dlib"), model_identity, batch_size=batch_size)
    return pipeline, landmarks, load_identity_backend("dlib", aligned_fallback=True)


def evaluate_heldout(pipeline, faces: Sequence[HeldoutFace], landmark_backend, identity_backend,
                     degradation: DegradationConfig | None = None, seed: int = 1234,
                     analysis_size: int = 256, progress: ProgressCallback | None = None) -> HeldoutResult:
    """Degrade, restore (no references / all references of each face) and score.

    Args:
        pipeline: a :class:`~honestface.pipeline.HonestFacePipeline` (with its backends).
        faces: from :func:`load_heldout_faces`, at the pipeline's image size.
        landmark_backend / identity_backend: dlib backends for the metrics.
        degradation: one fixed level (default: ``DegradationConfig.moderate()``).
        seed: the degradation's seed (noise, JPEG order).
    """
    from ..pipeline import RestoreInfo

    if not faces:
        raise ConfigError("no faces to evaluate")
    degradation = degradation or DegradationConfig.moderate()
    gt = torch.stack([face.gt for face in faces])
    if gt.shape[-1] != pipeline.image_size:
        raise ConfigError(f"faces are {gt.shape[-1]} px but the model restores {pipeline.image_size} px")
    params = sample_degradation_params(gt.shape[0], degradation, seed)
    images = {"LQ, bicubic": bicubic_baseline(gt, params, degradation),
              "LQ, model input": apply_degradation(gt, params, degradation)}
    lq = images["LQ, model input"]
    steps = 2 * len(faces)
    report(progress, 0, steps)
    restored_plain, restored_refs, missed = [], [], []
    batch = pipeline.batch_size
    for start in range(0, len(faces), batch):
        chunk = lq[start:start + batch]
        restored_plain.append(pipeline.restore(chunk))
        info = RestoreInfo()
        restored_refs.append(pipeline.restore(chunk, [f.references for f in faces[start:start + batch]], info=info))
        missed += [face.name for face, miss in zip(faces[start:start + batch], info.landmarks_missed) if miss]
        report(progress, min(2 * (start + batch), steps), steps)
    images["restored, no refs"] = torch.cat(restored_plain)
    images["restored, refs"] = torch.cat(restored_refs)

    def analyse(batch_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        big = resize_to(batch_images, analysis_size)
        return landmark_backend.landmarks(big).double(), identity_backend.embed(big).double()

    gt_points, gt_identity = analyse(gt)
    result = HeldoutResult(faces=[f.name for f in faces], degradation=degradation.to_dict(), landmark_misses=missed)
    for condition in CONDITIONS:
        out = images[condition].clamp(0, 1)
        points, identity = analyse(out)
        rows = {"PSNR": psnr(out, gt).tolist(), "SSIM": ssim(out, gt).tolist(),
                "ID dist": (identity - gt_identity).norm(dim=-1).tolist(), "ALD-e": [], "ALD-m": []}
        for a, b in zip(points, gt_points):
            for column, metric in (("ALD-e", ald_eyes), ("ALD-m", ald_mouth)):
                try:
                    rows[column].append(float(metric(a, b)))
                except HonestFaceError:  # degenerate landmarks of a failed fit
                    rows[column].append(float("nan"))
        result.per_face[condition] = rows
    return result
