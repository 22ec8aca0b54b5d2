"""insightface's SCRFD / RetinaFace ONNX face detectors (e.g. ``buffalo_l/det_10g.onnx``).

Run with onnxruntime; returns a box, a score and 5 landmarks (left eye, right eye, nose,
left and right mouth corner) per face. Conventions of insightface's detector:

- the photo is resized (aspect kept) into the top-left of an ``input_size`` square
  canvas (640 by default), zeros elsewhere;
- input RGB, ``(pixel - 127.5) / 128``;
- outputs, for the feature strides (8, 16, 32) [or (8, 16, 32, 64, 128)]: scores
  (N, 1), box distances (N, 4) and, for 9/15-output models, landmark offsets (N, 10),
  all in units of the stride, around anchor centres laid out row-major with
  2 anchors per location [1 for the 5-stride models];
- boxes ``(cx - l, cy - t, cx + r, cy + b)``; landmarks ``anchor + offset``;
- non-maximum suppression at IoU 0.4, score threshold 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..image_io import check_image_batch
from ..paths import find_model_file
from .base import FaceDetection

DEFAULT_DETECTOR = "buffalo_l/det_10g.onnx"

_LAYOUTS = {  # number of outputs -> (strides, anchors per location, has landmarks)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]) + 1)
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


class InsightFaceDetector:
    """Whole-photo detector with 5 landmarks per face (insightface ONNX files)."""

    name = "insightface"

    def __init__(self, path: str | Path, device: str = "cpu", input_size: int = 640,
                 score_threshold: float = 0.5, nms_threshold: float = 0.4) -> None:
        from .onnx_session import open_onnx_session

        self.path = Path(path)
        self.session = open_onnx_session(self.path, device, "the insightface detector")
        outputs = self.session.get_outputs()
        if len(outputs) not in _LAYOUTS:
            raise CheckpointError(self.path, f"{len(outputs)} outputs", "an insightface detector with 6, 9, 10 or 15 outputs")
        self.strides, self.anchors, self.has_landmarks = _LAYOUTS[len(outputs)]
        self.output_names = [o.name for o in outputs]
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        fixed = model_input.shape[2]
        self.input_size = int(fixed) if isinstance(fixed, int) else int(input_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def _anchor_centres(self, stride: int) -> np.ndarray:
        cells = self.input_size // stride
        ys, xs = np.mgrid[:cells, :cells]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        return np.repeat(centres, self.anchors, axis=0)

    def detect(self, image: torch.Tensor) -> list[FaceDetection]:
        """(3, H, W) in [0, 1] -> faces (5 landmarks each), largest first."""
        photo = check_image_batch(image, "image")[:1].detach().float().cpu()
        height, width = photo.shape[-2:]
        scale = self.input_size / max(height, width)
        new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
        resized = F.interpolate(photo, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                antialias=scale < 1).clamp(0, 1)
        canvas = torch.zeros(1, 3, self.input_size, self.input_size)
        canvas[:, :, :new_h, :new_w] = (resized * 255.0).round()
        blob = ((canvas - 127.5) / 128.0).numpy().astype(np.float32)
        outputs = self.session.run(self.output_names, {self.input_name: blob})
        levels = len(self.strides)
        all_boxes, all_scores, all_points = [], [], []
        for level, stride in enumerate(self.strides):
            scores = np.asarray(outputs[level]).reshape(-1)
            distances = np.asarray(outputs[level + levels]).reshape(-1, 4) * stride
            centres = self._anchor_centres(stride)
            if len(centres) != len(scores):
                raise CheckpointError(self.path, f"stride {stride}: {len(scores)} scores for {len(centres)} anchors",
                                      "an insightface detector in its usual output layout")
            chosen = scores >= self.score_threshold
            boxes = np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)
            all_boxes.append(boxes[chosen])
            all_scores.append(scores[chosen])
            if self.has_landmarks:
                offsets = np.asarray(outputs[level + 2 * levels]).reshape(-1, 5, 2) * stride
                all_points.append((centres[:, None, :] + offsets)[chosen])
        boxes = np.concatenate(all_boxes) / scale
        scores = np.concatenate(all_scores)
        points = np.concatenate(all_points) / scale if self.has_landmarks else None
        faces = []
        for index in nms(boxes, scores, self.nms_threshold):
            faces.append(FaceDetection(box=tuple(float(v) for v in boxes[index]), score=float(scores[index]),
                                       landmarks=None if points is None else points[index].astype(np.float32),
                                       extra={"detector": "insightface"}))
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces


def load_insightface_detector(models_dir: str | Path | None = None, device: str = "cpu",
                              model: str | Path = DEFAULT_DETECTOR, **kw) -> InsightFaceDetector:
    """Detector from ``<models>/insightface/models/<model>`` (default ``buffalo_l/det_10g.onnx``)."""
    path = find_model_file("insightface", model or DEFAULT_DETECTOR, models_dir, what="insightface face detector")
    return InsightFaceDetector(path, device=device, **kw)
