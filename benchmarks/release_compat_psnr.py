"""PSNR of the default mode against the OSDFace-release-compatible mode, change by change.

    python benchmarks/release_compat_psnr.py [--data ../shared/data] [--weights honestface-nano.safetensors]

Faces: ``real_lq/pairs`` (10 real LQ crops at 512 px with pseudo ground truth). Each row
restores them with one of the release's four differences switched on (input resize,
sampled latent, no colour correction, truncated 8-bit output), then all four together
(``restore(release_compat=True)``, three seeds). PSNR (RGB) is printed at the ground
truth's 512 px (the result resized up with bicubic, as ``honestface score`` does) and at the
model size (the ground truth resized down). "512" of the release is the model size: 128 px
for honestface-nano.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from honestface.cli.restore import build_pipeline
from honestface.image_io import list_images, load_image, resize_to
from honestface.metrics.pixel import psnr
from honestface.release_compat import release_quantize, release_resize, sampled_latent


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round() / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", default="honestface-nano.safetensors")
    args = parser.parse_args()
    pairs = args.data / "real_lq" / "pairs"
    lq = torch.stack([load_image(p) for p in list_images(pairs / "lq")])
    gt = torch.stack([load_image(p) for p in list_images(pairs / "pseudo_hq")])
    pipeline = build_pipeline(None, args.weights)
    size = pipeline.image_size
    gt_small = to_8bit(resize_to(gt, size))

    def restore(bilinear: bool, sample: bool, color_correction: str | None, seed: int = 0) -> torch.Tensor:
        images = release_resize(lq, size) if bilinear else resize_to(lq, size)
        generator = torch.Generator().manual_seed(seed)
        if sample:
            with sampled_latent(pipeline.model):
                return pipeline.restore(images, generator=generator, output_size=size, color_correction=color_correction)
        return pipeline.restore(images, generator=generator, output_size=size, color_correction=color_correction)

    def row(name: str, restored: torch.Tensor, truncate: bool = False) -> None:
        small = release_quantize(restored) if truncate else to_8bit(restored)
        large = to_8bit(resize_to(small, tuple(gt.shape[-2:])))
        print(f"{name:52s} PSNR@{gt.shape[-1]} {float(psnr(large, gt).mean()):7.3f}   "
              f"PSNR@{size} {float(psnr(small, gt_small).mean()):7.3f}", flush=True)

    print(f"{len(lq)} pairs, model size {size} px")
    row("LQ input (resized to the model size)", resize_to(lq, size))
    row("default: bicubic+antialias, latent mode, config CC", restore(False, False, None))
    row("  only resize -> bilinear align_corners=True", restore(True, False, None))
    row("  only latent -> sampled (seed 0)", restore(False, True, None))
    row("  only colour correction -> none", restore(False, False, "none"))
    row("  only output -> truncated to 8 bits", restore(False, False, None), truncate=True)
    for seed in range(3):
        lq_seeded = pipeline.restore(lq, generator=torch.Generator().manual_seed(seed), release_compat=True)
        row(f"release-compatible (all four, seed {seed})", lq_seeded)


if __name__ == "__main__":
    main()
