"""insightface's own model classes on local ONNX files: SCRFD / RetinaFace detection and
ArcFace recognition (``insightface.model_zoo``).

Files come from ``<models>/insightface/models/<pack>/`` (``buffalo_l/det_10g.onnx``,
``buffalo_l/w600k_r50.onnx``, ``antelopev2/glintr100.onnx`` ...), where ComfyUI users of
ReActor, InstantID and PuLID already keep them. Only ``model_zoo.get_model`` is called,
with the resolved path of an existing ``.onnx`` file and ``download=False``: insightface
never fetches anything here. ``insightface.app.FaceAnalysis``, which downloads missing
packs, is not used.

What insightface does for us: ONNX Runtime sessions, the SCRFD decoding (anchors, boxes,
5 landmarks, non-maximum suppression, the letter-boxed resize), and ArcFace's input
normalisation (including mxnet-converted files that normalise inside the graph). What
stays ours: the photo tensor <-> OpenCV image conversion, and the FFHQ -> ArcFace crop
(:func:`~honestface.face.arcface.recognition_crop`), which the differentiable PyTorch
backends share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, HonestFaceError
from ..image_io import check_image_batch
from ..paths import find_model_file
from .arcface import DEFAULT_ONNX, recognition_crop
from .base import FaceDetection
from .opencv import require_opencv

DEFAULT_DETECTOR = "buffalo_l/det_10g.onnx"


def import_model_zoo():
    """``insightface.model_zoo``, or a :class:`HonestFaceError` saying what to install."""
    require_opencv("insightface")
    try:
        from insightface import model_zoo
    except ImportError as error:
        raise HonestFaceError(f"this backend needs insightface and onnxruntime "
                              f"(pip install insightface onnxruntime): {error}") from error
    return model_zoo


def onnx_providers(device: str | torch.device = "cpu") -> list[str]:
    """ONNX Runtime providers for a torch device name: CUDA first when asked for and present."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def load_insightface_model(path: str | Path, expected: str, device: str | torch.device = "cpu"):
    """insightface's model object for a local ``.onnx`` file, checked to be of class ``expected``.

    Args:
        expected: the ``insightface.model_zoo`` class name the file must route to
            ("SCRFD", "RetinaFace", "ArcFaceONNX"), or several joined by "|".

    Raises:
        CheckpointError: not an ONNX file insightface can load, or a model of another kind.
    """
    import onnxruntime

    model_zoo = import_model_zoo()
    path = Path(path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # keep ONNX Runtime's graph warnings out of the console
    try:
        model = model_zoo.get_model(str(path.resolve()), providers=onnx_providers(device), sess_options=options,
                                    download=False)
    except Exception as error:  # onnxruntime and protobuf raise their own exception types
        raise CheckpointError(path, f"insightface cannot load it ({type(error).__name__}: {error})") from error
    wanted = expected.split("|")
    found = type(model).__name__ if model is not None else "no model insightface knows"
    if found not in wanted:
        raise CheckpointError(path, f"insightface reads it as {found}", f"an insightface {' or '.join(wanted)} file")
    return model


def photo_to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) RGB in [0, 1] -> (H, W, 3) BGR uint8, OpenCV's layout."""
    photo = check_image_batch(image, "image")[0].detach().float().cpu().clamp(0, 1)
    return (photo * 255.0).round().to(torch.uint8).flip(0).permute(1, 2, 0).contiguous().numpy()


class InsightFaceDetector:
    """Whole-photo detector with 5 landmarks per face: insightface's SCRFD / RetinaFace.

    Args:
        model: an ``insightface.model_zoo.SCRFD`` (or ``RetinaFace``).
        input_size: side of the square detector input for files with a dynamic input
            (insightface letter-boxes the photo into it); fixed-size files use their own.
        score_threshold, nms_threshold: insightface's defaults.
    """

    name = "insightface"

    def __init__(self, model, input_size: int = 640, score_threshold: float = 0.5,
                 nms_threshold: float = 0.4) -> None:
        self.model = model
        self.model.det_thresh = float(score_threshold)
        self.model.nms_thresh = float(nms_threshold)
        fixed = getattr(model, "static_input_size", None) or getattr(model, "input_size", None)
        self.input_size = tuple(int(v) for v in fixed) if fixed else (int(input_size), int(input_size))

    def detect(self, image: torch.Tensor) -> list[FaceDetection]:
        """(3, H, W) in [0, 1] -> faces (box, score, 5 landmarks), largest first."""
        boxes, points = self.model.detect(photo_to_bgr_uint8(image), input_size=self.input_size)
        faces = [FaceDetection(box=tuple(float(v) for v in row[:4]), score=float(row[4]),
                               landmarks=None if points is None else np.asarray(points[i], dtype=np.float32),
                               extra={"detector": "insightface"})
                 for i, row in enumerate(boxes)]
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces


def load_insightface_detector(models_dir: str | Path | None = None, device: str = "cpu",
                              model: str | Path = DEFAULT_DETECTOR, **kw) -> InsightFaceDetector:
    """Detector from ``<models>/insightface/models/<model>`` (default ``buffalo_l/det_10g.onnx``)."""
    path = find_model_file("insightface", model or DEFAULT_DETECTOR, models_dir, what="insightface face detector")
    return InsightFaceDetector(load_insightface_model(path, "SCRFD|RetinaFace", device), **kw)


class ArcFaceOnnx:
    """ArcFace identity backend run by insightface's ``ArcFaceONNX`` (not differentiable).

    Faces are cut to the ArcFace layout by :func:`recognition_crop` (the same crop the
    PyTorch backends use) and handed to ``ArcFaceONNX.forward`` as RGB pixel values, which
    applies the file's own normalisation.
    """

    name = "arcface-onnx"

    def __init__(self, model, input_alignment: str = "ffhq", normalize: bool = True) -> None:
        self.model = model
        self.input_size = int(model.input_size[0])
        width = model.output_shape[1] if len(model.output_shape) > 1 else None
        self.embedding_dim = int(width) if isinstance(width, int) else 512
        self.input_alignment = input_alignment
        self.normalize = normalize

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) aligned faces in [0, 1] -> (B, D)."""
        crops = recognition_crop(images.detach().float(), self.input_alignment, self.input_size)
        pixels = (crops * 255.0).cpu().numpy().astype(np.float32)
        features = torch.from_numpy(np.asarray(self.model.forward(pixels), dtype=np.float32)).to(images.device)
        return F.normalize(features, dim=-1) if self.normalize else features


def load_arcface_onnx(models_dir: str | Path | None = None, device: str = "cpu", model: str | Path = DEFAULT_ONNX,
                      **kw) -> ArcFaceOnnx:
    """ArcFace ONNX backend from ``<models>/insightface/models/<model>`` (or a path)."""
    path = find_model_file("insightface", model or DEFAULT_ONNX, models_dir, what="ArcFace weights")
    return ArcFaceOnnx(load_insightface_model(path, "ArcFaceONNX", device), **kw)
