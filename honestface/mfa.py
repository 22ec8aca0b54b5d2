"""Masked face alignment (MFA, paper Sec. 3.3, Eq. 10-13).

MFA focuses a perceptual loss on the facial features (eyes, brows, nose, mouth) by
blending both the ground truth and the restored face with a neutral background through
an attention mask built from landmark heatmaps of the low-quality input:

    M_raw = mean_c heatmaps(x_L)                                   (Eq. 10)
    S     = 1 - exp(-k M_raw)
    M     = (S - min S) / (max S - min S + eps)                    (Eq. 11, per image)
    x_MFA = M * x + (1 - M) * B                                    (Eq. 12)
    L_MFA = LPIPS(x_MFA,H, x_MFA_hat)                              (Eq. 13)

``k`` (10 in the paper) sharpens the mask: ``1 - exp(-k m)`` rises faster for larger
``k`` and saturates at 1, so after the min-max step more of the face reaches values near
one (the mask widens). How much depends on the scale of ``M_raw``, which the paper does
not fix: the mean of 68 heatmaps that each peak at 1 peaks far below 1 (where Gaussians
overlap, about 0.03-0.1), so ``k M_raw`` stays small and Eq. 11 is close to a linear
min-max of ``M_raw``. ``normalize_raw=True`` divides ``M_raw`` by its maximum first
(per image), so ``k`` acts on [0, 1] as its size suggests (off by default: Eq. 10-11 as
written). See ``training/README.md`` for measurements and a figure. The background ``B`` is mid-grey, 0.5 in the library's [0, 1]
image range (0 in [-1, 1]): it is the colour that carries no information about either
image and sits in the middle of every channel, so the masked-out area contributes
equal, small LPIPS responses for both inputs instead of a strong edge.

Images: (B, 3, H, W) float RGB in [0, 1]. Heatmaps: (B, C, h, w), non-negative, one
channel per landmark (FAN heatmaps or Gaussians rendered at dlib points); they may have
a lower resolution than the image (pass ``size``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import ImageError

#: Neutral background of Eq. 12 for images in [0, 1] (mid-grey).
NEUTRAL_BACKGROUND = 0.5
#: Sharpening constant of Eq. 11 used in the paper.
DEFAULT_K = 10.0
DEFAULT_EPS = 1e-6

LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_4d(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ImageError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if not tensor.is_floating_point():
        raise ImageError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def mfa_mask(
    heatmaps: torch.Tensor,
    k: float = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    size: Optional[Sequence[int]] = None,
    normalize_raw: bool = False,
) -> torch.Tensor:
    """The MFA attention mask of Eq. 10-11.

    Args:
        heatmaps: (B, C, h, w) non-negative landmark heatmaps of the LQ input.
        k: sharpening constant (> 0); larger values widen and saturate the mask.
        eps: stabiliser of the min-max normalisation (> 0).
        size: optional output (H, W); the channel mean is resized bilinearly first.
        normalize_raw: divide ``M_raw`` by its per-image maximum before Eq. 11 (not in the
            paper; off by default).

    Returns:
        (B, 1, H, W) mask in [0, 1] (differentiable w.r.t. ``heatmaps``). An image whose
        heatmaps are constant (e.g. no face found) gives an all-zero mask.
    """
    _check_4d(heatmaps, "heatmaps")
    if not k > 0:
        raise ValueError(f"MFA sharpening k must be > 0, got {k}")
    if not eps > 0:
        raise ValueError(f"MFA eps must be > 0, got {eps}")
    raw = heatmaps.mean(dim=1, keepdim=True)  # Eq. 10
    if size is not None and tuple(raw.shape[-2:]) != tuple(size):
        raw = F.interpolate(raw, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    raw = raw.clamp_min(0)  # heatmap networks can output small negative values
    if normalize_raw:
        raw = raw / raw.flatten(1).amax(dim=1).clamp_min(eps).view(-1, 1, 1, 1)
    sharpened = 1.0 - torch.exp(-k * raw)
    flat = sharpened.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (sharpened - low) / (high - low + eps)  # Eq. 11


def mfa_mask_from_images(
    images: torch.Tensor,
    landmark_backend,
    k: float = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    normalize_raw: bool = False,
) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, 1, H, W) MFA masks, heatmaps from a LandmarkBackend."""
    _check_4d(images, "images")
    with torch.no_grad():
        heatmaps = landmark_backend.heatmaps(images)
    return mfa_mask(heatmaps.to(images.dtype), k=k, eps=eps, size=images.shape[-2:], normalize_raw=normalize_raw)


