"""Synthetic face degradation: blur -> downsample -> noise -> JPEG -> resize back.

This is the classic blind-face-restoration degradation used by VQFR / GFPGAN (and by the
paper, Sec. 4.1), written as batched torch functions:

1. blur with a random Gaussian kernel (isotropic or anisotropic with a random rotation,
   ``kernel_size`` x ``kernel_size``, sigma drawn from ``blur_sigma``);
2. downsample by a factor drawn from ``downsample_scale`` (bilinear, like ``cv2.INTER_LINEAR``);
3. add Gaussian noise with a standard deviation drawn from ``noise_sigma`` (in 0..255 units);
4. JPEG-compress with a quality drawn from ``jpeg_quality`` (PIL);
5. resize back to the input size (bilinear);
6. with probability ``gray_probability`` (VQFR's ``gray_prob``, 0.01) convert the LQ to
   grayscale (ITU-R BT.601 luma, OpenCV's ``COLOR_BGR2GRAY`` weights 0.299 R + 0.587 G +
   0.114 B, repeated to three channels); :func:`degrade_pair` converts the ground truth
   too (VQFR's ``gt_gray``), so the model is not asked to invent colours;
7. quantise to 8 bits.

Every random choice comes from a generator the caller passes (``torch.Generator``,
``numpy.random.Generator`` or an integer seed), so a degradation is reproducible. The
parameters drawn for each image are returned as :class:`DegradationParams` and can be
replayed with :func:`apply_degradation`.

Images follow the library convention: (B, 3, H, W) float RGB in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import strict_from_dict
from .errors import ConfigError
from .image_io import check_image_batch

GeneratorLike = Union[torch.Generator, np.random.Generator, int, None]


def _as_range(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        value = (value, value)
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"degradation {name} must be a number or a [low, high] pair, got {value!r}") from error
    if low > high:
        raise ConfigError(f"degradation {name} range is empty: [{low}, {high}]")
    return (low, high)


@dataclass
class DegradationConfig:
    """Ranges of the random degradation; defaults are VQFR's (paper Sec. 4.1).

    A range ``(low, high)`` is sampled uniformly per image; ``low == high`` fixes the value
    (useful for evaluation at a fixed strength, see :meth:`fixed`).

    Attributes:
        kernel_size: odd size of the blur kernel (41 in VQFR). Shrunk to fit tiny images.
        blur_sigma: Gaussian sigma range in pixels (of the input resolution).
        isotropic_probability: chance of an isotropic kernel; otherwise anisotropic with
            two independent sigmas and a rotation drawn from [-pi, pi].
        downsample_scale: down-sampling factor range (1 = no down-sampling).
        noise_sigma: Gaussian noise standard deviation range, in 0..255 units.
        jpeg_quality: JPEG quality range (integer, 1..100); ``None`` skips JPEG.
        resize_back: resize the degraded image back to the input size.
        quantize: round the result to 8-bit levels (like saving it as PNG).
        gray_probability: chance of a grayscale LQ (VQFR's ``gray_prob``).
        gray_ground_truth: convert the ground truth of a grayscale LQ too (VQFR's
            ``gt_gray``); see :func:`degrade_pair`.
        severity_spread: ``None`` (VQFR, the paper) draws every parameter independently,
            so nearly every image is degraded in some way. A number couples them: one
            severity ``s ~ U(0, 1)`` per image puts every parameter at the same relative
            place in its range (JPEG quality from the top down), each moved by
            ``U(-spread, spread)``; images from nearly clean to the heaviest then occur
            evenly (training a model that must leave good faces as they are).
        clean_probability: chance that an image is not degraded at all (only quantised),
            so a model learns that a clean face needs no change.
    """

    kernel_size: int = 41
    blur_sigma: tuple[float, float] = (1.0, 15.0)
    isotropic_probability: float = 0.5
    downsample_scale: tuple[float, float] = (1.0, 30.0)
    noise_sigma: tuple[float, float] = (0.0, 20.0)
    jpeg_quality: tuple[float, float] | None = (30.0, 90.0)
    resize_back: bool = True
    quantize: bool = True
    gray_probability: float = 0.01
    gray_ground_truth: bool = True
    severity_spread: float | None = None
    clean_probability: float = 0.0

    def __post_init__(self) -> None:
        if self.severity_spread is not None and not 0.0 <= float(self.severity_spread) <= 1.0:
            raise ConfigError(f"severity_spread must lie in [0, 1] or be null, got {self.severity_spread}")
        if not 0.0 <= float(self.clean_probability) <= 1.0:
            raise ConfigError(f"clean_probability must lie in [0, 1], got {self.clean_probability}")
        self.blur_sigma = _as_range(self.blur_sigma, "blur_sigma")
        self.downsample_scale = _as_range(self.downsample_scale, "downsample_scale")
        self.noise_sigma = _as_range(self.noise_sigma, "noise_sigma")
        if self.jpeg_quality is not None:
            self.jpeg_quality = _as_range(self.jpeg_quality, "jpeg_quality")
            if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
                raise ConfigError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if int(self.kernel_size) < 1 or int(self.kernel_size) % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        self.kernel_size = int(self.kernel_size)
        if self.blur_sigma[0] <= 0:
            raise ConfigError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if self.downsample_scale[0] < 1:
            raise ConfigError(f"downsample_scale must be >= 1, got {self.downsample_scale}")
        if self.noise_sigma[0] < 0:
            raise ConfigError(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if not 0.0 <= float(self.isotropic_probability) <= 1.0:
            raise ConfigError(f"isotropic_probability must lie in [0, 1], got {self.isotropic_probability}")
        if not 0.0 <= float(self.gray_probability) <= 1.0:
            raise ConfigError(f"gray_probability must lie in [0, 1], got {self.gray_probability}")

    @classmethod
    def fixed(cls, blur_sigma: float, downsample_scale: float, noise_sigma: float,
              jpeg_quality: float | None, **kwargs: Any) -> "DegradationConfig":
        """A deterministic-strength degradation (isotropic blur, fixed values, colour kept)."""
        kwargs.setdefault("isotropic_probability", 1.0)
        kwargs.setdefault("gray_probability", 0.0)
        return cls(blur_sigma=(blur_sigma, blur_sigma), downsample_scale=(downsample_scale, downsample_scale),
                   noise_sigma=(noise_sigma, noise_sigma),
                   jpeg_quality=None if jpeg_quality is None else (jpeg_quality, jpeg_quality), **kwargs)

    @classmethod
    def moderate(cls) -> "DegradationConfig":
        """The fixed evaluation level of the demo, the nano benchmark and its regression
        test (:data:`MODERATE_DEGRADATION`): inside the lower half of VQFR's training ranges."""
        return cls.fixed(**MODERATE_DEGRADATION)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DegradationConfig":
        return strict_from_dict(cls, data, "the degradation options")


#: Blur sigma 2.5 px at 128 px (10 px at 512), 4x down-sampling, noise sigma 5/255, JPEG 60.
MODERATE_DEGRADATION: dict[str, Any] = dict(blur_sigma=2.5, downsample_scale=4.0, noise_sigma=5.0,
                                            jpeg_quality=60, kernel_size=21)


@dataclass
class DegradationParams:
    """Per-image parameters drawn for one batch (all tensors have shape (B,))."""

    sigma_x: torch.Tensor
    sigma_y: torch.Tensor
    theta: torch.Tensor
    scale: torch.Tensor
    noise_sigma: torch.Tensor
    jpeg_quality: torch.Tensor | None
    noise_seed: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    gray: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (B,) or empty: none
    clean: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # (B,) or empty: none

    def __len__(self) -> int:
        return int(self.sigma_x.shape[0])

    def item(self, index: int) -> dict[str, float]:
        """Plain numbers of image ``index`` (for logs and reports)."""
        out = {"sigma_x": float(self.sigma_x[index]), "sigma_y": float(self.sigma_y[index]),
               "theta": float(self.theta[index]), "scale": float(self.scale[index]),
               "noise_sigma": float(self.noise_sigma[index])}
        if self.jpeg_quality is not None:
            out["jpeg_quality"] = int(self.jpeg_quality[index])
        out["gray"] = self.is_gray(index)
        out["clean"] = self.is_clean(index)
        return out

    def is_clean(self, index: int) -> bool:
        return bool(self.clean[index]) if len(self.clean) else False

    def is_gray(self, index: int) -> bool:
        return bool(self.gray[index]) if len(self.gray) else False


# ----------------------------------------------------------------------------- random draws


def _uniform(generator: GeneratorLike, n: int, low: float, high: float) -> torch.Tensor:
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.uniform(low, high, size=n)).float()
    return torch.rand(n, generator=generator, dtype=torch.float64).float() * (high - low) + low


