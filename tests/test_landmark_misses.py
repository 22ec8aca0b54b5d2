"""Aligned LQ faces whose landmarks cannot be found: the reference choice uses the points
fitted in the aligned face box (as training does), and every miss is counted per face."""

from __future__ import annotations

import pytest
import torch

from honestface.image_io import load_image, resize_to

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipeline():
    from honestface.face import load_landmark_backend
    from honestface.pipeline import HonestFacePipeline, load_model

    model = load_model(checkpoint="honestface-nano.safetensors")
    # no fallback in the backend: the pipeline must notice the miss itself
    return HonestFacePipeline(model, load_landmark_backend("dlib"), None, batch_size=2)


@pytest.fixture(scope="module")
def faces(shared_data):
    """A clean 128 px aligned CelebA face, the same face blurred beyond detection, and two
    other photos of that person as references."""
    folder = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[1]
    files = sorted(folder.glob("*.jpg"))
    clean = resize_to(load_image(files[0])[None], 128)
    small = torch.nn.functional.interpolate(clean, size=(12, 12), mode="area")
    blurred = torch.nn.functional.interpolate(small, size=(128, 128), mode="bicubic").clamp(0, 1)
    refs = resize_to(torch.stack([load_image(f) for f in files[1:3]]), 128)
    return torch.cat([clean, blurred]), refs


def test_missed_landmarks_are_the_aligned_box_fit_and_flagged(pipeline, faces):
    from honestface.face import load_landmark_backend

    lq, _ = faces
    detected = pipeline.landmark_backend.landmarks(lq)
    assert torch.isfinite(detected[0]).all() and torch.isnan(detected[1]).all()  # the case is real
    points, missed = pipeline.lq_landmarks(lq)
    assert missed.tolist() == [False, True]
    assert torch.equal(points[0], detected[0].float())
    # the same points as the backend's own aligned-box fit (training's road for aligned crops)
    boxed = load_landmark_backend("dlib", detect=False).landmarks(lq[1:])[0]
    assert torch.equal(points[1], boxed.float())


def test_restore_reports_each_miss(pipeline, faces):
    from honestface.pipeline import RestoreInfo

    lq, refs = faces
    info = RestoreInfo()
    restored = pipeline.restore(lq, [refs, refs], info=info)
    assert restored.shape == lq.shape and torch.isfinite(restored).all()
    assert info.landmarks_missed == [False, True] and info.landmark_misses == 1
    # without references no landmarks are looked for, so nothing is missed
    plain = RestoreInfo()
    pipeline.restore(lq, info=plain)
    assert plain.landmarks_missed == [False, False]
