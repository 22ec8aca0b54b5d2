"""The pipeline on real faces: dlib landmarks and descriptors drive the reference choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.config import HonestFaceConfig
from honestface.image_io import load_images
from honestface.metrics.landmark import affine_landmark_distance
from honestface.models import HonestFaceModel, build_diffusers
from honestface.models.ide import eye_boxes
from honestface.pipeline import HonestFacePipeline


@pytest.fixture(scope="module")
def obama(shared_data):
    folder = shared_data / "real_lq" / "reference_sets" / "obama"
    if not folder.is_dir():
        pytest.skip("the Obama reference set is not in the test data")
    lq = load_images([folder / "lq_crop" / f"i{i}.png" for i in (1, 2)], size=128)
    refs = load_images([folder / "refs" / f"o{i}.png" for i in range(1, 6)], size=128)
    marks = torch.stack([torch.from_numpy(np.loadtxt(folder / "refs_landmarks" / f"o{i}.png.txt", dtype=np.float32))
                         for i in range(1, 6)]) * (128 / 512)
    return lq, refs, marks


def test_real_faces_choose_the_reference_with_the_smallest_ald(obama):
    face = pytest.importorskip("honestface.face")
    lq, refs, given_marks = obama
    landmarks = face.load_landmark_backend("dlib", aligned_fallback=True)
    identity = face.load_identity_backend("dlib")
    config = HonestFaceConfig.from_preset("tiny")
    config.image_size = 128  # tiny networks, real-size-ish faces that dlib can read
    config.ide.identity_dim = identity.embedding_dim
    unet, vae = build_diffusers(config, seed=0)
    pipe = HonestFacePipeline(HonestFaceModel(config, unet, vae).eval(), landmarks, identity)

    batch = pipe.prepare_references([refs, refs[:2]])
    assert batch.landmarks.shape == (2, 5, 68, 2) and batch.embeddings.shape == (2, 5, 128)
    assert torch.isfinite(batch.landmarks[0]).all()
    # dlib's points on the references agree with the landmarks shipped with them.
    assert float((batch.landmarks[0] - given_marks).norm(dim=-1).mean()) < 3.0
    lq_marks = pipe.detect_landmarks(lq)
    assert torch.isfinite(lq_marks).all()
    with torch.no_grad():
        out = pipe.forward_prepared(lq, batch.images, batch.mask, lq_marks, batch.landmarks, batch.embeddings)
    for b, count in enumerate((5, 2)):
        ald = affine_landmark_distance(batch.landmarks[b, :count].double(), lq_marks[b].double(), subset="eyes")
        assert int(out.reference_index[b]) == int(ald.argmin())
    # The eye boxes of the real references hold the eye landmarks.
    boxes = eye_boxes(batch.landmarks[0], (128, 128), config.ide.eye_margin)
    eyes = batch.landmarks[0, :, 36:48].view(5, 2, 6, 2)
    assert bool((eyes >= boxes[:, :, None, :2]).all() and (eyes <= boxes[:, :, None, 2:]).all())

    restored = pipe.restore(lq, [refs, refs[:2]])
    assert restored.shape == lq.shape and torch.isfinite(restored).all()