def _integers(generator: GeneratorLike, n: int) -> torch.Tensor:
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.integers(0, 2**62, size=n, dtype=np.int64))
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def _resolve_generator(generator: GeneratorLike) -> torch.Generator | np.random.Generator | None:
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    if generator is None or isinstance(generator, (torch.Generator, np.random.Generator)):
        return generator
    raise ConfigError(f"generator must be a torch.Generator, numpy Generator, int seed or None, got {type(generator)}")


def sample_degradation_params(batch_size: int, config: DegradationConfig | None = None,
                              generator: GeneratorLike = None) -> DegradationParams:
    """Draw the parameters of ``batch_size`` degradations from ``config``'s ranges."""
    config = config or DegradationConfig()
    generator = _resolve_generator(generator)
    n = int(batch_size)
    sigma_x = _uniform(generator, n, *config.blur_sigma)
    sigma_y = _uniform(generator, n, *config.blur_sigma)
    theta = _uniform(generator, n, -math.pi, math.pi)
    isotropic = _uniform(generator, n, 0.0, 1.0) < config.isotropic_probability
    sigma_y = torch.where(isotropic, sigma_x, sigma_y)
    theta = torch.where(isotropic, torch.zeros_like(theta), theta)
    scale = _uniform(generator, n, *config.downsample_scale)
    noise_sigma = _uniform(generator, n, *config.noise_sigma)
    quality = None
    if config.jpeg_quality is not None:
        low, high = config.jpeg_quality
        quality = _uniform(generator, n, low, high).round().clamp(1, 100).to(torch.int64)
    noise_seed = _integers(generator, n)
    # drawn last, so the other parameters of a seed do not depend on the gray option
    gray = _uniform(generator, n, 0.0, 1.0) < config.gray_probability
    clean = torch.zeros(0, dtype=torch.bool)
    # the options below draw after everything else: without them a seed gives what it always gave
    if config.severity_spread is not None:
        severity = _uniform(generator, n, 0.0, 1.0)
        spread = float(config.severity_spread)

        def at_severity(low: float, high: float) -> torch.Tensor:
            place = (severity + _uniform(generator, n, -spread, spread)).clamp(0.0, 1.0)
            return low + place * (high - low)

        sigma_x = at_severity(*config.blur_sigma)
        sigma_y = torch.where(isotropic, sigma_x, sigma_x * _uniform(generator, n, 0.5, 1.5))
        scale = at_severity(*config.downsample_scale)
        noise_sigma = at_severity(*config.noise_sigma)
        if config.jpeg_quality is not None:
            low, high = config.jpeg_quality
            quality = at_severity(high, low).round().clamp(1, 100).to(torch.int64)
    if config.clean_probability > 0:
        clean = _uniform(generator, n, 0.0, 1.0) < config.clean_probability
    return DegradationParams(sigma_x, sigma_y, theta, scale, noise_sigma, quality, noise_seed, gray, clean)


