"""ArcFace in PyTorch (differentiable, for the identity loss), loaded from insightface's
ONNX files or arcface_torch ``.pth`` state dicts; the crop every recogniser shares.

insightface has no PyTorch inference path: it runs these files with ONNX Runtime (see
:mod:`~honestface.face.insightface_models`, the ``arcface-onnx`` backend), which gives no
gradients. The same network is therefore rebuilt here (:class:`~honestface.face.iresnet.IResNet`)
and filled from the ONNX file; the tests check both give the same embeddings.

Files: ``<models>/insightface/models/<pack>/w600k_r50.onnx`` (buffalo_l, IResNet-50) or
``.../antelopev2/glintr100.onnx`` (IResNet-100), where ComfyUI users keep them; arcface_torch
``.pth`` state dicts next to them (e.g. ``<models>/insightface/models/arcface_torch/``).

Input convention (insightface's ``ArcFaceONNX``): a 112x112 face aligned to the ArcFace
5-point template, RGB, ``(pixel - 127.5) / 127.5`` -- i.e. ``2 x - 1`` for x in [0, 1].
HonestFace passes FFHQ-aligned crops; :func:`recognition_crop` maps them to the ArcFace
layout with one fixed similarity transform (differentiable).

ONNX -> PyTorch: insightface's files were exported from arcface_torch with PyTorch's
ONNX exporter, which folds every BatchNorm that follows a convolution into the
convolution's weights and bias and keeps the others (each block's leading BN, the final
``bn2`` and ``features``). Initializer names are exporter-generated numbers, so the
mapping follows the graph structure (the order of Conv / PRelu / BatchNormalization /
Gemm nodes) and checks every shape. In ``w600k_r50.onnx`` the convolution weights and
biases are numbered initializers, the kept BatchNorms carry arcface_torch names
(``layer1.0.bn1.weight``, ``bn2.*``, ``features.*``), ``fc.*`` too, PReLU slopes are
numbered (C, 1, 1) tensors, and each block's shortcut convolution follows its conv2; a folded BN becomes an identity BN carrying the conv
bias (mean 0, var 1 - eps, weight 1), which computes exactly the same function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, HonestFaceError, ImageError
from ..image_io import check_image_batch
from ..paths import find_model_file
from .align import warp
from .iresnet import BN_EPS, IResNet, layers_from_state_dict

#: insightface's ArcFace alignment template: 5 points (x, y) in a 112x112 crop.
ARCFACE_FIVE_POINTS = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                       (41.5493, 92.3655), (70.7299, 92.2041))

#: Mean positions of the same 5 points in FFHQ-aligned crops, as fractions of the crop
#: size (measured with dlib on aligned CelebA faces; made left/right symmetric).
FFHQ_FIVE_POINTS = ((0.377, 0.474), (0.623, 0.474), (0.500, 0.618), (0.386, 0.728), (0.614, 0.728))

DEFAULT_ONNX = "buffalo_l/w600k_r50.onnx"


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) mapping src points to dst points (Umeyama)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rotation = u @ d @ vt
    scale = (s * np.diag(d)).sum() / src_c.var(0).sum()
    translation = dst_mean - scale * rotation @ src_mean
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def ffhq_to_recognition_affine(crop_size: int, size: int = 112) -> torch.Tensor:
    """(2, 3) pixel transform from an FFHQ-aligned ``crop_size`` crop to the ArcFace layout."""
    src = np.asarray(FFHQ_FIVE_POINTS) * crop_size - 0.5  # fractions -> pixel centres
    dst = np.asarray(ARCFACE_FIVE_POINTS) * (size / 112.0)
    return torch.from_numpy(_similarity(src, dst)).float()


def recognition_crop(images: torch.Tensor, input_alignment: str = "ffhq", size: int = 112) -> torch.Tensor:
    """Faces in [0, 1] -> (B, 3, size, size) in the ArcFace 5-point layout, in [0, 1].

    Args:
        input_alignment: "ffhq" (FFHQ-aligned crops of any size, the library's layout)
            or "arcface" (already in the ArcFace layout; only resized).
    """
    images = check_image_batch(images, "faces")
    if input_alignment == "arcface":
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if input_alignment != "ffhq":
        raise HonestFaceError(f"input_alignment must be 'ffhq' or 'arcface', got '{input_alignment}'")
    if images.shape[-1] != images.shape[-2]:
        raise ImageError(f"FFHQ-aligned faces are square, got {tuple(images.shape[-2:])}")
    matrix = ffhq_to_recognition_affine(images.shape[-1], size).to(images.device, images.dtype)
    return warp(images, matrix.expand(images.shape[0], 2, 3), (size, size), padding_mode="border")


# --------------------------------------------------------------------------- ONNX graph reading


class _OnnxGraph:
    """Parameterised nodes of an ONNX graph in order, with their constant inputs as arrays."""

    def __init__(self, path: Path) -> None:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError as error:  # pragma: no cover
            raise HonestFaceError("reading ONNX weights needs the 'onnx' package (pip install onnx)") from error
        try:
            model = onnx.load(str(path))
        except Exception as error:  # onnx raises DecodeError and friends
            raise CheckpointError(path, f"not a readable ONNX file ({error})") from error
        self.path = path
        graph = model.graph
        values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        alias: dict[str, str] = {}
        self.nodes: list[Any] = []
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        values[node.output[0]] = numpy_helper.to_array(attribute.t)
            elif node.op_type == "Identity" and node.input[0] in values:
                alias[node.output[0]] = node.input[0]
            else:
                self.nodes.append(node)
        self.values = values
        self.alias = alias
        self.node_names = [n.op_type for n in self.nodes]

    def value(self, name: str) -> np.ndarray | None:
        name = self.alias.get(name, name)
        array = self.values.get(name)
        return None if array is None else np.asarray(array, dtype=np.float32)

    @staticmethod
    def attribute(node, name: str, default=None):
        for attribute in node.attribute:
            if attribute.name == name:
                import onnx
                return onnx.helper.get_attribute_value(attribute)
        return default


class _IResNetOnnxReader:
    """Walks an exported IResNet graph and fills a PyTorch state dict."""

    def __init__(self, graph: _OnnxGraph) -> None:
        self.graph = graph
        self.nodes = [n for n in graph.nodes if n.op_type not in ("Shape", "Gather", "Unsqueeze", "Concat", "Dropout")]
        self.position = 0
        self.state: dict[str, torch.Tensor] = {}
        self.bn_eps: dict[str, float] = {}

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.graph.path, problem, "an insightface ArcFace IResNet ONNX file (e.g. w600k_r50.onnx, glintr100.onnx)")

    def peek(self):
        return self.nodes[self.position] if self.position < len(self.nodes) else None

    def take(self, op_type: str):
        """The next node of ``op_type``, skipping residual Adds and shape plumbing (no weights)."""
        while self.peek() is not None and self.peek().op_type in ("Add", "Flatten", "Reshape"):
            self.position += 1
        node = self.peek()
        if node is None or node.op_type != op_type:
            found = "end of graph" if node is None else f"{node.op_type} node '{node.name}'"
            raise self.fail(f"expected a {op_type} node, found {found}")
        self.position += 1
        return node

    def _bn_arrays(self, node) -> list[np.ndarray]:
        arrays = [self.graph.value(name) for name in node.input[1:5]]
        if any(a is None for a in arrays):
            raise self.fail(f"BatchNormalization '{node.name}' has non-constant parameters")
        return arrays  # scale, bias, mean, var

    def put_bn(self, prefix: str, node) -> None:
        scale, bias, mean, var = self._bn_arrays(node)
        for key, array in zip(("weight", "bias", "running_mean", "running_var"), (scale, bias, mean, var)):
            self.state[f"{prefix}.{key}"] = torch.from_numpy(array.copy())
        self.bn_eps[prefix] = float(self.graph.attribute(node, "epsilon", 1e-5))

    def put_identity_bn(self, prefix: str, bias: np.ndarray) -> None:
        channels = bias.shape[0]
        self.state[f"{prefix}.weight"] = torch.ones(channels)
        self.state[f"{prefix}.bias"] = torch.from_numpy(bias.copy())
        self.state[f"{prefix}.running_mean"] = torch.zeros(channels)
        self.state[f"{prefix}.running_var"] = torch.full((channels,), 1.0 - BN_EPS)
        self.bn_eps[prefix] = BN_EPS

    def conv_bn(self, conv_prefix: str, bn_prefix: str) -> dict:
        """One convolution followed by its BatchNorm (folded into the conv or separate)."""
        conv = self.take("Conv")
        weight = self.graph.value(conv.input[1])
        if weight is None:
            raise self.fail(f"Conv '{conv.name}' has a non-constant weight")
        bias = self.graph.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        self.state[f"{conv_prefix}.weight"] = torch.from_numpy(weight.copy())
        following = self.peek()
        if following is not None and following.op_type == "BatchNormalization" and following.input[0] == conv.output[0]:
            self.position += 1
            if bias is not None and np.any(bias):
                raise self.fail(f"Conv '{conv.name}' has both a bias and a following BatchNorm")
            self.put_bn(bn_prefix, following)
        else:
            self.put_identity_bn(bn_prefix, bias if bias is not None else np.zeros(weight.shape[0], np.float32))
        strides = self.graph.attribute(conv, "strides", [1, 1])
        return {"out": weight.shape[0], "in": weight.shape[1], "kernel": weight.shape[-1], "stride": int(strides[0]),
                "conv": conv_prefix, "bn": bn_prefix}

    def prelu(self, prefix: str) -> int:
        node = self.take("PRelu")
        slope = self.graph.value(node.input[1])
        if slope is None:
            raise self.fail(f"PRelu '{node.name}' has a non-constant slope")
        self.state[f"{prefix}.weight"] = torch.from_numpy(slope.reshape(-1).copy())
        return slope.size

    def _rename(self, old: dict, conv_prefix: str, bn_prefix: str) -> None:
        for suffix in ("weight",):
            self.state[f"{conv_prefix}.{suffix}"] = self.state.pop(f"{old['conv']}.{suffix}")
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            self.state[f"{bn_prefix}.{suffix}"] = self.state.pop(f"{old['bn']}.{suffix}")
        self.bn_eps[bn_prefix] = self.bn_eps.pop(old["bn"])

    def read(self) -> tuple[dict[str, torch.Tensor], dict]:
        first = [n.op_type for n in self.nodes[:4]]
        if "Sub" in first or "Mul" in first:
            raise self.fail("this graph normalises its input inside the network (an mxnet conversion); "
                            "only arcface_torch exports can be loaded into PyTorch -- use the 'arcface-onnx' backend")
        stem = self.conv_bn("conv1", "bn1")
        if stem["kernel"] != 3 or stem["in"] != 3:
            raise self.fail(f"unexpected stem convolution {stem}")
        self.prelu("prelu")
        stages: list[list[dict]] = []
        while True:
            node = self.take("BatchNormalization")
            after = self.peek()
            if after is None or after.op_type in ("Flatten", "Reshape", "Gemm", "MatMul"):
                self.put_bn("bn2", node)
                break
            index = len([b for s in stages for b in s])
            tmp = f"block{index}"
            self.put_bn(f"{tmp}.bn1", node)
            # Up to three convolutions (two 3x3, an optional 1x1 shortcut) and one PReLU,
            # until the residual Add; the exporter's order decides nothing but conv1/conv2.
            convs, prelus = [], 0
            while self.peek() is not None and self.peek().op_type in ("Conv", "PRelu"):
                if self.peek().op_type == "Conv":
                    convs.append(self.conv_bn(f"{tmp}.c{len(convs)}", f"{tmp}.b{len(convs)}"))
                else:
                    prelus += 1
                    self.prelu(f"{tmp}.prelu")
            if prelus != 1:
                raise self.fail(f"block {index}: expected one PReLU, found {prelus}")
            shortcut = [c for c in convs if c["kernel"] == 1]
            main = [c for c in convs if c["kernel"] == 3]
            if len(main) != 2 or len(shortcut) > 1:
                raise self.fail(f"block {index}: expected two 3x3 convolutions and at most one 1x1, got {convs}")
            block = {"tmp": tmp, "main": main, "shortcut": shortcut[0] if shortcut else None,
                     "stride": main[1]["stride"], "out": main[1]["out"]}
            if block["stride"] == 2 or not stages:
                stages.append([])
            stages[-1].append(block)
        if len(stages) != 4:
            raise self.fail(f"expected 4 stages, found {len(stages)}")
        # Move the temporary block keys to arcface_torch's names.
        for stage_index, stage in enumerate(stages, start=1):
            for block_index, block in enumerate(stage):
                name = f"layer{stage_index}.{block_index}"
                tmp = block["tmp"]
                for key in [k for k in self.state if k.startswith(f"{tmp}.bn1.")]:
                    self.state[key.replace(f"{tmp}.bn1.", f"{name}.bn1.")] = self.state.pop(key)
                self.bn_eps[f"{name}.bn1"] = self.bn_eps.pop(f"{tmp}.bn1")
                self.state[f"{name}.prelu.weight"] = self.state.pop(f"{tmp}.prelu.weight")
                self._rename(block["main"][0], f"{name}.conv1", f"{name}.bn2")
                self._rename(block["main"][1], f"{name}.conv2", f"{name}.bn3")
                if block["shortcut"] is not None:
                    self._rename(block["shortcut"], f"{name}.downsample.0", f"{name}.downsample.1")
        self._read_head()
        config = {"layers": tuple(len(s) for s in stages), "widths": tuple(s[0]["out"] for s in stages),
                  "num_features": self.state["fc.weight"].shape[0]}
        channels = config["widths"][-1]
        spatial = int(round((self.state["fc.weight"].shape[1] / channels) ** 0.5))
        config["input_size"] = spatial * 16
        return self.state, config

    def _read_head(self) -> None:
        while self.peek() is not None and self.peek().op_type in ("Flatten", "Reshape"):
            self.position += 1
        node = self.peek()
        if node is not None and node.op_type == "Gemm":
            self.position += 1
            weight = self.graph.value(node.input[1])
            bias = self.graph.value(node.input[2]) if len(node.input) > 2 else None
            if weight is None:
                raise self.fail("the fully connected layer has a non-constant weight")
            if not self.graph.attribute(node, "transB", 0):
                weight = weight.T
        elif node is not None and node.op_type == "MatMul":
            self.position += 1
            weight = self.graph.value(node.input[1])
            if weight is None:
                raise self.fail("the fully connected layer has a non-constant weight")
            weight = weight.T
            bias = None
            add = self.peek()
            if add is not None and add.op_type == "Add":
                self.position += 1
                bias = next((self.graph.value(i) for i in add.input if self.graph.value(i) is not None), None)
        else:
            raise self.fail("expected the fully connected layer (Gemm) after the last BatchNorm")
        self.state["fc.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32, copy=True))
        self.state["fc.bias"] = torch.from_numpy(bias.copy() if bias is not None else np.zeros(weight.shape[0], np.float32))
        features = self.take("BatchNormalization")
        self.put_bn("features", features)


def iresnet_from_onnx(path: str | Path) -> IResNet:
    """Build an :class:`IResNet` with the weights of an insightface ArcFace ONNX file."""
    path = Path(path)
    reader = _IResNetOnnxReader(_OnnxGraph(path))
    state, config = reader.read()
    model = IResNet(layers=config["layers"], widths=config["widths"], num_features=config["num_features"],
                    input_size=config["input_size"])
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name in reader.bn_eps:
            module.eps = reader.bn_eps[name]
    _load_state(model, state, path)
    return model.eval()


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(path, f"weights do not match IResNet{model.layers_config}: "
                                    f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(path, f"'{key}' has shape {tuple(value.shape)}, the network needs {tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def iresnet_from_pth(path: str | Path) -> IResNet:
    """Build an :class:`IResNet` from an arcface_torch ``.pth`` state dict (depth from the keys)."""
    from ..loaders.safe_pickle import load_tensors

    path = Path(path)
    state = load_tensors(path, what="arcface_torch weights", state_key="state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "fc.weight" not in state:
        raise CheckpointError(path, "no 'fc.weight' key", "an arcface_torch IResNet state dict")
    layers = layers_from_state_dict(state)
    widths = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    channels = widths[-1]
    spatial = int(round((state["fc.weight"].shape[1] / channels) ** 0.5))
    model = IResNet(layers=layers, widths=widths, num_features=int(state["fc.weight"].shape[0]), input_size=spatial * 16)
    _load_state(model, {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return model.eval()


# --------------------------------------------------------------------------- backends


class FrozenRecognizer(nn.Module):
    """A frozen, differentiable face recogniser used as an identity backend.

    Gradients flow to the images (the identity loss needs them), never into the network;
    ``train()`` keeps it in eval mode so BatchNorm statistics never change.

    Args:
        network: the backbone; it has ``num_features`` and ``input_size``.
        input_alignment: "ffhq" (default) or "arcface"; see :func:`recognition_crop`.
        normalize: return unit embeddings.
    """

    name = "recognizer"

    def __init__(self, network: nn.Module, input_alignment: str = "ffhq", normalize: bool = True) -> None:
        super().__init__()
        self.network = network.eval()
        self.input_alignment = input_alignment
        self.normalize = normalize
        self.requires_grad_(False)

    @property
    def embedding_dim(self) -> int:
        return self.network.num_features

    def train(self, mode: bool = True) -> "FrozenRecognizer":
        return super().train(False)  # a frozen judge

    def crops(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) faces in [0, 1] -> the network's input crops, in the network's dtype."""
        crops = recognition_crop(images, self.input_alignment, self.network.input_size)
        return crops.to(next(self.network.parameters()).dtype)  # e.g. bf16 images into a float32 judge

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) aligned faces in [0, 1] -> (B, embedding_dim); gradients flow to ``images``."""
        return self(images)


class ArcFaceTorch(FrozenRecognizer):
    """Differentiable ArcFace identity backend: faces in [0, 1] -> (B, 512) embeddings.

    Args:
        network: the IResNet.
        input_alignment: "ffhq" (default) or "arcface"; see :func:`recognition_crop`.
        normalize: L2-normalise the embeddings (cosine similarity becomes a dot product).
    """

    name = "arcface-torch"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.network(self.crops(images) * 2.0 - 1.0)
        return F.normalize(features, dim=-1) if self.normalize else features


def _find_recognition_file(name: str | Path, models_dir) -> Path:
    kind = "insightface" if str(name).lower().endswith(".onnx") else "face_recognition"
    return find_model_file(kind, name, models_dir, what="ArcFace weights")


def load_arcface_torch(models_dir: str | Path | None = None, device: str = "cpu", model: str | Path = DEFAULT_ONNX,
                       **kw) -> ArcFaceTorch:
    """PyTorch ArcFace from an insightface ``.onnx`` or an arcface_torch ``.pth``, both
    relative to ``<models>/insightface/models/`` (or a path)."""
    path = _find_recognition_file(model, models_dir)
    network = iresnet_from_onnx(path) if path.suffix.lower() == ".onnx" else iresnet_from_pth(path)
    return ArcFaceTorch(network, **kw).to(device)