def mfa_blend(
    image: torch.Tensor,
    mask: torch.Tensor,
    background: Union[float, torch.Tensor] = NEUTRAL_BACKGROUND,
) -> torch.Tensor:
    """Eq. 12: ``mask * image + (1 - mask) * background``.

    Args:
        image: (B, 3, H, W) image.
        mask: (B, 1, H, W) or (B, 3, H, W) mask in [0, 1] (resized bilinearly if its
            resolution differs from the image).
        background: a number or a tensor broadcastable to the image; default mid-grey
            0.5 for [0, 1] images (use 0.0 for images in [-1, 1]).
    """
    _check_4d(image, "image")
    _check_4d(mask, "mask")
    if mask.shape[0] not in (1, image.shape[0]) or mask.shape[1] not in (1, image.shape[1]):
        raise ImageError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(image.shape)}")
    if mask.shape[-2:] != image.shape[-2:]:
        mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask.to(image.dtype)
    if isinstance(background, torch.Tensor):
        background = background.to(device=image.device, dtype=image.dtype)
    return mask * image + (1.0 - mask) * background


def _reduce(value: torch.Tensor, reduction: str) -> torch.Tensor:
    value = value.reshape(value.shape[0], -1).mean(dim=1) if value.ndim > 0 else value
    if reduction == "mean":
        return value.mean()
    if reduction == "sum":
        return value.sum()
    if reduction == "none":
        return value
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mfa_loss(
    restored: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    lpips_fn: LpipsFn,
    background: Union[float, torch.Tensor] = NEUTRAL_BACKGROUND,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 13: LPIPS between the MFA-blended ground truth and restored face.

    Args:
        restored: (B, 3, H, W) restored faces ``x_hat_H`` in [0, 1].
        target: (B, 3, H, W) ground truth ``x_H`` in [0, 1].
        mask: (B, 1, H, W) MFA mask from :func:`mfa_mask` (computed on ``x_L``).
        lpips_fn: the perceptual network, called as ``lpips_fn(a, b)`` on [0, 1] images
            and returning (B,), (B, 1, 1, 1) or a scalar. Wrap networks that expect
            [-1, 1] inputs (``lambda a, b: net(2 * a - 1, 2 * b - 1)``).
        background: neutral background of Eq. 12.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per image, (B,)).
    """
    if restored.shape != target.shape:
        raise ImageError(f"restored {tuple(restored.shape)} and target {tuple(target.shape)} differ in shape")
    mask = mask.detach()  # the mask comes from x_L and is not trained through
    masked_target = mfa_blend(target, mask, background)
    masked_restored = mfa_blend(restored, mask, background)
    return _reduce(lpips_fn(masked_target, masked_restored), reduction)


class MaskedFaceAlignmentLoss(torch.nn.Module):
    """L_MFA (Eq. 10-13) as a module with the LPIPS network injected.

    ``forward(restored, target, mask=None, heatmaps=None)``: pass either a ready mask
    or the LQ heatmaps (the mask is then built with this module's ``k`` and ``eps``).
    """

    def __init__(
        self,
        lpips_fn: LpipsFn,
        k: float = DEFAULT_K,
        eps: float = DEFAULT_EPS,
        background: float = NEUTRAL_BACKGROUND,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.lpips_fn = lpips_fn
        self.k = k
        self.eps = eps
        self.background = background
        self.reduction = reduction

    def forward(
        self,
        restored: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        heatmaps: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if (mask is None) == (heatmaps is None):
            raise ValueError("pass exactly one of mask or heatmaps")
        if mask is None:
            mask = mfa_mask(heatmaps, k=self.k, eps=self.eps, size=restored.shape[-2:])
        return mfa_loss(restored, target, mask, self.lpips_fn, self.background, self.reduction)

    def extra_repr(self) -> str:
        return f"k={self.k}, eps={self.eps}, background={self.background}"


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) mask -> (B, 3, H, W) grey image in [0, 1] (white = attended)."""
    _check_4d(mask, "mask")
    return mask[:, :1].clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def mask_overlay(
    image: torch.Tensor,
    mask: torch.Tensor,
    color: Sequence[float] = (1.0, 0.15, 0.1),
    alpha: float = 0.6,
) -> torch.Tensor:
    """Preview: tint ``image`` with ``color`` where the mask is high.

    Args:
        image: (B, 3, H, W) in [0, 1]. mask: (B, 1, H, W) in [0, 1].
        color: RGB tint of the attended regions. alpha: tint strength in [0, 1].

    Returns:
        (B, 3, H, W) in [0, 1].
    """
    _check_4d(image, "image")
    _check_4d(mask, "mask")
    tint = torch.tensor(color, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    # Eq. 12 with the roles swapped: keep the image where the mask is low, tint where high.
    keep = 1.0 - alpha * mask.clamp(0, 1)
    return mfa_blend(image, keep, tint).clamp(0, 1)


__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_K",
    "NEUTRAL_BACKGROUND",
    "MaskedFaceAlignmentLoss",
    "mask_overlay",
    "mask_to_image",
    "mfa_blend",
    "mfa_loss",
    "mfa_mask",
    "mfa_mask_from_images",
]