# ----------------------------------------------------------------------------- operations


def gaussian_kernels(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor,
                     kernel_size: int) -> torch.Tensor:
    """Normalised (possibly anisotropic, rotated) Gaussian kernels.

    Args:
        sigma_x, sigma_y, theta: (B,) standard deviations along the rotated axes and the
            rotation angle in radians.
        kernel_size: odd side length.

    Returns:
        (B, kernel_size, kernel_size) kernels summing to 1.
    """
    half = kernel_size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = torch.cos(theta.double()), torch.sin(theta.double())
    # coordinates in the kernel's rotated frame
    u = cos[:, None, None] * xx + sin[:, None, None] * yy
    v = -sin[:, None, None] * xx + cos[:, None, None] * yy
    sx, sy = sigma_x.double()[:, None, None], sigma_y.double()[:, None, None]
    kernel = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    kernel = kernel / kernel.sum(dim=(-2, -1), keepdim=True)
    return kernel.float()


def blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each image of (B, C, H, W) with its own (B, k, k) kernel (reflect border).

    Computed with FFTs: a 41x41 kernel on a 512x512 image is ~40x cheaper than a direct
    convolution on the CPU (data loading runs there).
    """
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode=mode)
    ph, pw = padded.shape[-2:]
    # kernel centred on the origin of a (ph, pw) grid for a circular convolution
    grid = torch.zeros(b, ph, pw, dtype=torch.float32, device=images.device)
    grid[:, :k, :k] = kernels.to(grid)
    grid = torch.roll(grid, shifts=(-pad, -pad), dims=(-2, -1))
    spectrum = torch.fft.rfft2(padded) * torch.fft.rfft2(grid)[:, None]
    out = torch.fft.irfft2(spectrum, s=(ph, pw))
    return out[..., pad:pad + h, pad:pad + w].to(images.dtype)


def add_gaussian_noise(images: torch.Tensor, sigma_255: torch.Tensor, seeds: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Add per-image Gaussian noise with standard deviation ``sigma_255 / 255``.

    ``seeds`` (B,) makes each image's noise independent of the batch it is in.
    """
    if seeds is not None and len(seeds) == images.shape[0]:
        noise = torch.stack([
            torch.randn(image.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)
            for image, seed in zip(images, seeds)
        ]).to(images)
    else:
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32).to(images)
    return images + noise * (sigma_255.to(images) / 255.0)[:, None, None, None]


