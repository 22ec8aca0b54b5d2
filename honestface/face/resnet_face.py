"""ArcFace ``resnet_face18``: the recogniser behind the field's "Deg." (VQFR's ``metric_paper``).

The face-restoration papers that follow VQFR's evaluation scripts (VQFR, CodeFormer,
DifFace, ...) measure identity with ``resnet18_110.pth``, a ResNet-18 face recogniser of
the ``arcface-pytorch`` project (``resnet_face18(use_se=False)``), trained with the
ArcFace loss on CASIA-WebFace. Its input is one grey 128x128 face; its output a 512-d
embedding. This module builds the same network (same module names, so the distributed
state dict loads unchanged) and the same input:

- :func:`grey128`: what ``cv2.imread(path, 0)`` then ``cv2.resize(.., (128, 128))`` and
  ``(x - 127.5) / 127.5`` make of an 8-bit RGB PNG, on tensors: OpenCV reads a PNG as grey
  through libpng's conversion, ``(9797 R + 19234 G + 3737 B) >> 15`` (BT.601 weights,
  truncated), then resizes bilinearly (pixel centres, no antialiasing) and stores 8 bits
  again. For sizes that are an integer multiple of 128 (512 px faces) this is OpenCV's
  result exactly; for other sizes OpenCV's fixed-point interpolation can differ by one grey
  level. (A JPEG file is read as grey by libjpeg instead, which differs slightly: test sets
  are PNG.)
- :class:`ResNetFace`: conv3x3(1 -> 64) -> BN -> PReLU -> maxpool 2, four stages of
  :class:`IRBlock` (64, 128, 256, 512; stages 2-4 halve the size), BN, dropout,
  ``fc5`` (512 * 8 * 8 -> 512), ``bn5`` (BatchNorm1d). 128 -> 64 -> 8 px before ``fc5``.

The distributed file is a state dict saved from ``nn.DataParallel`` (every key starts with
``module.``); it lives in ``<models>/metric_weights/`` (VQFR's
``experiments/pretrained_models/metric_weights/`` holds the same file).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ImageError
from ..paths import find_model_file

logger = logging.getLogger("honestface.face.resnet_face")

RESNET_FACE18_FILE = "resnet18_110.pth"
#: Where the file is distributed (for the error message of a missing file).
RESNET_FACE18_SOURCE = ("the metric_weights of TencentARC/VQFR's releases (also GFPGAN's and CodeFormer's "
                        "evaluation instructions), trained by ronghuaiyang/arcface-pytorch")
INPUT_SIZE = 128


@dataclass(frozen=True)
class ResNetFaceConfig:
    """``resnet_face18``: IR blocks (2, 2, 2, 2), no squeeze-and-excitation, 512-d output."""

    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    embedding_dim: int = 512
    input_size: int = INPUT_SIZE


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the (projected) input, PReLU.

    One single-parameter PReLU serves both activations (as in the original network, whose
    state dict has one ``prelu.weight`` per block).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = _conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ResNetFace(nn.Module):
    """(B, 1, 128, 128) grey faces in [-1, 1] -> (B, 512) embeddings (not normalised)."""

    def __init__(self, config: ResNetFaceConfig = ResNetFaceConfig()) -> None:
        super().__init__()
        self.config = config
        self.conv1 = _conv3x3(1, config.widths[0])
        self.bn1 = nn.BatchNorm2d(config.widths[0])
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        channels = config.widths[0]
        for stage, (blocks, width) in enumerate(zip(config.layers, config.widths), start=1):
            stride = 1 if stage == 1 else 2
            modules = [IRBlock(channels, width, stride)] + [IRBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*modules))
            channels = width
        self.bn4 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout()
        spatial = config.input_size // 16  # maxpool + three stride-2 stages
        self.fc5 = nn.Linear(channels * spatial * spatial, config.embedding_dim)
        self.bn5 = nn.BatchNorm1d(config.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (size, size):
            raise ImageError(f"resnet_face18 takes (B, 1, {size}, {size}) grey faces, got {tuple(x.shape)}; "
                             "prepare images with grey128()")
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.flatten(1)))


def round_half_up(values: torch.Tensor) -> torch.Tensor:
    """Rounding as OpenCV's 8-bit conversions do it (``.5`` goes up, not to even)."""
    return torch.floor(values + 0.5)


