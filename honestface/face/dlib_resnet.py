"""dlib's 128-d face descriptor network in PyTorch (differentiable), read from dlib's own file.

``dlib_face_recognition_resnet_model_v1.dat`` (shipped by the ``face_recognition_models``
package) holds a 29-convolution ResNet trained with a metric loss: two faces are the same
person when their descriptors are closer than 0.6 (Euclidean). dlib runs it in C++ only;
this port computes the same function in PyTorch so the descriptor can drive an identity
loss (gradients reach the image, never the frozen network).

The network (dlib's ``dnn_face_recognition_ex.cpp``), on a 150x150 RGB chip:

    conv 7x7/2 (32, no padding) -> affine -> relu -> max pool 3x3/2
    3 x residual(32) | down(64) + 3 x residual(64) | down(128) + 2 x residual(128)
    | down(256) + 2 x residual(256) | down(256) -> mean over space -> fc 256->128 (no bias)

A residual block is conv3x3 -> affine -> relu -> conv3x3 -> affine, added to its input,
then relu. A *down* block's first convolution has stride 2 and no padding and its input
is average-pooled 2x2/2; where the two differ in size (channels, or 3x3 against 4x4 deep
in the net) dlib adds them as if the smaller were padded with zeros at the end, and so
does :func:`add_zero_padded`. ``affine`` is dlib's frozen batch norm: ``x * gamma + beta``
per channel. The input layer subtracts a per-channel mean (stored in the file) from
0..255 pixel values and divides by 256.

File format: dlib's serialisation writes each layer after the layers below it, as a
version string (``con_4``, ``affine_``, ``fc_2``, ...) and its fields; a parameter tensor
is a header of dlib-encoded integers (version 2, num_samples, k, nr, nc) followed by
little-endian float32 values. The reader walks the layer records in file order and
checks every kind, kernel, stride, padding and shape against the architecture above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, HonestFaceError
from ..image_io import check_image_batch
from .align import warp
from .arcface import FrozenRecognizer

#: Side of the chips the network was trained on.
CHIP_SIZE = 150
#: dlib's default chip padding for the descriptor (``compute_face_descriptor``).
CHIP_PADDING = 0.25

#: Where dlib's 150x150 descriptor chip (``get_face_chip_details(shape, 150, 0.25)``) sits
#: in an FFHQ-aligned crop: centre x, centre y and side, as fractions of the crop side
#: (continuous coordinates, 0 = left/top edge of the crop). The mean over 300 aligned
#: CelebA faces (HOG detection, 68 landmarks); the chip's rotation averages 0.1 degree
#: (spread 2 degrees), so it is taken as axis-aligned.
FFHQ_DLIB_CHIP = (0.505, 0.607, 0.684)

# (channels, blocks, first block downsamples) per stage after the stem
_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: (B, Ca, Ha, Wa) + (B, Cb, Hb, Wb) -> (B, max C, max H, max W),
    the smaller tensor padded with zeros at the end of each dimension."""
    shape = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        if list(t.shape) == shape:
            return t
        # F.pad takes (W_before, W_after, H_before, H_after, C_before, C_after)
        return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

    return grow(a) + grow(b)