def jpeg_compress(images: torch.Tensor, quality: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    """JPEG-encode and decode each image at its quality (8-bit, PIL's libjpeg, 4:2:0)."""
    import io

    from PIL import Image

    if isinstance(quality, int):
        quality = [quality] * images.shape[0]
    as_bytes = (images.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array, q in zip(as_bytes, quality):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(q))
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()))
    return torch.stack(decoded).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255.0


#: ITU-R BT.601 luma weights (R, G, B), those of OpenCV's ``COLOR_BGR2GRAY`` / ``COLOR_RGB2GRAY``.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) with every channel the BT.601 luma."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand_as(images).contiguous()


def _fit_kernel_size(kernel_size: int, height: int, width: int) -> int:
    limit = 2 * min(height, width) - 1
    size = min(kernel_size, limit)
    return size if size % 2 == 1 else size - 1


def apply_degradation(images: torch.Tensor, params: DegradationParams,
                      config: DegradationConfig | None = None) -> torch.Tensor:
    """Degrade a (B, 3, H, W) batch in [0, 1] with given per-image parameters.

    Returns:
        (B, 3, H, W) in [0, 1] (or the down-sampled size when ``resize_back`` is off,
        which needs a single scale for the whole batch).
    """
    config = config or DegradationConfig()
    images = check_image_batch(images, "images")
    if len(params) != images.shape[0]:
        raise ConfigError(f"{len(params)} degradation parameter sets for a batch of {images.shape[0]}")
    _, _, h, w = images.shape
    work = images.float()
    kernel_size = _fit_kernel_size(config.kernel_size, h, w)
    work = blur(work, gaussian_kernels(params.sigma_x, params.sigma_y, params.theta, kernel_size))

    small = []
    for image, scale in zip(work, params.scale.tolist()):
        size = (max(1, int(h / scale)), max(1, int(w / scale)))
        small.append(F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0])
    sizes = {tuple(s.shape) for s in small}
    if not config.resize_back and len(sizes) > 1:
        raise ConfigError("resize_back=False needs one downsample_scale for the whole batch")

    out = []
    for index, image in enumerate(small):
        one = image[None]
        one = add_gaussian_noise(one, params.noise_sigma[index:index + 1], params.noise_seed[index:index + 1])
        one = one.clamp(0, 1)
        if params.jpeg_quality is not None:
            one = jpeg_compress(one, params.jpeg_quality[index:index + 1].tolist())
        if config.resize_back:
            one = F.interpolate(one, size=(h, w), mode="bilinear", align_corners=False)
        if params.is_gray(index):
            one = to_grayscale(one)
        out.append(one[0])
    result = torch.stack(out).clamp(0, 1)
    if len(params.clean) and bool(params.clean.any()) and config.resize_back:
        result = torch.where(params.clean.view(-1, 1, 1, 1), images.float().clamp(0, 1), result)
    if config.quantize:
        result = (result * 255.0).round() / 255.0
    return result.to(images.dtype)


