"""AWing FAN: the 98-point (WFLW) landmark network behind the field's "LMD" (VQFR's ``metric_paper``).

VQFR's ``calculate_landmark_distance.py`` (followed by CodeFormer, DifFace, ...) finds 98
landmarks on the whole restored and ground-truth images with the Adaptive Wing Loss
network (Wang et al., ICCV 2019), four stacked hourglasses with CoordConv layers and a
boundary heatmap, weights ``alignment_WFLW_4HG.pth`` (``{"state_dict": ...}``). This module
builds the same network (same module names, so the distributed file loads unchanged) and
the same input and decoding:

- input: the 8-bit image resized to 256x256 with ``cv2.resize`` (INTER_LINEAR, see
  :func:`~honestface.face.resnet_face.resize_bilinear_8bit`), RGB in [0, 1];
- network (:class:`AWingFAN`): CoordConv 7x7/2 (3 + 3 coordinate channels -> 64), BN,
  ReLU, ConvBlock 64->128, avg-pool 2, ConvBlocks 128->128->256, then per stack ``i``:
  hourglass ``m{i}`` (depth 4; a 1x1 CoordConv in front that also gets the coordinates
  masked by the previous stack's boundary heatmap), ``top_m_{i}``, ``conv_last{i}``,
  ``bn_end{i}``, ReLU, ``l{i}`` -> 98 landmark heatmaps + 1 boundary heatmap at 64x64;
  between stacks ``previous + bl{i}(features) + al{i}(heatmaps)``;
- decoding (:func:`decode_awing_heatmaps`): the last stack's 98 heatmaps, arg-max, a
  quarter-pixel step towards the larger neighbour in x and y, plus 0.5, scaled by
  (W / 64, H / 64) of the original image.

CoordConv channels follow the original: the first coordinate channel varies along the
height, the second along the width, the third is their radius divided by its maximum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ImageError
from ..paths import find_model_file
from .resnet_face import resize_bilinear_8bit, to_8bit

logger = logging.getLogger("honestface.face.awing")

AWING_FILE = "alignment_WFLW_4HG.pth"
AWING_SOURCE = ("the metric_weights of TencentARC/VQFR's releases (the WFLW 4-hourglass model of "
                "protossw512/AdaptiveWingLoss)")
INPUT_SIZE = 256
HEATMAP_SIZE = 64
NUM_LANDMARKS = 98


@dataclass(frozen=True)
class AWingConfig:
    num_stacks: int = 4
    hourglass_depth: int = 4
    features: int = 256
    num_landmarks: int = NUM_LANDMARKS


def coordinate_channels(size: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 3, size, size): coordinates in [-1, 1] along H, along W, and their normalised radius."""
    ramp = torch.linspace(-1.0, 1.0, size, device=like.device, dtype=like.dtype)
    along_h = ramp.view(size, 1).expand(size, size)
    along_w = ramp.view(1, size).expand(size, size)
    radius = torch.sqrt(along_h**2 + along_w**2)
    return torch.stack([along_h, along_w, radius / radius.max()])[None]


class CoordConv(nn.Module):
    """Adds the coordinate channels (and, given a boundary heatmap, the coordinates where it
    exceeds 0.05) in front of a convolution ``conv``."""

    def __init__(self, size: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, with_boundary: bool = False) -> None:
        super().__init__()
        self.size = size
        self.with_boundary = with_boundary
        extra = 3 + (2 if with_boundary else 0)
        self.conv = nn.Conv2d(in_channels + extra, out_channels, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor, heatmaps: torch.Tensor | None = None) -> torch.Tensor:
        coords = coordinate_channels(self.size, x).expand(x.shape[0], -1, -1, -1)
        parts = [x, coords]
        if self.with_boundary:
            if heatmaps is None:
                raise ValueError("this CoordConv needs the previous stack's heatmaps")
            boundary = heatmaps[:, -1:].clamp(0.0, 1.0) > 0.05
            parts.append(torch.where(boundary, coords[:, :2], torch.zeros_like(coords[:, :2])))
        return self.conv(torch.cat(parts, dim=1))