def resize_bilinear_8bit(images_255: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(.., INTER_LINEAR)`` of 8-bit images: (B, C, H, W) in 0..255 -> 8-bit levels.

    Bilinear on pixel centres, no antialiasing (OpenCV's INTER_LINEAR also when shrinking),
    rounded half up to integers. Float64, so the only difference from OpenCV is its
    fixed-point weights (none for integer shrink factors 2 and 4: all weights are 1/2).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images_255.shape[-2:]) == size:
        return images_255.to(torch.float64)
    resized = F.interpolate(images_255.to(torch.float64), size=size, mode="bilinear", align_corners=False,
                            antialias=False)
    return round_half_up(resized).clamp(0, 255)


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> the 8-bit levels an image file holds (float64, 0..255)."""
    return round_half_up(images.to(torch.float64).clamp(0, 1) * 255.0)


def grey128(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] (8-bit images) -> (B, 1, 128, 128) float32 in [-1, 1].

    ``cv2.imread(path, 0)`` of a PNG (libpng's fixed-point BT.601 grey), ``cv2.resize`` to 128x128
    (INTER_LINEAR, 8-bit result) and ``(x - 127.5) / 127.5``: the input of ``resnet_face18``
    in VQFR's ``calculate_cos_dist.py``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"grey128 takes (B, 3, H, W) RGB images, got {tuple(images.shape)}")
    rgb = to_8bit(images).to(torch.int64)
    grey = (9797 * rgb[:, 0] + 19234 * rgb[:, 1] + 3737 * rgb[:, 2]) >> 15
    small = resize_bilinear_8bit(grey[:, None].to(torch.float64), INPUT_SIZE)
    return ((small - 127.5) / 127.5).to(torch.float32)


def resnet_face_from_file(path: str | Path) -> ResNetFace:
    """``resnet_face18`` filled from a state dict file (``module.`` prefixes of DataParallel
    are removed); read with ``torch.load(weights_only=True)``."""
    from ..loaders.safe_pickle import load_matching_state

    model = load_matching_state(ResNetFace(), path, "resnet_face18 (use_se=False)", "arcface-pytorch's resnet18_110.pth")
    logger.info("resnet_face18: loaded %d tensors from %s", len(model.state_dict()), path)
    return model


class ResNetFace18Recognizer:
    """The Deg. recogniser of VQFR's protocol: :func:`grey128` then ``resnet_face18``.

    ``embed`` takes (B, 3, H, W) RGB in [0, 1] (whole aligned faces, as the test sets
    hold them) and returns (B, 512) float32 embeddings.
    """

    name = "resnet_face18"

    def __init__(self, network: ResNetFace, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(grey128(images.cpu()).to(self.device)).float().cpu()


def load_resnet_face18(models_dir: str | Path | None = None, device: str | torch.device = "cpu",
                       model: str | Path = RESNET_FACE18_FILE) -> ResNetFace18Recognizer:
    """The recogniser from ``<models>/metric_weights/resnet18_110.pth`` (or a path).

    Raises:
        MissingModelFileError: naming the file, the folder and where it is distributed.
    """
    path = find_model_file("metric_weights", model, models_dir,
                           what=f"ArcFace resnet_face18 for Deg. (--protocol vqfr; distributed with {RESNET_FACE18_SOURCE})")
    return ResNetFace18Recognizer(resnet_face_from_file(path), device)


__all__ = [
    "INPUT_SIZE",
    "IRBlock",
    "RESNET_FACE18_FILE",
    "ResNetFace",
    "ResNetFace18Recognizer",
    "ResNetFaceConfig",
    "grey128",
    "load_resnet_face18",
    "resize_bilinear_8bit",
    "resnet_face_from_file",
    "round_half_up",
    "to_8bit",
]
