"""Reading, checking and writing images.

Convention used across the library: an image batch is a float tensor of shape
(B, 3, H, W), RGB, values in [0, 1]. Models convert to [-1, 1] internally. ComfyUI's
(B, H, W, C) layout is converted only in ``nodes/``.

Conversions applied to what users give us, documented once here:
- grayscale (L, I;16, 1-bit) -> RGB by repeating the channel;
- RGBA / LA / palette with transparency -> RGB composited on white;
- 16-bit images -> scaled to [0, 1];
- the EXIF orientation tag (phone pictures) is applied, so the pixels come back upright;
- any size up to :data:`MAX_IMAGE_PIXELS` (``max_pixels``) is accepted on reading; larger
  images (decompression bombs among them) raise :class:`~honestface.errors.ImageTooLargeError`
  before they are decoded; callers that need a fixed size resize explicitly, and callers
  that look for faces check :data:`MIN_IMAGE_SIDE` with :func:`check_image_size`;
- whole photos may be kept as 8-bit (``load_image(..., dtype=torch.uint8)``, (3, H, W)
  uint8): a 63 MP photo is 190 MB as uint8 and 760 MB as float32. Whole-photo
  restoration (:mod:`honestface.whole_photo`) takes such photos and works in float on the
  face regions only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import ImageError, ImageTooLargeError, ImageTooSmallError

#: Smallest side (pixels) of an image that can hold a face worth restoring: below it the
#: detectors find nothing and the model would only upscale noise.
MIN_IMAGE_SIDE = 32

#: Largest image (width x height) read by default: 200 megapixels (a 150 MP medium-format
#: photo passes; a 20000 x 20000 decompression bomb, 400 MP, does not). Checked from the
#: file's header before anything is decoded; ``max_pixels`` (CLI ``--max-pixels``) raises it.
#: PIL's own bomb check (``PIL.Image.MAX_IMAGE_PIXELS``) is replaced by this one while reading.
MAX_IMAGE_PIXELS = 200_000_000

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".jfif")


def _to_rgb_array(image, uint8: bool = False) -> np.ndarray:
    """PIL image -> (H, W, 3) float32 in [0, 1] (or uint8 in [0, 255] with ``uint8``),
    applying the documented conversions."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if array.max() > 255 else 255.0
        array = np.clip(array / scale, 0.0, 1.0)
        if uint8:
            array = (array * 255.0).round().astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if uint8:
        return np.array(image, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    return np.asarray(image, dtype=np.float32) / 255.0


_PIL_LIMIT_LOCK = threading.Lock()


def _open_checked(path: Path, max_pixels: int):
    """``PIL.Image.open`` (lazy: the header only) with our pixel limit instead of PIL's."""
    from PIL import Image

    with _PIL_LIMIT_LOCK:  # PIL's limit is a module global; ours is checked just below
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(f"image {path} is {width}x{height} = {width * height / 1e6:.1f} megapixels, above "
                                 f"the limit of {max_pixels / 1e6:g} megapixels (a decompression bomb, or a very "
                                 "large photo); raise max_pixels to read it", width * height, max_pixels)
    return image


def load_image(path: str | Path, dtype: torch.dtype = torch.float32, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file as a (3, H, W) tensor, upright (EXIF orientation applied).

    Args:
        path: the image file.
        dtype: ``torch.float32`` (default): values in [0, 1]; ``torch.uint8``: 8-bit values,
            a quarter of the memory (16-bit files are rounded to 8 bits).
        max_pixels: largest width x height read (default :data:`MAX_IMAGE_PIXELS`).

    Raises:
        ImageTooLargeError: more pixels than ``max_pixels`` (nothing is decoded).
        ImageError: the file is missing, unreadable, truncated or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if dtype not in (torch.float32, torch.uint8):
        raise ImageError(f"load_image reads float32 or uint8 images, not {dtype}")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with _open_checked(path, limit) as image:
            image.load()
            # exif_transpose keeps the mode (16-bit, palette, CMYK, alpha) and only rotates/flips.
            array = _to_rgb_array(ImageOps.exif_transpose(image), uint8=dtype == torch.uint8)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) or (1, 3, H, W) tensor to ``path`` (format by suffix): float in
    [0, 1], or uint8 (written as it is)."""
    from PIL import Image

    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ImageError(f"save_image takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    if image.dtype == torch.uint8:
        array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    else:
        array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def check_image_size(image: torch.Tensor, name: str = "image", min_side: int = MIN_IMAGE_SIDE) -> torch.Tensor:
    """Raise :class:`~honestface.errors.ImageTooSmallError` when a (..., H, W) image has a side
    below ``min_side`` (default :data:`MIN_IMAGE_SIDE`); returns the image unchanged."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if min(height, width) < min_side:
        raise ImageTooSmallError(f"{name} is {width}x{height} px: too small to hold a face "
                                 f"(each side must be at least {min_side} px)")
    return image


def check_image_batch(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate a (B, 3, H, W) batch in [0, 1]; a single (3, H, W) image gets a batch axis.

    Raises:
        ImageError: wrong number of dimensions or channels, empty, or non-finite values.
    """
    if not isinstance(images, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ImageError(f"{name} must have shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    if images.numel() == 0:
        raise ImageError(f"{name} is empty: shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ImageError(f"{name} contains NaN or infinite values")
    return images


def to_rgb(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """(B, C, H, W) or (C, H, W) float with C in {1, 3, 4} -> checked (B, 3, H, W) (see module doc).

    Gray is repeated to RGB; RGBA is composited on white, as for files.
    """
    if not isinstance(images, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ImageError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ImageError(f"{name} must be a float tensor in [0, 1], got {images.dtype}")
    channels = images.shape[1]
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    elif channels == 4:
        alpha = images[:, 3:4]
        images = images[:, :3] * alpha + (1.0 - alpha)
    elif channels != 3:
        raise ImageError(f"{name} must have 1, 3 or 4 channels, got {channels}")
    return check_image_batch(images, name)


def resize_to(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a (B, C, H, W) batch to ``size`` (bicubic with antialias, clamped to [0, 1])."""
    if isinstance(size, int):
        size = (size, size)
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    resized = torch.nn.functional.interpolate(images, size=size, mode="bicubic",
                                              align_corners=False, antialias=True)
    return resized.clamp(0, 1)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_images(paths: Sequence[str | Path] | Iterable[str | Path], size: int | None = None) -> torch.Tensor:
    """Read several images into one (B, 3, H, W) batch, resized to ``size`` if given.

    Without ``size`` all images must have the same shape.
    """
    tensors = [load_image(p) for p in paths]
    if not tensors:
        raise ImageError("no images given")
    if size is not None:
        tensors = [resize_to(t.unsqueeze(0), size)[0] for t in tensors]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ImageError(f"images have different sizes {sorted(shapes)}; pass a size to resize them")
    return torch.stack(tensors)
