"""OSDFace-release-compatible inference: what the public OSDFace ``infer.py`` does to an image.

For people comparing against published OSDFace outputs. The release (jkwang28/OSDFace,
``infer.py``) differs from HonestFace's defaults in four places:

====================  ==========================================  ==========================================
step                  OSDFace release                             HonestFace default
====================  ==========================================  ==========================================
input resize          square inputs: bilinear, ``align_corners=   bicubic with antialias to the model size
                      True``, no antialias, to 512                (:func:`honestface.image_io.resize_to`)
VAE latent            ``latent_dist.sample()`` (random)           the distribution's mode (deterministic)
colour correction     none                                        the model config's (e.g. wavelet)
output                always 512 px; ``ToPILImage`` turns         resized back to the input size; rounded
                      [0, 1] floats into bytes by truncation      to the nearest 8-bit level
                      (``x * 255`` then ``uint8``)
====================  ==========================================  ==========================================

"512" is the model size: :func:`release_restore` resizes to ``pipeline.image_size`` (512 for
SD 2.1-base models, 128 for ``honestface-nano``) and returns faces of that size.

Two differences are not reproduced: the release leaves non-square inputs at their own
size (the UNet then runs at that size); here every input is resized to the square model
size. And the release seeds the VAE sample with nothing that reaches its worker processes
(``torch.manual_seed`` runs in the parent before ``spawn``), so its samples are not
reproducible; here the sample follows the ``generator`` passed in.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .image_io import to_rgb
from .progress import ProgressCallback


def release_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The release's input resize: (B, 3, H, W) in [0, 1] -> (B, 3, size, size), bilinear
    with ``align_corners=True`` and no antialias. Inputs already at ``size`` are returned
    unchanged (the release's interpolation to the same size is the identity)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=True).clamp(0, 1)


def release_quantize(images: torch.Tensor) -> torch.Tensor:
    """The release's 8-bit conversion (torchvision ``ToPILImage`` on floats): ``floor(255 x) / 255``.

    Saving the result with :func:`honestface.image_io.save_image` (which rounds) writes the
    same bytes as the release.
    """
    return torch.floor(images.clamp(0, 1) * 255.0) / 255.0


@contextmanager
def sampled_latent(model) -> Iterator[None]:
    """Within the block, the model encodes ``z_L`` by sampling the VAE posterior."""
    config = model.restorer.config
    previous = config.latent_mode
    config.latent_mode = "sample"
    try:
        yield
    finally:
        config.latent_mode = previous


@torch.no_grad()
def release_restore(pipeline, lq: torch.Tensor, references: Sequence[torch.Tensor | None] | None = None,
                    progress: ProgressCallback | None = None, generator: torch.Generator | None = None,
                    color_correction: str | None = None) -> torch.Tensor:
    """Restore like the OSDFace release (see the module doc).

    Args:
        pipeline: a :class:`~honestface.pipeline.HonestFacePipeline`.
        lq: (B, C, H, W) or (C, H, W) faces in [0, 1].
        references: as for :meth:`~honestface.pipeline.HonestFacePipeline.restore` (the
            release has none; HonestFace models still use them).
        generator: seeds the VAE posterior sample.
        color_correction: default "none" (the release has no colour correction).

    Returns:
        (B, 3, S, S) at the model size S, on 8-bit levels (truncated like the release).
    """
    images = release_resize(to_rgb(lq, "lq").float().cpu().clamp(0, 1), pipeline.image_size)
    with sampled_latent(pipeline.model):
        restored = pipeline.restore(images, references, progress=progress, generator=generator,
                                    output_size=pipeline.image_size,
                                    color_correction=color_correction or "none")
    return release_quantize(restored)


__all__ = ["release_quantize", "release_resize", "release_restore", "sampled_latent"]
