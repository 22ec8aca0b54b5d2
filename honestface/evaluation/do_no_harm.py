"""Do no harm: what a restorer does to faces from clean to heavily degraded.

A restorer must never make a face worse. This evaluation degrades faces of people the model
never saw at four levels, restores them without and with references of the person, and
measures, per level, the change a restoration brings against its own input:

- ``PSNR change``: PSNR(output, ground truth) - PSNR(input, ground truth), in dB;
- ``ID change``: identity distance (dlib's 128-d descriptors, Euclidean; the same person is
  below ~0.6) of the output to the ground truth minus that of the input;
- ``worse``: faces clearly made worse (PSNR change below -0.5 dB or ID change above +0.03);
- at the clean level also ``PSNR to input``: how closely a face that needs nothing is left.

The degradation here is written apart from the training one
(:mod:`honestface.degradation`: FFT blur, bilinear, torch noise) on purpose, with Pillow's
Gaussian blur and bicubic resampling and NumPy's noise, so that a model is not judged on the
exact process it was trained on. Levels at 128 px (sigmas scale with the face size):

========  =======================================================
clean     JPEG 95
mild      blur sigma 1, 2x down-sampling, noise 2, JPEG 85
moderate  blur sigma 2.5, 4x, noise 5, JPEG 60
heavy     blur sigma 4, 8x, noise 10, JPEG 40
========  =======================================================
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..image_io import resize_to
from ..metrics.pixel import psnr
from ..progress import ProgressCallback, report


@dataclass(frozen=True)
class QualityLevel:
    """One degradation level, defined at 128 px."""

    name: str
    blur_sigma: float  # 0: no blur
    downsample: float  # 1: none
    noise_sigma: float  # in 0..255 units
    jpeg_quality: int


LEVELS: tuple[QualityLevel, ...] = (
    QualityLevel("clean", 0.0, 1.0, 0.0, 95),
    QualityLevel("mild", 1.0, 2.0, 2.0, 85),
    QualityLevel("moderate", 2.5, 4.0, 5.0, 60),
    QualityLevel("heavy", 4.0, 8.0, 10.0, 40),
)

#: A face is "clearly worse" when its PSNR drops by more than this (dB) ...
WORSE_PSNR_DB = -0.5
#: ... or its identity distance to the ground truth grows by more than this.
WORSE_IDENTITY = 0.03


def degrade_level(image: np.ndarray, level: QualityLevel, seed: int) -> np.ndarray:
    """Degrade one (H, W, 3) uint8 face at ``level`` (sigmas given at 128 px are scaled to
    the face's size); returns (H, W, 3) uint8 of the same size."""
    from PIL import Image, ImageFilter

    height, width = image.shape[:2]
    factor = width / 128.0
    picture = Image.fromarray(image)
    if level.blur_sigma > 0:
        picture = picture.filter(ImageFilter.GaussianBlur(radius=level.blur_sigma * factor))
    if level.downsample > 1:
        small = (max(1, round(width / level.downsample)), max(1, round(height / level.downsample)))
        picture = picture.resize(small, Image.Resampling.BICUBIC)
    array = np.asarray(picture).astype(np.float64)
    if level.noise_sigma > 0:
        array = array + np.random.default_rng(seed).normal(0.0, level.noise_sigma, array.shape)
    picture = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=level.jpeg_quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        picture = decoded.convert("RGB")
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(picture).copy()


def degrade_faces(faces: torch.Tensor, level: QualityLevel, seed: int) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> the same faces at ``level`` (face ``i`` seeded ``seed + i``)."""
    arrays = (faces.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [torch.from_numpy(degrade_level(a, level, seed + i)) for i, a in enumerate(arrays)]
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255.0


@dataclass
class DoNoHarmResult:
    """Per level and condition (``"no refs"``, ``"refs"``) the per-face values."""

    faces: list[str] = field(default_factory=list)
    #: level -> condition -> column -> per-face values
    values: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    COLUMNS = ("PSNR change", "ID change", "PSNR to input")

    def mean(self, level: str, condition: str, column: str) -> float:
        data = [v for v in self.values[level][condition][column] if math.isfinite(v)]
        return sum(data) / len(data) if data else float("nan")

    def worse(self, level: str, condition: str) -> int:
        rows = self.values[level][condition]
        return sum(1 for p, i in zip(rows["PSNR change"], rows["ID change"])
                   if p < WORSE_PSNR_DB or i > WORSE_IDENTITY)

    def paired_difference(self, level: str, column: str) -> tuple[float, float, int]:
        """refs minus no refs of ``column`` at ``level``: mean, standard error, faces."""
        a, b = self.values[level]["refs"][column], self.values[level]["no refs"][column]
        diffs = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        if len(diffs) < 2:
            return (diffs[0] if diffs else float("nan")), float("nan"), len(diffs)
        mean = sum(diffs) / len(diffs)
        return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)), len(diffs)

    def table(self) -> dict[str, dict[str, dict[str, float]]]:
        return {level: {condition: {**{c: self.mean(level, condition, c) for c in self.COLUMNS},
                                    "worse": self.worse(level, condition)}
                        for condition in conditions}
                for level, conditions in self.values.items()}

    def format_table(self) -> str:
        lines = [f"{'level':<10}{'references':<12}{'PSNR change':>13}{'ID change':>11}{'to input':>10}"
                 f"{'clearly worse':>15}"]
        for level, conditions in self.table().items():
            for condition, row in conditions.items():
                lines.append(f"{level:<10}{condition:<12}{row['PSNR change']:>+12.2f} {row['ID change']:>+10.3f} "
                             f"{row['PSNR to input']:>9.1f} {row['worse']:>7d}/{len(self.faces)}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"faces": self.faces, "table": self.table(), "values": self.values}, indent=1)


def _identity(identity_backend, images: torch.Tensor, analysis_size: int) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, D) float64 descriptors, at ``analysis_size`` px."""
    return identity_backend.embed(resize_to(images.clamp(0, 1), analysis_size)).double()


def evaluate_do_no_harm(restore: Callable[[torch.Tensor, Sequence[torch.Tensor] | None], torch.Tensor],
                        gt: torch.Tensor, references: Sequence[torch.Tensor], identity_backend,
                        names: Sequence[str] | None = None, levels: Sequence[QualityLevel] = LEVELS,
                        seed: int = 2024, analysis_size: int = 256,
                        progress: ProgressCallback | None = None) -> DoNoHarmResult:
    """Degrade ``gt`` at every level, restore without and with ``references``, and measure.

    Args:
        restore: ``(lq (B, 3, S, S), references or None) -> (B, 3, S, S)`` in [0, 1]
            (e.g. :meth:`honestface.pipeline.HonestFacePipeline.restore`).
        gt: (B, 3, S, S) ground-truth faces in [0, 1] at the model's size.
        references: per face, (N, 3, S, S) other photos of the person.
        identity_backend: dlib's descriptor backend (``embed``) for the identity distance.
    """
    if gt.dim() != 4 or gt.shape[0] != len(references):
        raise ConfigError(f"need one reference set per face, got {gt.shape[0]} faces and {len(references)} sets")

    def embed(images: torch.Tensor) -> torch.Tensor:
        return _identity(identity_backend, images, analysis_size)

    gt_identity = embed(gt)
    result = DoNoHarmResult(faces=list(names or [str(i) for i in range(gt.shape[0])]))
    steps = len(levels) * 2
    report(progress, 0, steps)
    for index, level in enumerate(levels):
        lq = degrade_faces(gt, level, seed)
        lq_psnr = psnr(lq, gt).double()
        lq_identity = (embed(lq) - gt_identity).norm(dim=-1)
        result.values[level.name] = {}
        for offset, (condition, refs) in enumerate((("no refs", None), ("refs", list(references)))):
            out = restore(lq, refs).clamp(0, 1)
            rows = {"PSNR change": (psnr(out, gt).double() - lq_psnr).tolist(),
                    "ID change": ((embed(out) - gt_identity).norm(dim=-1) - lq_identity).tolist(),
                    "PSNR to input": psnr(out, lq).double().clamp_max(99.0).tolist()}
            result.values[level.name][condition] = rows
            report(progress, 2 * index + offset + 1, steps)
    return result


def identity_noise_floor(gt: torch.Tensor, identity_backend, levels: Sequence[QualityLevel] = LEVELS,
                         seed: int = 2024, other_seed: int = 1, analysis_size: int = 256) -> dict[str, int]:
    """How many faces a second draw of the same degradation makes "clearly worse" by identity.

    No restorer: each level's LQ of ``gt`` (B, 3, S, S) is drawn again with ``other_seed``
    (same blur and scale, other noise), and a face counts when the second draw is more than
    :data:`WORSE_IDENTITY` further from the clean face's identity than the first. That is
    what the identity criterion gives a change that did nothing to the face: the floor under
    the "clearly worse" column. Returns level -> faces counted.
    """
    gt_identity = _identity(identity_backend, gt, analysis_size)

    def distance(images: torch.Tensor) -> torch.Tensor:
        return (_identity(identity_backend, images, analysis_size) - gt_identity).norm(dim=-1)

    return {level.name: int((distance(degrade_faces(gt, level, other_seed))
                             - distance(degrade_faces(gt, level, seed)) > WORSE_IDENTITY).sum())
            for level in levels}


def do_no_harm_targets(result: DoNoHarmResult) -> list[tuple[str, bool, str]]:
    """The do-no-harm targets: (name, met, numbers)."""
    table = result.table()
    faces = len(result.faces)
    out = []
    for condition in ("no refs", "refs"):
        clean, mild = table["clean"][condition], table["mild"][condition]
        moderate, heavy = table["moderate"][condition], table["heavy"][condition]
        out += [
            (f"clean, {condition}: PSNR to input >= 32 dB, ID change <= +0.02",
             clean["PSNR to input"] >= 32 and clean["ID change"] <= 0.02,
             f"{clean['PSNR to input']:.1f} dB, {clean['ID change']:+.3f}"),
            (f"mild, {condition}: PSNR change >= 0, ID change <= 0",
             mild["PSNR change"] >= 0 and mild["ID change"] <= 0,
             f"{mild['PSNR change']:+.2f} dB, {mild['ID change']:+.3f}"),
            (f"moderate, {condition}: PSNR change >= +2.0 dB", moderate["PSNR change"] >= 2.0,
             f"{moderate['PSNR change']:+.2f} dB"),
            (f"heavy, {condition}: PSNR change >= +0.8 dB, ID change < 0",
             heavy["PSNR change"] >= 0.8 and heavy["ID change"] < 0,
             f"{heavy['PSNR change']:+.2f} dB, {heavy['ID change']:+.3f}"),
        ]
        worst = max(table[level][condition]["worse"] for level in table)
        out.append((f"{condition}: at most 1 face in 12 clearly worse at any level", worst * 12 <= faces,
                    f"worst level {worst}/{faces}"))
    mean, stderr, _ = result.paired_difference("moderate", "ID change")
    out.append(("references lower the identity distance by >= 2 SE at moderate",
                math.isfinite(stderr) and mean <= -2 * stderr, f"{mean:+.4f} +- {stderr:.4f}"))
    return out


def plot_do_no_harm(result: DoNoHarmResult, width: int = 900, height: int = 360) -> torch.Tensor:
    """Two panels, PSNR change and identity change against the degradation level, for the
    restoration without and with references; (3, height, width) in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    table = result.table()
    levels = list(table)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    colors = {"no refs": (40, 90, 200), "refs": (220, 110, 20)}
    panels = (("PSNR change (dB), higher is better", "PSNR change", "{:+.1f}"),
              ("identity change (dlib distance), lower is better", "ID change", "{:+.2f}"))
    panel_width = width // 2
    for p, (title, column, fmt) in enumerate(panels):
        left, right = p * panel_width + 60, (p + 1) * panel_width - 20
        top, bottom = 40, height - 60
        values = [table[level][c][column] for level in levels for c in table[level]]
        low, high = min(values + [0.0]), max(values + [0.0])
        pad = 0.1 * (high - low or 1.0)
        low, high = low - pad, high + pad

        def y(value: float) -> float:
            return bottom - (value - low) / (high - low) * (bottom - top)

        def x(index: int) -> float:
            return left + (index + 0.5) * (right - left) / len(levels)

        draw.text(((left + right) / 2, 12), title, fill=(20, 20, 20), font=font, anchor="mt")
        # the "made better" half of the panel, lightly green
        better = (left, top, right, y(0.0)) if column == "PSNR change" else (left, y(0.0), right, bottom)
        draw.rectangle(better, fill=(232, 246, 232))
        draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
        draw.line((left, y(0.0), right, y(0.0)), fill=(90, 90, 90), width=1)
        draw.text((left - 6, y(0.0)), "0", fill=(60, 60, 60), font=small, anchor="rm")
        for tick in (low + pad, high - pad):
            if fmt.format(tick) in (fmt.format(0.0), fmt.format(-0.0)):
                continue  # the zero line is labelled already
            draw.text((left - 6, y(tick)), fmt.format(tick), fill=(60, 60, 60), font=small, anchor="rm")
        for index, level in enumerate(levels):
            draw.text((x(index), bottom + 8), level, fill=(20, 20, 20), font=small, anchor="mt")
        for condition, color in colors.items():
            points = [(x(i), y(table[level][condition][column])) for i, level in enumerate(levels)
                      if condition in table[level]]
            draw.line(points, fill=color, width=3)
            for px, py in points:
                draw.ellipse((px - 4, py - 4, px + 4, py + 4), fill=color)
    legend_y = height - 24
    for offset, (condition, color) in enumerate(colors.items()):
        lx = 60 + offset * 220
        draw.line((lx, legend_y, lx + 30, legend_y), fill=color, width=3)
        label = "restored without references" if condition == "no refs" else "restored with references"
        draw.text((lx + 38, legend_y), label, fill=(20, 20, 20), font=small, anchor="lm")
    draw.text((width - 20, legend_y), f"{len(result.faces)} faces of people the model never saw",
              fill=(90, 90, 90), font=small, anchor="rm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
