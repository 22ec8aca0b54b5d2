"""face-alignment's 2D FAN (Bulat & Tzimiropoulos): 68 heatmaps and landmarks, offline.

The network and the landmark decoding are face-alignment's own (``face_alignment.models.FAN``,
``face_alignment.utils.get_preds_fromhm`` and ``flip``; face-alignment >= 1.5). What stays
here is what the package lacks:

- loading without a download: ``FaceAlignment`` fetches its weights on first use, so the
  network is built directly and filled from a file the user placed in
  ``<models>/face_alignment/`` or that face-alignment already downloaded into the torch hub
  cache (``<torch hub dir>/checkpoints/``). Accepted files: ``2DFAN4-11f355bf06.pth.tar``
  (what face-alignment 1.4+ downloads, a plain state dict) and ``2DFAN4-cd938726ad.zip``
  (the TorchScript archive of older releases; only its tensors are taken);
- a differentiable crop: face-alignment cuts the 256x256 input with integer indexing and
  ``cv2.resize``; here the same crop (centre = box centre moved up by 0.12 box heights,
  side = 200 * (box width + height) / 195 pixels) is one affine warp, so heatmaps of a
  fixed box can be back-propagated to the image; points are mapped back to the photo
  through the inverse of that warp (sub-pixel; face-alignment rounds them to integers);
- heatmaps in the photo frame (:func:`heatmaps_to_photo`), for the MFA masks.

FAN-4 stacks four hourglasses; each predicts 68 heatmaps at 64x64 from a 256x256 RGB
crop in [0, 1]; the last stack's heatmaps are used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, HonestFaceError, MissingModelFileError
from ..image_io import check_image_batch
from ..paths import find_model_file, model_folders
from .align import invert_affine, warp

FAN_FILES = ("2DFAN4-11f355bf06.pth.tar", "2DFAN4-cd938726ad.zip", "2DFAN4.pth.tar", "2DFAN4.pth", "2DFAN4.zip")
CROP_SIZE = 256
HEATMAP_SIZE = 64
REFERENCE_SCALE = 195.0
CENTER_Y_OFFSET = 0.12


def import_face_alignment():
    """face-alignment's network class, heatmap decoding and flip (a clear error without them)."""
    from .opencv import require_opencv

    require_opencv("face-alignment's FAN")
    try:
        from face_alignment import utils
        from face_alignment.models import FAN
    except ImportError as error:
        raise HonestFaceError(f"the 'fan' landmark backend needs face-alignment >= 1.5 "
                              f"(pip install 'face-alignment>=1.5'): {error}") from error
    return FAN, _heatmap_decoder(utils), utils.flip


def _heatmap_decoder(utils):
    """face-alignment's ``get_preds_fromhm`` as a function of (B, N, 64, 64) heatmaps ->
    (B, N, 2) points in heatmap units (pixel edges at integers).

    Its per-point loop is compiled by numba on first use, which takes longer than the loop
    itself (tens of seconds on a busy CPU, once per process); the same function's plain
    Python body (numba's ``py_func``) is run instead when available.
    """
    core = getattr(utils, "_get_preds_fromhm", None)
    python_body = getattr(core, "py_func", None)
    if python_body is None:
        return lambda heatmaps: utils.get_preds_fromhm(heatmaps)[0]

    def decode(heatmaps: np.ndarray) -> np.ndarray:
        batch, count, height, width = heatmaps.shape
        peaks = np.argmax(heatmaps.reshape(batch, count, height * width), axis=-1)
        return python_body(heatmaps, peaks, None, None)[0]

    return decode


def torch_hub_checkpoints() -> Path:
    """Where face-alignment stores the weights it downloads (``<torch hub dir>/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def read_fan(path: str | Path) -> nn.Module:
    """face-alignment's ``FAN`` with the weights of a file (state dict or TorchScript archive)."""
    FAN, _, _ = import_face_alignment()
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
    stacks = len({k.split(".")[0] for k in state if k[:1] == "l" and k[1:].split(".")[0].isdigit()})
    if "conv1.weight" not in state or not stacks:
        raise CheckpointError(path, "no FAN keys (conv1.weight, l0.weight, m0.*)", "a face-alignment 2DFAN4 file")
    network = FAN(stacks)
    try:
        network.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    except RuntimeError as error:  # missing, unexpected or mis-shaped keys
        raise CheckpointError(path, f"weights do not fit face-alignment's FAN({stacks}): {error}") from error
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
    """(2, 3) 64x64 heatmap pixel -> 256x256 crop pixel transform (``crop = 4 p + 1.5``, centres at integers)."""
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
    back with left/right points swapped (face-alignment's ``flip``), are averaged with the
    direct ones (face-alignment sums them; the average keeps the heatmaps' scale).
    """

    name = "fan"

    def __init__(self, network: nn.Module, detector=None, aligned_fallback: bool = False,
                 flip_input: bool = True, detect: bool = True) -> None:
        super().__init__()
        _, self._decode, self._flip = import_face_alignment()
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
        if self.flip_input:
            heatmaps = (heatmaps + self._flip(self.network(self._flip(crops))[-1], is_label=True)) / 2
        # face-alignment's decoding: argmax, a quarter pixel towards the higher neighbour,
        # in heatmap units with pixel edges at integers; 4 p - 0.5 is the crop pixel (centres at integers).
        heat_points = self._decode(heatmaps.detach().float().cpu().numpy())
        crop_points = torch.from_numpy(np.ascontiguousarray(heat_points)).to(images.device) * (CROP_SIZE / HEATMAP_SIZE) - 0.5
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
    """The FAN weight file: ``model`` if given (a path, or a name in the face_alignment
    folders or the torch hub cache), else the first of :data:`FAN_FILES` present there.

    The models folders come first; the torch hub cache is where face-alignment put the file
    if it ever downloaded it on this machine.
    """
    folders = model_folders("face_alignment", models_dir)
    if model is not None:
        return find_model_file("face_alignment", model, models_dir, extra=[torch_hub_checkpoints()],
                               what="FAN landmark weights")
    for name in FAN_FILES:
        for folder in [*folders, torch_hub_checkpoints()]:
            if (folder / name).is_file():
                return folder / name
    folder = folders[-1] if folders else Path("<models>/face_alignment")
    raise MissingModelFileError(FAN_FILES[0], folder, "FAN landmark weights",
                                f"Nothing is downloaded: get it once from face-alignment's release list and put it "
                                f"there, or in {torch_hub_checkpoints()} (also accepted: {', '.join(FAN_FILES[1:])}).")


def load_fan_landmarks(models_dir: str | Path | None = None, device: str = "cpu", model: str | Path | None = None,
                       detector=None, aligned_fallback: bool = False, flip_input: bool = True,
                       detect: bool = True) -> FanLandmarks:
    """FAN landmark backend from ``<models>/face_alignment/`` or the torch hub cache (never downloads)."""
    return FanLandmarks(read_fan(find_fan_file(models_dir, model)), detector=detector,
                        aligned_fallback=aligned_fallback, flip_input=flip_input, detect=detect).to(device)