class ConvBlock(nn.Module):
    """Pre-activation block whose three 3x3 convolutions (out/2, out/4, out/4 channels) are
    concatenated, plus the input (projected by BN-ReLU-conv1x1 when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, padding=1, bias=False)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(True),
                                            nn.Conv2d(in_channels, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], dim=1) + residual


class HourGlass(nn.Module):
    """CoordConv 1x1, then a recursive hourglass of depth ``depth``: at each level an upper
    branch ``b1_<level>`` and a lower one (avg-pool, ``b2_<level>``, the next level or
    ``b2_plus_1``, ``b3_<level>``, nearest 2x up-sampling), summed."""

    def __init__(self, depth: int, features: int, first: bool) -> None:
        super().__init__()
        self.depth = depth
        self.coordconv = CoordConv(HEATMAP_SIZE, features, features, 1, with_boundary=not first)
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self._modules[f"b1_{level}"](x)
        lower = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        lower = self._level(level - 1, lower) if level > 1 else self._modules["b2_plus_1"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper + F.interpolate(lower, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, heatmaps: torch.Tensor | None) -> torch.Tensor:
        return self._level(self.depth, self.coordconv(x, heatmaps))


class AWingFAN(nn.Module):
    """(B, 3, 256, 256) RGB in [0, 1] -> per stack (B, 99, 64, 64) heatmaps (98 landmarks, boundary)."""

    def __init__(self, config: AWingConfig = AWingConfig()) -> None:
        super().__init__()
        self.config = config
        width, heatmaps = config.features, config.num_landmarks + 1
        self.conv1 = CoordConv(INPUT_SIZE, 3, 64, 7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, width)
        for i in range(config.num_stacks):
            self.add_module(f"m{i}", HourGlass(config.hourglass_depth, width, first=i == 0))
            self.add_module(f"top_m_{i}", ConvBlock(width, width))
            self.add_module(f"conv_last{i}", nn.Conv2d(width, width, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(width))
            self.add_module(f"l{i}", nn.Conv2d(width, heatmaps, 1))
            if i < config.num_stacks - 1:
                self.add_module(f"bl{i}", nn.Conv2d(width, width, 1))
                self.add_module(f"al{i}", nn.Conv2d(heatmaps, width, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ImageError(f"the AWing FAN takes (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) images, got {tuple(x.shape)}")
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv4(self.conv3(F.avg_pool2d(self.conv2(x), 2, stride=2)))
        previous, heatmaps, outputs = x, None, []
        for i in range(self.config.num_stacks):
            features = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](previous, heatmaps))
            features = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](features)))
            heatmaps = self._modules[f"l{i}"](features)
            outputs.append(heatmaps)
            if i < self.config.num_stacks - 1:
                previous = previous + self._modules[f"bl{i}"](features) + self._modules[f"al{i}"](heatmaps)
        return outputs


def decode_awing_heatmaps(heatmaps: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) landmark heatmaps of one image -> (N, 2) points (x, y) in pixels of an image
    of ``image_size`` = (H, W), as VQFR's ``calculate_points`` computes them:

    the arg-max (flat index ``i``), moved a quarter pixel towards the larger neighbour in x
    (flat ``i +- 1``) and in y (flat ``i +- w``), plus 0.5, times (W / w, H / h). Two rules
    of the original are kept because they change numbers: when *any* point's arg-max lies in
    the last row, every point takes the last heatmap value as its lower neighbour in y;
    when any lies in the first row (or at flat index ``w``), every point takes the first value
    as its upper neighbour. A flat neighbour index outside the heatmap wraps around (the
    original wraps ``-1`` and fails at ``h * w``).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 3:
        raise ImageError(f"decode_awing_heatmaps takes (N, h, w) heatmaps of one image, got {heatmaps.shape}")
    count, height, width = heatmaps.shape
    flat = heatmaps.reshape(count, height * width)
    rows = np.arange(count)
    peak = np.argmax(flat, axis=1)
    points = np.stack([peak % width, peak // width], axis=1).astype(np.float64)
    size = height * width
    x_next, x_prev = flat[rows, (peak + 1) % size], flat[rows, (peak - 1) % size]
    y_next = flat[:, size - 1] if np.any(peak + width >= size) else flat[rows, peak + width]
    y_prev = flat[:, 0] if np.any(peak - width <= 0) else flat[rows, peak - width]
    points += 0.25 * np.sign(np.stack([x_next - x_prev, y_next - y_prev], axis=1))
    points += 0.5
    image_height, image_width = image_size
    return points * np.array([image_width / width, image_height / height])


def awing_input(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3, 256, 256) float32: 8-bit, ``cv2.resize``, / 255."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"AWing landmarks need (B, 3, H, W) RGB images, got {tuple(images.shape)}")
    return (resize_bilinear_8bit(to_8bit(images), INPUT_SIZE) / 255.0).to(torch.float32)


def awing_from_file(path: str | Path) -> AWingFAN:
    """The network filled from ``alignment_WFLW_4HG.pth`` (``{"state_dict": ...}`` or a bare
    state dict), read with ``torch.load(weights_only=True)``."""
    from ..loaders.safe_pickle import load_matching_state

    model = load_matching_state(AWingFAN(), path, "the AWing FAN (4 stacks, 98 points)", "alignment_WFLW_4HG.pth")
    logger.info("AWing FAN: loaded %d tensors from %s", len(model.state_dict()), path)
    return model


class AWingLandmarks:
    """98 landmarks of whole aligned faces, the way VQFR's LMD script finds them.

    ``landmarks`` takes (B, 3, H, W) RGB in [0, 1] and returns (B, 98, 2) float64 (x, y) in
    pixels of the input; each image is decoded on its own (the script's batch of one).
    """

    name = "awing"

    def __init__(self, network: AWingFAN, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 98, 64, 64): the last stack's landmark heatmaps (boundary left out)."""
        outputs = self.network(awing_input(images.cpu()).to(self.device))
        return outputs[-1][:, : self.network.config.num_landmarks].float().cpu()

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        maps = self.heatmaps(images).numpy()
        return torch.from_numpy(np.stack([decode_awing_heatmaps(m, size) for m in maps]))


def load_awing(models_dir: str | Path | None = None, device: str | torch.device = "cpu",
               model: str | Path = AWING_FILE) -> AWingLandmarks:
    """The landmark network from ``<models>/metric_weights/alignment_WFLW_4HG.pth`` (or a path).

    Raises:
        MissingModelFileError: naming the file, the folder and where it is distributed.
    """
    path = find_model_file("metric_weights", model, models_dir,
                           what=f"AWing landmarks for LMD (--protocol vqfr; distributed with {AWING_SOURCE})")
    return AWingLandmarks(awing_from_file(path), device)


__all__ = [
    "AWING_FILE",
    "AWingConfig",
    "AWingFAN",
    "AWingLandmarks",
    "ConvBlock",
    "CoordConv",
    "HourGlass",
    "awing_from_file",
    "awing_input",
    "coordinate_channels",
    "decode_awing_heatmaps",
    "load_awing",
]
