"""The insightface detector backend: insightface's SCRFD class on local ONNX files in the
SCRFD output layout, offline; outputs checked against the SCRFD decoding done by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from honestface.errors import CheckpointError, MissingModelFileError
from honestface.face import align_face, load_face_detector
from honestface.testing.offline import network_disabled

pytest.importorskip("insightface")

STRIDES = (8, 16, 32)
SIZE = 640


class ScrfdLayout(nn.Module):
    """Emits SCRFD's 9 outputs (scores x3, box distances x3, landmark offsets x3) holding
    planted detections. Scores are scaled by the mean of input channel 0 in the canvas's
    top-left corner (where the photo is placed), so only a red photo normalised the
    insightface way ((p - 127.5) / 128, RGB) yields faces."""

    def __init__(self, planted: list[tuple[int, int, int, int, float, list[float], list[float]]]) -> None:
        super().__init__()
        for stride in STRIDES:
            count = (SIZE // stride) ** 2 * 2
            scores, boxes, points = torch.zeros(count, 1), torch.ones(count, 4), torch.zeros(count, 10)
            for s, row, col, anchor, score, distances, offsets in planted:
                if s == stride:
                    index = (row * (SIZE // stride) + col) * 2 + anchor
                    scores[index, 0] = score
                    boxes[index] = torch.tensor(distances)
                    points[index] = torch.tensor(offsets)
            self.register_buffer(f"scores{stride}", scores)
            self.register_buffer(f"boxes{stride}", boxes)
            self.register_buffer(f"points{stride}", points)

    def forward(self, x: torch.Tensor):
        red = x[:, 0, :256, :256].mean()
        scores = [getattr(self, f"scores{s}") * red for s in STRIDES]
        boxes = [getattr(self, f"boxes{s}") + 0 * red for s in STRIDES]
        points = [getattr(self, f"points{s}") + 0 * red for s in STRIDES]
        return (*scores, *boxes, *points)


KPS = [-1.5, -1.0, 1.5, -1.0, 0.0, 0.5, -1.0, 2.0, 1.0, 2.0]
PLANTED = [
    (16, 10, 12, 1, 0.9, [3, 4, 3, 5], KPS),      # face A, centre (192, 160) on the canvas
    (16, 10, 12, 0, 0.8, [3, 4, 3, 4.8], KPS),    # near-duplicate of A: removed by NMS
    (32, 12, 4, 0, 0.95, [3, 3, 3, 3], KPS),      # face B, larger, centre (128, 384)
]


@pytest.fixture(scope="module", params=["fixed", "dynamic"])
def models(request, tmp_path_factory):
    """A models folder with det_10g.onnx; "dynamic" has a free input height and width, like
    the released file (insightface then builds a session for the size it is asked for)."""
    root = tmp_path_factory.mktemp("models")
    path = root / "insightface" / "models" / "buffalo_l" / "det_10g.onnx"
    path.parent.mkdir(parents=True)
    axes = {"input.1": {2: "height", 3: "width"}} if request.param == "dynamic" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ScrfdLayout(PLANTED).eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False,
                          opset_version=11, input_names=["input.1"], dynamic_axes=axes)
    return root


def test_decodes_boxes_landmarks_and_suppresses_duplicates(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # insightface's download root would be ~/.insightface
    with network_disabled():
        detector = load_face_detector("insightface", models_dir=models)
        photo = torch.zeros(3, 360, 720)  # resized by 640 / 720 (to 640 x 320) into the canvas
        photo[0] = 1.0  # red
        faces = detector.detect(photo)
    assert not (tmp_path / ".insightface").exists()
    assert type(detector.model).__name__ == "SCRFD" and detector.input_size == (SIZE, SIZE)
    assert len(faces) == 2
    scale = SIZE / 720
    # Largest first: B (6 x 32 wide), then A (6 x 16).
    b, a = faces
    assert np.allclose(b.box, np.array([128 - 96, 384 - 96, 128 + 96, 384 + 96]) / scale, atol=1e-3)
    assert np.allclose(a.box, np.array([192 - 48, 160 - 64, 192 + 48, 160 + 80]) / scale, atol=1e-3)
    assert a.score == pytest.approx(0.9 * (255 - 127.5) / 128, rel=1e-4)
    expected_points = (np.array([192.0, 160.0]) + np.array(KPS).reshape(5, 2) * 16) / scale
    assert a.landmarks.shape == (5, 2) and np.allclose(a.landmarks, expected_points, atol=1e-3)
    # The 5 points drive the same FFHQ alignment as 68 points.
    crop, affine = align_face(photo, torch.from_numpy(a.landmarks), 128)
    assert crop.shape == (3, 128, 128)


def test_channel_order_and_normalisation(models):
    detector = load_face_detector("insightface", models_dir=models)
    blue = torch.zeros(3, 300, 300)
    blue[2] = 1.0
    assert detector.detect(blue) == []  # channel 0 of a blue RGB photo is -127.5/128


def test_thresholds_reach_insightface(models):
    photo = torch.zeros(3, 360, 720)
    photo[0] = 1.0
    strict = load_face_detector("insightface", models_dir=models, score_threshold=0.93)
    assert [round(f.score, 3) for f in strict.detect(photo)] == [round(0.95 * 127.5 / 128, 3)]  # only B
    # With no suppression the near-duplicate of A (IoU 0.96) stays.
    loose = load_face_detector("insightface", models_dir=models, nms_threshold=0.99)
    assert len(loose.detect(photo)) == 3


def test_missing_and_wrong_files(tmp_path):
    with network_disabled(), pytest.raises(MissingModelFileError) as info:
        load_face_detector("insightface", models_dir=tmp_path)
    assert "det_10g.onnx" in info.value.args[0] and str(tmp_path / "insightface" / "models") in info.value.args[0]
    other = tmp_path / "other.onnx"  # a one-output network: insightface routes it to no detector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Conv2d(3, 2, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(other), dynamo=False, opset_version=11)
    with pytest.raises(CheckpointError, match="SCRFD"):
        load_face_detector("insightface", model=other)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00not an onnx file" * 8)
    with pytest.raises(CheckpointError, match="insightface cannot load it"):
        load_face_detector("insightface", model=broken)
