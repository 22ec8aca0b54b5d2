"""The one place where ComfyUI's tensor layouts meet the library's.

ComfyUI passes images as IMAGE tensors ``(B, H, W, C)`` float in [0, 1] (C = 3, sometimes
1 or 4) and masks as MASK tensors ``(B, H, W)`` (or ``(H, W)``) float in [0, 1]. The
library takes ``(B, 3, H, W)`` RGB in [0, 1] and ``(B, 1, H, W)`` masks. Every node
converts with these functions, and only here.

Also here: ComfyUI's progress bar and interrupt check as a library progress callback,
the devices ComfyUI's model management chooses, and previews shown on a node (V3's
``ui.PreviewImage`` files, several batches in one list).
"""

from __future__ import annotations

import torch

import comfy.model_management as model_management
import comfy.utils

from honestface.errors import ImageError
from honestface.image_io import to_rgb
from honestface.progress import ProgressCallback

from .v3 import ui


def comfy_to_images(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``(B, H, W, C)`` -> library ``(B, 3, H, W)`` float32 in [0, 1].

    Gray (C = 1) is repeated to RGB; RGBA (C = 4) is composited on white, the library's
    documented conversion for images with transparency.
    """
    if not isinstance(image, torch.Tensor):
        raise ImageError(f"{name}: expected an IMAGE tensor, got {type(image).__name__}")
    if image.dim() == 3:  # one image without a batch axis
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        raise ImageError(f"{name}: expected an IMAGE of shape (batch, height, width, 1|3|4 channels), "
                         f"got {tuple(image.shape)}")
    images = to_rgb(image.float().permute(0, 3, 1, 2), name)
    return images.clamp(0.0, 1.0).contiguous()


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Library ``(B, 3, H, W)`` (or ``(3, H, W)``) -> ComfyUI IMAGE ``(B, H, W, 3)`` float32."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ImageError(f"expected library images of shape (batch, 3, height, width), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    out = images.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()
    return out.to(model_management.intermediate_device())


def comfy_to_masks(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """ComfyUI MASK ``(B, H, W)`` or ``(H, W)`` -> library ``(B, 1, H, W)`` float32."""
    if not isinstance(mask, torch.Tensor):
        raise ImageError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ImageError(f"{name}: expected a MASK of shape (batch, height, width), got {tuple(mask.shape)}")
    return mask.float().clamp(0.0, 1.0).unsqueeze(1)


def masks_to_comfy(masks: torch.Tensor) -> torch.Tensor:
    """Library ``(B, 1, H, W)`` or ``(B, H, W)`` -> ComfyUI MASK ``(B, H, W)`` float32."""
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ImageError(f"expected one mask channel, got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ImageError(f"expected masks of shape (batch, height, width), got {tuple(masks.shape)}")
    return masks.detach().float().clamp(0.0, 1.0).contiguous().to(model_management.intermediate_device())


def masks_for_images(mask: torch.Tensor, count: int, height: int, width: int,
                     name: str = "mask") -> list[torch.Tensor]:
    """A ComfyUI MASK given with ``count`` images of ``height`` x ``width`` -> ``count`` masks (H, W).

    One mask applies to every image; otherwise there must be one per image. A mask of another
    size is resized (bilinear) to the images', as ComfyUI's own mask nodes do.
    """
    masks = comfy_to_masks(mask, name)  # (M, 1, h, w)
    if masks.shape[0] not in (1, count):
        raise ImageError(f"{name}: {masks.shape[0]} masks for {count} images; give one mask for all images "
                         "or one per image")
    if tuple(masks.shape[-2:]) != (height, width):
        masks = torch.nn.functional.interpolate(masks, size=(height, width), mode="bilinear",
                                                align_corners=False).clamp(0.0, 1.0)
    masks = masks.expand(count, -1, -1, -1)
    return [m[0] for m in masks]


def preview_on_node(node: type, *batches: torch.Tensor) -> ui.SavedImages:
    """Library image batches ``(B, 3, H, W)`` -> the V3 UI output that shows them on the node.

    Each batch is written as ``ui.PreviewImage`` writes it (PNGs in ComfyUI's temp folder);
    several batches (of different sizes) go into one list, shown in order.
    ``node`` is the executing node class (its hidden prompt goes into the PNGs' metadata).
    """
    results = []
    for images in batches:
        if images.shape[0]:
            results += ui.PreviewImage(images_to_comfy(images), cls=node).values
    return ui.SavedImages(results)


def comfy_progress(total: int) -> ProgressCallback:
    """A library progress callback that drives ComfyUI's progress bar and honours Cancel.

    ``comfy.utils.ProgressBar``, as ComfyUI's own V3 nodes use it: the V3 API's
    ``execution.set_progress`` is a coroutine for async nodes, and our nodes run synchronously.

    The interrupt check runs before the bar moves, so a long batch stops at the next item
    once the user presses Cancel (ComfyUI's ``InterruptProcessingException``).
    """
    bar = comfy.utils.ProgressBar(max(int(total), 1))

    def update(done: int, total_: int) -> None:
        model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(int(done), max(int(total_), 1))

    return update


DEVICE_CHOICES = ["auto", "cpu"]


def resolve_device(choice: str) -> torch.device:
    """``auto``: the device ComfyUI's model management picked (respects --cpu etc.)."""
    if choice == "auto":
        return model_management.get_torch_device()
    if choice == "cpu":
        return torch.device("cpu")
    return torch.device(choice)


DTYPE_CHOICES = ["auto", "float32", "float16", "bfloat16"]


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The model precision for ``device``.

    ``auto``: on the CPU what it computes natively (bfloat16 with AVX512-BF16 or AMX, else
    float32; :func:`honestface.cpu_features.auto_dtype`); on a GPU reduced precision where
    ComfyUI says the device handles it well (``should_use_fp16``), bfloat16 where CUDA
    supports it, else float16; float32 otherwise.
    """
    if choice == "float32":
        return torch.float32
    if choice == "float16":
        return torch.float16
    if choice == "bfloat16":
        return torch.bfloat16
    if device.type == "cpu":
        from honestface.cpu_features import auto_dtype

        return auto_dtype(device)
    if model_management.should_use_fp16(device):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return torch.float32

