"""AdaFace IR-50 / IR-101 identity embeddings (differentiable), from the released ``.ckpt``.

The release files (e.g. ``adaface_ir50_ms1mv2.ckpt``, ``adaface_ir101_webface12m.ckpt``)
are PyTorch Lightning checkpoints: the backbone's tensors sit under ``state_dict`` with a
``model.`` prefix (the AdaFace head's ``head.kernel`` is ignored). Backbone layout (the
IR network of face.evoLVe / TFace):

    input_layer: Conv3x3(3, 64) - BN - PReLU
    body.N: res_layer = BN - Conv3x3 - BN - PReLU - Conv3x3(stride) - BN;
            shortcut_layer = Conv1x1(stride) - BN when channels change, else
            MaxPool2d(1, stride) (plain subsampling, no weights)
    output_layer: BN2d - Dropout - Flatten - Linear(512*7*7, 512) - BN1d(affine=False)

Stages of (3, 4, 14, 3) blocks for IR-50 and (3, 13, 30, 3) for IR-101; the first block of
every stage has stride 2. Input: 112x112 face in the ArcFace 5-point layout, **BGR**,
``(pixel / 255 - 0.5) / 0.5``. The network returns the L2-normalised embedding (and its norm).

Files live in ``<models>/insightface/models/adaface/``, next to the other face recognisers
ComfyUI users keep; they are read with
``torch.load(weights_only=True)`` or, when Lightning extras make it refuse, with the
restricted unpickler of :mod:`honestface.loaders.safe_pickle` (never runs pickled code).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..paths import find_model_file
from .arcface import FrozenRecognizer

ADAFACE_LAYERS = {"ir50": (3, 4, 14, 3), "ir101": (3, 13, 30, 3), "ir18": (2, 2, 2, 2), "ir34": (3, 4, 6, 3)}
DEFAULT_CKPT = "adaface/adaface_ir50_ms1mv2.ckpt"
STAGE_WIDTHS = (64, 128, 256, 512)


class IRBlock(nn.Module):
    """One AdaFace/TFace IR unit (``res_layer`` + ``shortcut_layer``)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                                nn.BatchNorm2d(channels))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(nn.Module):
    """(B, 3, 112, 112) BGR in [-1, 1] -> ((B, 512) unit embeddings, (B, 1) norms)."""

    def __init__(self, layers: Sequence[int] = ADAFACE_LAYERS["ir50"], widths: Sequence[int] = STAGE_WIDTHS,
                 num_features: int = 512, input_size: int = 112) -> None:
        super().__init__()
        self.layers_config = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.input_size = input_size
        self.input_layer = nn.Sequential(nn.Conv2d(3, self.widths[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(self.widths[0]), nn.PReLU(self.widths[0]))
        blocks, in_channels = [], self.widths[0]
        for count, width in zip(self.layers_config, self.widths):
            for index in range(count):
                blocks.append(IRBlock(in_channels, width, 2 if index == 0 else 1))
                in_channels = width
        self.body = nn.Sequential(*blocks)
        spatial = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(in_channels), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(in_channels * spatial * spatial, num_features),
                                          nn.BatchNorm1d(num_features, affine=False))

    @property
    def num_features(self) -> int:
        return self.output_layer[3].out_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.output_layer(self.body(self.input_layer(x)))
        norm = features.norm(p=2, dim=1, keepdim=True)
        return features / norm.clamp_min(1e-12), norm


def adaface_state_dict(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from a checkpoint's state dict (``model.`` prefix removed)."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not state:  # a bare backbone state dict
        state = {k: v for k, v in tensors.items() if k.split(".")[0] in ("input_layer", "body", "output_layer")}
    if "input_layer.0.weight" not in state or "output_layer.3.weight" not in state:
        raise CheckpointError(path, "no AdaFace backbone keys (model.input_layer.*, model.body.*, model.output_layer.*)",
                              "an AdaFace IR-50/IR-101 .ckpt")
    return state


def adaface_from_state_dict(state: dict[str, torch.Tensor], path: Path) -> AdaFaceIR:
    """Build the IR network the keys describe (depth and widths from the tensors) and load it."""
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    depths = [int(state[f"body.{i}.res_layer.4.weight"].shape[0]) for i in blocks]
    layers, widths = [], []
    for depth in depths:
        if not widths or depth != widths[-1]:
            widths.append(depth)
            layers.append(0)
        layers[-1] += 1
    if len(layers) != 4:
        raise CheckpointError(path, f"found {len(layers)} stages of widths {widths}", "4 stages (IR-50/IR-101)")
    linear = state["output_layer.3.weight"]
    spatial = int(round((linear.shape[1] / widths[-1]) ** 0.5))
    model = AdaFaceIR(layers, widths, num_features=int(linear.shape[0]), input_size=spatial * 16)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(path, f"keys do not match IR{layers}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(path, f"'{key}' has shape {tuple(value.shape)}, the network needs {tuple(expected[key].shape)}")
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return model.eval()


def read_adaface(path: str | Path) -> AdaFaceIR:
    """An :class:`AdaFaceIR` with the weights of an AdaFace ``.ckpt`` (or backbone ``.pth``)."""
    from ..loaders.safe_pickle import load_tensors

    path = Path(path)
    tensors = load_tensors(path, what="AdaFace weights", state_key="state_dict")
    return adaface_from_state_dict(adaface_state_dict(tensors, path), path)


class AdaFace(FrozenRecognizer):
    """Differentiable AdaFace identity backend: faces in [0, 1] -> (B, 512) unit embeddings.

    Args:
        network: the IR backbone.
        input_alignment: "ffhq" (default) or "arcface" (see :func:`recognition_crop`).
        normalize: return unit embeddings (the network's own output); False multiplies the
            norm back in (AdaFace uses the norm as a quality indicator).
    """

    name = "adaface"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bgr = self.crops(images).flip(1) * 2.0 - 1.0  # RGB [0, 1] -> BGR [-1, 1]
        features, norm = self.network(bgr)
        return features if self.normalize else features * norm


def load_adaface(models_dir: str | Path | None = None, device: str = "cpu", model: str | Path = DEFAULT_CKPT,
                 **kw) -> AdaFace:
    """AdaFace backend from ``<models>/insightface/models/<model>`` (or a path)."""
    path = find_model_file("face_recognition", model, models_dir, what="AdaFace weights")
    return AdaFace(read_adaface(path), **kw).to(device)