class ChannelAffine(nn.Module):
    """dlib's ``affine`` layer: (B, C, H, W) * gamma[c] + beta[c]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class DlibResidualBlock(nn.Module):
    """conv -> affine -> relu -> conv -> affine, plus the (average-pooled) input, -> relu."""

    def __init__(self, in_channels: int, channels: int, downsample: bool) -> None:
        super().__init__()
        stride, padding = (2, 0) if downsample else (1, 1)
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding)
        self.affine1 = ChannelAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = ChannelAffine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_zero_padded(y, skip))


class DlibFaceResNet(nn.Module):
    """(B, 3, 150, 150) chips in [0, 1] -> (B, 128) dlib face descriptors (not normalised).

    Args:
        pixel_mean: the input layer's per-channel (R, G, B) mean on the 0..255 scale.
    """

    input_size = CHIP_SIZE
    num_features = 128

    def __init__(self, pixel_mean: tuple[float, float, float] = (122.782, 117.001, 104.298)) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.affine = ChannelAffine(32)
        blocks = []
        in_channels = 32
        for channels, count, downsample in _STAGES:
            for index in range(count):
                blocks.append(DlibResidualBlock(in_channels, channels, downsample and index == 0))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, self.num_features, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips * 255.0 - self.pixel_mean.to(chips.dtype)) / 256.0
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- file reading


@dataclass
class _Layer:
    kind: str  # "input", "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"
    params: np.ndarray | None = None
    fields: dict = field(default_factory=dict)


_NAMES = rb"(?:input_rgb_image_sized|con_\d|affine_\d?|bn_con\d|relu_\d?|max_pool_\d|avg_pool_\d|add_prev_|fc_\d|loss_metric_\d)"
# a serialised string: its length as a one-byte dlib integer, then the characters
_VERSION = re.compile(rb"\x01([\x02-\x20])(?=" + _NAMES + rb")")
_NAME = re.compile(_NAMES)


class _DlibStream:
    """Primitive values of dlib's serialisation (``dlib/serialize.h``, ``dlib/dnn/tensor.h``)."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"not dlib's face descriptor network: {problem} (byte {self.pos})")

    def integer(self) -> int:
        # one control byte (bit 7: negative, low bits: byte count) then little-endian bytes
        if self.pos >= len(self.data):
            raise self.fail("file ends early")
        control = self.data[self.pos]
        size = control & 0x0F
        if size > 8:
            raise self.fail(f"bad integer control byte {control:#x}")
        raw = self.data[self.pos + 1:self.pos + 1 + size]
        self.pos += 1 + size
        value = int.from_bytes(raw, "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise self.fail(f"tensor of {count} values runs past the end of the file")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).astype(np.float32)
        self.pos = end
        return values

    def next_layer(self) -> tuple[str, str] | None:
        """Skip to the next layer's version string -> (kind, version), or None at the end."""
        while (match := _VERSION.search(self.data, self.pos)) is not None:
            length = match.group(1)[0]
            name = self.data[match.end():match.end() + length]
            if _NAME.fullmatch(name):
                break
            self.pos = match.start() + 1
        else:
            return None
        self.pos = match.end() + length
        version = name.decode()
        kind = re.sub(r"_\d*$", "", version) if version not in ("add_prev_", "input_rgb_image_sized") else version
        kind = {"add_prev_": "add_prev", "input_rgb_image_sized": "input", "bn_con": "affine"}.get(kind, kind)
        return kind, version


def read_dlib_layers(path: str | Path) -> list[_Layer]:
    """The layers of a dlib network file in file order (input side first)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(path, f"cannot read ({error})") from error
    stream = _DlibStream(data, path)
    layers: list[_Layer] = []
    while (found := stream.next_layer()) is not None:
        kind, version = found
        if kind == "loss_metric":
            continue
        layer = _Layer(kind)
        if kind == "input":
            layer.fields["mean"] = tuple(stream.real() for _ in range(3))
            layer.fields["size"] = (stream.integer(), stream.integer())
        elif kind == "con":
            layer.params = stream.tensor()
            names = ("filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
            layer.fields.update({name: stream.integer() for name in names})
        elif kind == "affine":
            if version.startswith("bn_"):
                raise stream.fail("batch-norm layers in training mode are not supported; save the net with affine layers")
            layer.params = stream.tensor()
        elif kind in ("max_pool", "avg_pool"):
            names = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
            layer.fields.update({name: stream.integer() for name in names})
        elif kind == "fc":
            layer.fields["outputs"], layer.fields["inputs"] = stream.integer(), stream.integer()
            layer.params = stream.tensor()
        layers.append(layer)
    return layers


def _expected_layers(model: DlibFaceResNet) -> list[tuple]:
    """(kind, module, expected fields) in dlib's file order."""
    expected: list[tuple] = [("input", None, {"size": (CHIP_SIZE, CHIP_SIZE)}),
                             ("con", model.conv, {"nr": 7, "stride_y": 2, "padding_y": 0}),
                             ("affine", model.affine, {}), ("relu", None, {}),
                             ("max_pool", None, {"nr": 3, "stride_y": 2, "padding_y": 0})]
    for block in model.blocks:
        stride, padding = (2, 0) if block.downsample else (1, 1)
        expected += [("con", block.conv1, {"nr": 3, "stride_y": stride, "padding_y": padding}),
                     ("affine", block.affine1, {}), ("relu", None, {}),
                     ("con", block.conv2, {"nr": 3, "stride_y": 1, "padding_y": 1}),
                     ("affine", block.affine2, {})]
        if block.downsample:
            expected.append(("avg_pool", None, {"nr": 2, "stride_y": 2, "padding_y": 0}))
        expected += [("add_prev", None, {}), ("relu", None, {})]
    expected += [("avg_pool", None, {"nr": 0}), ("fc", model.fc, {"outputs": 128, "inputs": 256})]
    return expected


def load_dlib_face_resnet(path: str | Path) -> DlibFaceResNet:
    """Build :class:`DlibFaceResNet` with the weights of dlib's ``.dat`` file (checked layer by layer)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    layers = read_dlib_layers(path)
    model = DlibFaceResNet()
    expected = _expected_layers(model)
    if len(layers) != len(expected):
        raise CheckpointError(path, f"not dlib's face descriptor network: {len(layers)} layers, "
                                    f"expected {len(expected)}")
    with torch.no_grad():
        for index, (layer, (kind, module, fields)) in enumerate(zip(layers, expected)):
            where = f"layer {index} ({kind})"
            if layer.kind != kind:
                raise CheckpointError(path, f"not dlib's face descriptor network: {where} is '{layer.kind}'")
            for name, value in fields.items():
                if layer.fields.get(name) != value:
                    raise CheckpointError(path, f"{where}: {name} is {layer.fields.get(name)}, expected {value}")
            if kind == "input":
                model.pixel_mean.copy_(torch.tensor(layer.fields["mean"]).view(1, 3, 1, 1))
            elif kind == "con":
                weight, bias = module.weight, module.bias
                if layer.fields["filters"] != weight.shape[0] or layer.params.size != weight.numel() + bias.numel():
                    raise CheckpointError(path, f"{where}: {layer.params.size} values for "
                                                f"{layer.fields['filters']} filters, expected {tuple(weight.shape)}")
                weight.copy_(torch.from_numpy(layer.params[:weight.numel()]).view_as(weight))
                bias.copy_(torch.from_numpy(layer.params[weight.numel():]))
            elif kind == "affine":
                channels = module.weight.numel()
                if layer.params.size != 2 * channels:
                    raise CheckpointError(path, f"{where}: {layer.params.size} values, expected {2 * channels}")
                module.weight.copy_(torch.from_numpy(layer.params[:channels]))
                module.bias.copy_(torch.from_numpy(layer.params[channels:]))
            elif kind == "fc":
                if layer.params.size != module.weight.numel():  # fc_no_bias: weights only
                    raise CheckpointError(path, f"{where}: {layer.params.size} values, expected "
                                                f"{module.weight.numel()} (no bias)")
                # dlib stores (inputs, outputs) row-major and computes x @ W
                module.weight.copy_(torch.from_numpy(layer.params.reshape(256, 128).T.copy()))
    return model.eval()


# --------------------------------------------------------------------------- chips


def ffhq_to_dlib_chip_affine(crop_size: int, size: int = CHIP_SIZE) -> torch.Tensor:
    """(2, 3) pixel transform from an FFHQ-aligned ``crop_size`` crop to dlib's descriptor chip.

    dlib maps chip pixel 0 to the chip rectangle's left edge and pixel ``size - 1`` to its
    right edge (``get_mapping_to_chip``), in its pixel-index coordinates.
    """
    centre_x, centre_y, side = FFHQ_DLIB_CHIP
    left = (centre_x - side / 2) * crop_size - 0.5  # continuous -> pixel-index coordinates
    top = (centre_y - side / 2) * crop_size - 0.5
    scale = (size - 1) / (side * crop_size)
    return torch.tensor([[scale, 0.0, -left * scale], [0.0, scale, -top * scale]], dtype=torch.float32)


def dlib_chips(images: torch.Tensor, input_alignment: str = "ffhq") -> torch.Tensor:
    """Faces in [0, 1] -> (B, 3, 150, 150) descriptor chips (differentiable).

    Args:
        input_alignment: "ffhq" (FFHQ-aligned square crops of any size) or "dlib"
            (chips already cut by dlib's ``get_face_chip``; only resized).
    """
    images = check_image_batch(images, "faces")
    if input_alignment == "dlib":
        if images.shape[-2:] == (CHIP_SIZE, CHIP_SIZE):
            return images
        return F.interpolate(images, size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False)
    if input_alignment != "ffhq":
        raise HonestFaceError(f"input_alignment must be 'ffhq' or 'dlib', got '{input_alignment}'")
    if images.shape[-1] != images.shape[-2]:
        raise HonestFaceError(f"FFHQ-aligned faces are square, got {tuple(images.shape[-2:])}")
    matrix = ffhq_to_dlib_chip_affine(images.shape[-1]).to(images.device, images.dtype)
    return warp(images, matrix.expand(images.shape[0], 2, 3), (CHIP_SIZE, CHIP_SIZE), padding_mode="zeros")


# --------------------------------------------------------------------------- backend


class DlibIdentityTorch(FrozenRecognizer):
    """dlib's 128-d face descriptor in PyTorch: aligned faces in [0, 1] -> (B, 128).

    The same network and weights as the ``dlib`` backend, run in PyTorch: batched,
    on any device, and differentiable with respect to the images (for the identity loss).
    FFHQ-aligned crops are cut to dlib's chip with one fixed transform instead of dlib's
    per-image landmark alignment; on aligned CelebA faces the two descriptors differ by
    0.14 on average (Euclidean; 0.6 separates people).

    Args:
        network: :class:`DlibFaceResNet` with dlib's weights.
        input_alignment: "ffhq" (default) or "dlib"; see :func:`dlib_chips`.
        normalize: L2-normalise the descriptors (dlib does not; its threshold is Euclidean).
    """

    name = "dlib-torch"

    def __init__(self, network: DlibFaceResNet, input_alignment: str = "ffhq", normalize: bool = False) -> None:
        super().__init__(network, input_alignment=input_alignment, normalize=normalize)

    def crops(self, images: torch.Tensor) -> torch.Tensor:
        return dlib_chips(images, self.input_alignment).to(self.network.conv.weight.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        descriptors = self.network(self.crops(images))
        return F.normalize(descriptors, dim=-1) if self.normalize else descriptors


def load_dlib_identity_torch(models_dir: str | Path | None = None, device: str = "cpu",
                             **kw) -> DlibIdentityTorch:
    """dlib's descriptor network from ``dlib_face_recognition_resnet_model_v1.dat`` (the
    ``face_recognition_models`` package, or ``<models>/dlib/``)."""
    from .dlib_backend import DESCRIPTOR_FILE, dlib_model_file

    network = load_dlib_face_resnet(dlib_model_file(DESCRIPTOR_FILE, models_dir))
    return DlibIdentityTorch(network, **kw).to(device)
