"""How linear is the MFA sharpening of Eq. 11 with k = 10 on real heatmaps?

    python benchmarks/mfa_sharpening.py [--data ../shared/data] [--faces 8] [--figure training/mfa_sharpening.png]

Faces: the first photo of the first ``--faces`` CelebA identities (256 px aligned crops),
degraded with ``training/configs/paper.yaml``'s ranges (seed 0). Heatmaps of the LQ faces
from two backends, landmarks in the aligned face box (no detector): dlib's points rendered
as Gaussians (each peaks at 1), and FAN with random weights (its scale is arbitrary: a
trained FAN's file is not on this machine). Printed per backend: the peak of M_raw (Eq. 10),
``exp(-k max M_raw)`` (the slope of ``1 - exp(-k m)`` at the peak relative to its slope at 0;
1 = linear), the largest difference between Eq. 11 and the linear min-max of M_raw (the
k -> 0 limit), both as written and with ``normalize_raw``, and the share of pixels where
the mask exceeds 0.5. ``--figure`` also draws the mask both ways on one face.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from honestface.degradation import DegradationConfig, degrade
from honestface.face.dlib_backend import DlibLandmarks
from honestface.face.fan import FAN, FanLandmarks
from honestface.image_io import load_image
from honestface.mfa import mfa_blend, mfa_mask

PAPER_DEGRADATION = DegradationConfig(kernel_size=41, blur_sigma=(1, 15), downsample_scale=(1, 30),
                                      noise_sigma=(0, 20), jpeg_quality=(30, 90))


def linear_minmax(raw: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> the min-max normalisation of M_raw (Eq. 11 as k -> 0)."""
    flat = raw.flatten(1)
    low, high = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return (raw - low) / (high - low)


def measure(name: str, heatmaps: torch.Tensor, k: float) -> None:
    raw = heatmaps.mean(1, keepdim=True).clamp_min(0)
    peak = raw.flatten(1).amax(1)
    linear = linear_minmax(raw)
    written = mfa_mask(heatmaps, k=k)
    normalised = mfa_mask(heatmaps, k=k, normalize_raw=True)

    def deviation(mask: torch.Tensor) -> torch.Tensor:
        return (mask - linear).abs().flatten(1).amax(1)

    def area(mask: torch.Tensor) -> float:
        return float((mask > 0.5).float().mean())

    print(f"{name}: heatmap peaks {float(heatmaps.flatten(2).amax(2).mean()):.3f}; max M_raw {float(peak.mean()):.4f} "
          f"({float(peak.min()):.4f}-{float(peak.max()):.4f})")
    print(f"  exp(-k max M_raw) = {float(torch.exp(-k * peak).mean()):.3f} (1 = linear)")
    print(f"  max |M - linear min-max|: as written {float(deviation(written).mean()):.4f} "
          f"(worst {float(deviation(written).max()):.4f}); normalised M_raw {float(deviation(normalised).mean()):.4f}")
    print(f"  pixels with M > 0.5: linear {area(linear):.4f}, as written {area(written):.4f}, normalised {area(normalised):.4f}")


def figure(hq: torch.Tensor, path: Path, k: float, size: int = 160) -> None:
    """One face: x_L, and the mask and blended ground truth of Eq. 11 as written and normalised."""
    from PIL import Image, ImageDraw

    lq = degrade(hq, DegradationConfig.fixed(blur_sigma=4.0, downsample_scale=4.0, noise_sigma=8.0, jpeg_quality=60),
                 generator=0)
    heatmaps = DlibLandmarks(detect=False).heatmaps(lq).float()
    written = mfa_mask(heatmaps, k=k)
    normalised = mfa_mask(heatmaps, k=k, normalize_raw=True)
    panels = [("x_L (degraded)", lq), (f"M: Eq. 11, k={k:g}", written.expand(-1, 3, -1, -1)),
              ("x_MFA,H (Eq. 11)", mfa_blend(hq, written)),
              (f"M: M_raw/max, k={k:g}", normalised.expand(-1, 3, -1, -1)),
              ("x_MFA,H (normalised)", mfa_blend(hq, normalised))]
    canvas = Image.new("RGB", (size * len(panels), size + 18), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (label, image) in enumerate(panels):
        small = F.interpolate(image.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        pixels = (small.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        canvas.paste(Image.fromarray(pixels), (index * size, 18))
        draw.text((index * size + 4, 3), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256).save(path, optimize=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--k", type=float, default=10.0)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    people = sorted(p for p in (args.data / "celeba").iterdir() if p.is_dir())[:args.faces]
    hq = torch.stack([load_image(sorted(p.glob("*.jpg"))[0]) for p in people])
    lq = degrade(hq, PAPER_DEGRADATION, generator=0)
    torch.manual_seed(0)
    with torch.no_grad():
        measure("dlib Gaussians", DlibLandmarks(detect=False).heatmaps(lq).float(), args.k)
        measure("FAN, random weights", FanLandmarks(FAN(), detect=False, flip_input=False).heatmaps(lq).float(), args.k)
    if args.figure is not None:
        figure(hq[:1], args.figure, args.k)


if __name__ == "__main__":
    main()
