"""face-alignment's 2D FAN (Bulat & Tzimiropoulos): 68 heatmaps and landmarks, offline.

The ``face_alignment`` package downloads its weights on first use; HonestFace never does.
The network is built here (module names as in the package, so its files load directly)
and filled from a file the user places in ``<models>/face_alignment/``:

- ``2DFAN4-11f355bf06.pth.tar`` -- what face_alignment 1.4+/1.5 downloads: a plain state dict;
- ``2DFAN4-cd938726ad.zip`` -- the TorchScript archive older releases used (only its
  tensors are taken, through ``state_dict()``).

FAN-4 stacks four hourglasses; each predicts 68 heatmaps at 64x64 from a 256x256 RGB
crop in [0, 1]; the last stack's heatmaps are used. The crop is face_alignment's: centre
= box centre moved up by 0.12 box heights, side = 200 * (box width + height) / 195 pixels.
Points are the heatmap maxima refined by a quarter pixel towards the higher neighbour,
mapped back to the photo (``image = centre + (4 p - 126) * side / 256``).

The crop is taken with a differentiable warp, so heatmaps and points of a fixed box can
be back-propagated to the image.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, MissingModelFileError
from ..image_io import check_image_batch
from ..paths import find_model_file, model_folders
from .align import invert_affine, warp
from .heatmaps import heatmaps_to_points

FAN_FILES = ("2DFAN4-11f355bf06.pth.tar", "2DFAN4-cd938726ad.zip", "2DFAN4.pth.tar", "2DFAN4.pth", "2DFAN4.zip")
CROP_SIZE = 256
HEATMAP_SIZE = 64
REFERENCE_SCALE = 195.0
CENTER_Y_OFFSET = 0.12

#: Index of each point's mirror image in the 68-point iBUG scheme (left <-> right).
MIRROR_68 = (
    list(range(16, -1, -1))                      # jaw 0-16
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows 17-21 <-> 22-26
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]    # nose bridge, nostrils
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]     # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]           # inner lips
)


class FanConvBlock(nn.Module):
    """Pre-activation block whose three convolutions (C/2, C/4, C/4) are concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, half, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, 1, 1, bias=False)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(True),
                                            nn.Conv2d(in_channels, out_channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat([out1, out2, out3], dim=1) + shortcut


class FanHourglass(nn.Module):
    """Recursive hourglass of ``depth`` levels; modules b1_L, b2_L, b3_L and b2_plus_1."""

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", FanConvBlock(channels, channels))
            self.add_module(f"b2_{level}", FanConvBlock(channels, channels))
            if level == 1:
                self.add_module("b2_plus_1", FanConvBlock(channels, channels))
            self.add_module(f"b3_{level}", FanConvBlock(channels, channels))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self._modules[f"b1_{level}"](x)
        lower = self._modules[f"b2_{level}"](F.avg_pool2d(x, 2, stride=2))
        lower = self._level(level - 1, lower) if level > 1 else self._modules["b2_plus_1"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper + F.interpolate(lower, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FAN(nn.Module):
    """(B, 3, 256, 256) RGB in [0, 1] -> list of (B, 68, 64, 64) heatmaps, one per stack."""

    def __init__(self, num_modules: int = 4, hourglass_depth: int = 4, channels: int = 256,
                 num_landmarks: int = 68) -> None:
        super().__init__()
        self.num_modules = num_modules
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = FanConvBlock(64, 128)
        self.conv3 = FanConvBlock(128, 128)
        self.conv4 = FanConvBlock(128, channels)
        for i in range(num_modules):
            self.add_module(f"m{i}", FanHourglass(hourglass_depth, channels))
            self.add_module(f"top_m_{i}", FanConvBlock(channels, channels))
            self.add_module(f"conv_last{i}", nn.Conv2d(channels, channels, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(channels))
            self.add_module(f"l{i}", nn.Conv2d(channels, num_landmarks, 1))
            if i < num_modules - 1:
                self.add_module(f"bl{i}", nn.Conv2d(channels, channels, 1))
                self.add_module(f"al{i}", nn.Conv2d(num_landmarks, channels, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.conv4(self.conv3(F.avg_pool2d(self.conv2(x), 2, stride=2)))
        previous, outputs = x, []
        for i in range(self.num_modules):
            features = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](previous))
            features = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](features)))
            heatmaps = self._modules[f"l{i}"](features)
            outputs.append(heatmaps)
            if i < self.num_modules - 1:
                previous = previous + self._modules[f"bl{i}"](features) + self._modules[f"al{i}"](heatmaps)
        return outputs


def _fan_config(state: dict[str, torch.Tensor], path: Path) -> dict:
    if "conv1.weight" not in state or "l0.weight" not in state:
        raise CheckpointError(path, "no FAN keys (conv1.weight, l0.weight, m0.*)", "a face-alignment 2DFAN4 file")
    num_modules = len({k.split(".")[0] for k in state if k.startswith("l") and k[1:].split(".")[0].isdigit()})
    levels = {int(k.split(".")[1].split("_")[1]) for k in state if k.startswith("m0.b1_")}
    return {"num_modules": num_modules, "hourglass_depth": max(levels) if levels else 4,
            "channels": int(state["conv4.conv1.weight"].shape[0] * 2), "num_landmarks": int(state["l0.weight"].shape[0])}


def read_fan(path: str | Path) -> FAN:
    """A :class:`FAN` with the weights of a face-alignment file (state dict or TorchScript)."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(path.name, path.parent, "FAN landmark weights")
    if path.suffix == ".zip":
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise CheckpointError(path, f"cannot read as a TorchScript archive ({error})", "2DFAN4-cd938726ad.zip") from error
        state = {k: v.detach() for k, v in scripted.state_dict().items()}
    else:
        from ..loaders.safe_pickle import load_tensors
        state = load_tensors(path, what="FAN landmark weights", state_key="state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    network = FAN(**_fan_config(state, path))
    expected = network.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(path, f"keys do not match FAN: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(path, f"'{key}' has shape {tuple(value.shape)}, FAN needs {tuple(expected[key].shape)}")
    network.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, strict=False)
    return network.eval()


def fan_crop_affine(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) face boxes (x0, y0, x1, y1) -> (B, 2, 3) photo -> 256x256 FAN-crop pixel transforms."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - (y1 - y0) * CENTER_Y_OFFSET
    side = 200.0 * ((x1 - x0) + (y1 - y0)) / REFERENCE_SCALE
    s = CROP_SIZE / side
    zero = torch.zeros_like(s)
    half = (CROP_SIZE - 1) / 2
    return torch.stack([torch.stack([s, zero, half - s * cx], -1), torch.stack([zero, s, half - s * cy], -1)], dim=1)


def heatmap_to_crop_affine(device=None, dtype=torch.float32) -> torch.Tensor:
    """(2, 3) 64x64 heatmap pixel -> 256x256 crop pixel transform (``crop = 4 p + 1.5``)."""
    factor = CROP_SIZE / HEATMAP_SIZE
    shift = (factor - 1) / 2
    return torch.tensor([[factor, 0.0, shift], [0.0, factor, shift]], device=device, dtype=dtype)


class FanLandmarks(nn.Module):
    """LandmarkBackend with FAN: 68 points (B, 68, 2) and heatmaps, from face boxes.

    Boxes come from ``detector`` (dlib HOG by default; largest face per image); images
    without a detected face get NaN points and zero heatmaps, unless ``aligned_fallback``
    is on, which uses the box where a face sits in an FFHQ-aligned crop. ``detect=False``
    uses that aligned face box for every image and runs no detector: for FFHQ-style
    aligned crops (training), where the face's place is known and a detector on degraded
    faces only adds misses. With
    ``flip_input`` (face-alignment's default) the heatmaps of the mirrored crop, mirrored
    back with left/right points swapped, are averaged with the direct ones.
    """

    name = "fan"

    def __init__(self, network: FAN, detector=None, aligned_fallback: bool = False,
                 flip_input: bool = True, detect: bool = True) -> None:
        super().__init__()
        self.network = network.eval()
        self.requires_grad_(False)
        self._detector = detector
        self.aligned_fallback = aligned_fallback
        self.flip_input = flip_input
        self.detect = detect

    def train(self, mode: bool = True) -> FanLandmarks:
        return super().train(False)

    @property
    def detector(self):
        if self._detector is None:
            from .dlib_backend import DlibFaceDetector
            self._detector = DlibFaceDetector(with_landmarks=False)
        return self._detector

    def face_boxes(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 4) largest face box per image, NaN where none."""
        from .dlib_backend import ALIGNED_FACE_BOX

        boxes = []
        for image in images:
            faces = self.detector.detect(image.detach()) if self.detect else []
            if faces:
                boxes.append(list(faces[0].box))
            elif self.aligned_fallback or not self.detect:
                height, width = image.shape[-2:]
                x0, y0, x1, y1 = ALIGNED_FACE_BOX
                boxes.append([x0 * width, y0 * height, x1 * width, y1 * height])
            else:
                boxes.append([float("nan")] * 4)
        return torch.tensor(boxes, dtype=torch.float32, device=images.device)

    def predict(self, images: torch.Tensor, boxes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run FAN on the face in each image.

        Args:
            images: (B, 3, H, W) in [0, 1].
            boxes: (B, 4) face boxes; detected when None. NaN boxes mean "no face".

        Returns:
            ``(points, heatmaps, affine)``: (B, 68, 2) photo pixels, (B, 68, 64, 64) raw
            heatmaps of the last stack, and (B, 2, 3) photo -> 256 crop transforms.
        """
        images = check_image_batch(images, "images")
        if boxes is None:
            boxes = self.face_boxes(images)
        boxes = boxes.to(images.device, torch.float32)
        valid = torch.isfinite(boxes).all(dim=-1)
        safe_boxes = torch.where(valid[:, None], boxes, torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device))
        affine = fan_crop_affine(safe_boxes)
        crops = warp(images, affine, (CROP_SIZE, CROP_SIZE), padding_mode="zeros")
        heatmaps = self.network(crops)[-1]
        if self.flip_input and heatmaps.shape[1] == len(MIRROR_68):
            mirrored = self.network(crops.flip(-1))[-1].flip(-1)[:, list(MIRROR_68)]
            heatmaps = (heatmaps + mirrored) / 2
        heat_points = heatmaps_to_points(heatmaps.detach())
        crop_points = heat_points * (CROP_SIZE / HEATMAP_SIZE) + ((CROP_SIZE / HEATMAP_SIZE) - 1) / 2
        inverse = invert_affine(affine)
        points = crop_points @ inverse[:, :, :2].transpose(1, 2) + inverse[:, None, :, 2]
        nan = torch.tensor(float("nan"), device=points.device)
        points = torch.where(valid[:, None, None], points, nan)
        heatmaps = heatmaps * valid[:, None, None, None].to(heatmaps.dtype)
        return points, heatmaps, affine

    def landmarks_in_boxes(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(3, H, W) photo and (K, 4) face boxes -> (K, 68, 2) points, one face per box."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return torch.zeros(0, 68, 2)
        images = check_image_batch(image, "image")[:1].expand(len(boxes), -1, -1, -1)
        return self.predict(images, boxes)[0]

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 68, 2) photo pixels (x, y); NaN where no face."""
        return self.predict(images)[0]

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 68, H, W): FAN's heatmaps warped back into the photo frame."""
        images = check_image_batch(images, "images")
        _, heatmaps, affine = self.predict(images)
        return heatmaps_to_photo(heatmaps, affine, images.shape[-2], images.shape[-1])


def heatmaps_to_photo(heatmaps: torch.Tensor, affine: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N, 64, 64) FAN heatmaps -> (B, N, height, width) in the photo frame (negatives clipped).

    ``affine`` is the (B, 2, 3) photo -> 256 crop transform the heatmaps were predicted in.
    """
    # warp takes the source -> target map: heatmap pixel -> crop pixel -> photo pixel.
    last_row = torch.tensor([[0.0, 0.0, 1.0]], device=affine.device, dtype=affine.dtype)
    heatmap_to_crop = torch.cat([heatmap_to_crop_affine(affine.device, affine.dtype), last_row], dim=0)
    photo_to_crop = torch.cat([affine, last_row.expand(len(affine), 1, 3)], dim=1)
    heatmap_to_photo = (torch.linalg.inv(photo_to_crop) @ heatmap_to_crop)[:, :2]
    return warp(heatmaps, heatmap_to_photo, (height, width), padding_mode="zeros").clamp_min(0)


def find_fan_file(models_dir: str | Path | None = None, model: str | Path | None = None) -> Path:
    """The FAN weight file: ``model`` if given, else the first of :data:`FAN_FILES` present."""
    if model is not None:
        return find_model_file("face_alignment", model, models_dir, what="FAN landmark weights")
    for name in FAN_FILES:
        for folder in model_folders("face_alignment", models_dir):
            if (folder / name).is_file():
                return folder / name
    folders = model_folders("face_alignment", models_dir)
    folder = folders[-1] if folders else Path("<models>/face_alignment")
    raise MissingModelFileError(FAN_FILES[0], folder, "FAN landmark weights",
                                f"Download it once from face-alignment's release list (also accepted: {', '.join(FAN_FILES[1:])}).")


def load_fan_landmarks(models_dir: str | Path | None = None, device: str = "cpu", model: str | Path | None = None,
                       detector=None, aligned_fallback: bool = False, flip_input: bool = True,
                       detect: bool = True) -> FanLandmarks:
    """FAN landmark backend from ``<models>/face_alignment/`` (never downloads)."""
    return FanLandmarks(read_fan(find_fan_file(models_dir, model)), detector=detector,
                        aligned_fallback=aligned_fallback, flip_input=flip_input, detect=detect).to(device)