def degrade(images: torch.Tensor, config: DegradationConfig | None = None, generator: GeneratorLike = None,
            return_params: bool = False):
    """Randomly degrade a batch: the training and evaluation LQ synthesis.

    Args:
        images: (B, 3, H, W) or (3, H, W) in [0, 1].
        config: ranges (VQFR defaults when omitted).
        generator: ``torch.Generator``, ``numpy.random.Generator`` or an int seed; the same
            seed gives the same output.
        return_params: also return the drawn :class:`DegradationParams`.

    Returns:
        The degraded batch (same shape as a batched input), and the parameters if asked.
    """
    config = config or DegradationConfig()
    batched = check_image_batch(images, "images")
    params = sample_degradation_params(batched.shape[0], config, generator)
    result = apply_degradation(batched, params, config)
    if images.dim() == 3:
        result = result[0]
    return (result, params) if return_params else result


def degrade_pair(ground_truth: torch.Tensor, config: DegradationConfig | None = None,
                 generator: GeneratorLike = None) -> tuple[torch.Tensor, torch.Tensor, DegradationParams]:
    """A training pair: ``(lq, ground_truth, params)``.

    Like :func:`degrade`, and where the LQ was turned grayscale the returned ground truth
    is converted too (``config.gray_ground_truth``, VQFR's ``gt_gray``). Shapes as for
    :func:`degrade`; the ground truth is not quantised (as in VQFR).
    """
    config = config or DegradationConfig()
    lq, params = degrade(ground_truth, config, generator, return_params=True)
    if config.gray_ground_truth and bool(params.gray.any()):
        batched = check_image_batch(ground_truth, "images")
        converted = torch.where(params.gray.view(-1, 1, 1, 1).to(batched.device), to_grayscale(batched), batched)
        ground_truth = converted[0] if ground_truth.dim() == 3 else converted
    return lq, ground_truth, params


def bicubic_baseline(images: torch.Tensor, params: DegradationParams,
                     config: DegradationConfig) -> torch.Tensor:
    """The usual "bicubic" baseline of a degradation: the same degraded small image
    (same ``params``), brought back to full size with bicubic instead of bilinear
    interpolation, clamped and quantised like :func:`apply_degradation`.

    ``images`` (B, 3, H, W); every image must share one down-sampling scale. Returns
    (B, 3, H, W) in [0, 1].
    """
    from dataclasses import replace

    small = apply_degradation(images, params, replace(config, resize_back=False))
    size = tuple(images.shape[-2:])
    upscaled = F.interpolate(small.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    if config.quantize:
        upscaled = (upscaled * 255.0).round() / 255.0
    return upscaled.to(images.dtype)
