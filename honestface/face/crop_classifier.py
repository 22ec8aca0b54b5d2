"""A small network that tells an FFHQ-aligned face crop from any other square image.

:func:`~honestface.face.input_kind.classify_input` decides most images by detecting the face
and comparing its landmarks with the FFHQ template. A heavily degraded aligned crop (a
16 px face brought back to 128 px, a blurred old scan) has no face dlib's detectors find,
and would pass through as "photo (no face found)". This classifier is the last look at such
a square image: it sees the image as a 32 x 32 grey thumbnail, where a degraded crop and a
sharp one look alike, and answers how likely the image is an aligned face crop (the face
where the FFHQ alignment puts it, at its scale) rather than a photo, a face framed
otherwise, background or a flat image.

It is trained by ``training/train_crop_classifier.py`` on CelebA aligned crops and LFW
photos of people that neither split of ``benchmarks/measure_photo_thresholds.py crops``
uses, degraded with the training degradation (:mod:`honestface.degradation`), not with the
benchmark's; the shipped weights (``honestface/weights/aligned-crop-classifier.safetensors``)
carry their config and training record in the file's metadata. The decision threshold is
:data:`honestface.face.input_kind.CROP_PROBABILITY`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation import to_grayscale
from ..errors import CheckpointError, ConfigError, ImageError

#: The shipped weights, in the package.
CROP_CLASSIFIER_FILE = "aligned-crop-classifier.safetensors"


@dataclass
class AlignedCropClassifierConfig:
    """Shape of :class:`AlignedCropClassifier`."""

    input_size: int = 32  # side of the grey thumbnail the network sees
    channels: tuple[int, ...] = (16, 32, 64)  # per stage; each stage halves the side
    hidden: int = 64  # width of the last hidden layer
    color: bool = False  # a colour thumbnail (3 channels) instead of a grey one

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.input_size % (2 ** len(self.channels)):
            raise ConfigError(f"crop classifier: input_size {self.input_size} is not divisible by "
                              f"2 ** {len(self.channels)} (one halving per stage)")


def crop_thumbnails(images: torch.Tensor, size: int, color: bool = False) -> torch.Tensor:
    """(B, 3, H, W) square images (float in [0, 1] or uint8) -> (B, C, size, size) grey
    (C = 1) or colour (C = 3) thumbnails, each standardised to zero mean and unit spread over
    all its values (contrast and exposure say nothing about framing; a flat image stays
    flat; colour keeps the balance between channels)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[-1] != images.shape[-2]:
        raise ImageError(f"the crop classifier takes square (B, 1|3, S, S) images, got {tuple(images.shape)}")
    work = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if color:
        work = work.expand(-1, 3, -1, -1)
    elif work.shape[1] == 3:
        work = to_grayscale(work)[:, :1]
    mode = "area" if work.shape[-1] >= size else "bilinear"
    work = F.interpolate(work, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    mean = work.mean(dim=(1, 2, 3), keepdim=True)
    spread = work.std(dim=(1, 2, 3), keepdim=True)
    return (work - mean) / (spread + 0.02)


class AlignedCropClassifier(nn.Module):
    """(B, 3, S, S) images -> (B,) logits of "an aligned face crop" (see the module doc)."""

    def __init__(self, config: AlignedCropClassifierConfig | None = None):
        super().__init__()
        self.config = config or AlignedCropClassifierConfig()
        layers: list[nn.Module] = []
        previous = 3 if self.config.color else 1
        for width in self.config.channels:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        side = self.config.input_size // 2 ** len(self.config.channels)
        # flattened, not pooled: where the face sits is the whole question
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(previous * side * side, self.config.hidden), nn.ReLU(),
                                  nn.Linear(self.config.hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crop_thumbnails(images, self.config.input_size, self.config.color)))[:, 0]

    @torch.no_grad()
    def probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) or (3, S, S) -> (B,) or () probabilities of an aligned crop."""
        single = images.dim() == 3
        batch = images[None] if single else images
        parameter = next(self.parameters())
        out = torch.sigmoid(self(batch.to(parameter.device)).float()).cpu()
        return out[0] if single else out


@dataclass
class LoadedCropClassifier:
    """The network with the training record stored with it."""

    model: AlignedCropClassifier
    record: dict

    def probability(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.probability(images)


def save_crop_classifier(path: str | Path, model: AlignedCropClassifier, record: dict | None = None) -> Path:
    """Write the network, its config and a training record (JSON) to one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {"format": "honestface-aligned-crop-classifier", "config": json.dumps(asdict(model.config)),
                "record": json.dumps(record or {})}
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path), metadata)
    return path


def load_crop_classifier(path: str | Path | None = None) -> LoadedCropClassifier:
    """Read a file written by :func:`save_crop_classifier` (default: the shipped weights)."""
    from safetensors import safe_open

    from ..paths import PACKAGED_WEIGHTS_DIR

    path = Path(path) if path is not None else PACKAGED_WEIGHTS_DIR / CROP_CLASSIFIER_FILE
    if not path.is_file():
        raise CheckpointError(str(path), f"the aligned-crop classifier's weights are missing: {path.name} belongs in "
                                         f"{path.parent} (it ships with the package; reinstall it, or retrain it with "
                                         "training/train_crop_classifier.py)")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(str(path), f"not a readable safetensors file ({error})") from error
    if metadata.get("format") != "honestface-aligned-crop-classifier":
        raise CheckpointError(str(path), "not an aligned-crop classifier (its metadata has no "
                                         "format=honestface-aligned-crop-classifier)")
    try:
        model = AlignedCropClassifier(AlignedCropClassifierConfig(**json.loads(metadata.get("config", "{}"))))
    except (TypeError, ValueError, ConfigError) as error:
        raise CheckpointError(str(path), f"its stored config is not a crop classifier's: {error}") from error
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(str(path), f"weights do not fit the stored config: {error}") from error
    model.eval().requires_grad_(False)
    return LoadedCropClassifier(model, json.loads(metadata.get("record", "{}")))


@lru_cache(maxsize=1)
def shipped_crop_classifier() -> LoadedCropClassifier:
    """The packaged classifier, read once per process."""
    return load_crop_classifier()
