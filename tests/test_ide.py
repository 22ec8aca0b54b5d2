"""Identity embedder: reference choice (Eq. 6), eye crops, FFE and FIE."""

from __future__ import annotations

import math

import torch

from honestface.config import HonestFaceConfig
from honestface.metrics.landmark import affine_landmark_distance
from honestface.models.ide import (
    FaceIdentityEncoder,
    FacialFeatureExtractor,
    IdentityEmbedder,
    crop_eye_patches,
    eye_boxes,
    select_reference,
)
from honestface.models.vgg import VGG16Features


def face_landmarks(generator: torch.Generator, size: float = 64.0) -> torch.Tensor:
    """(68, 2) plausible points: eyes around the aligned-face eye positions, the rest spread."""
    points = torch.rand(68, 2, generator=generator) * 0.6 * size + 0.2 * size
    for start, cx in ((36, 0.375), (42, 0.625)):
        angles = torch.linspace(0, 2 * math.pi, 7)[:6]
        points[start:start + 6, 0] = cx * size + 0.06 * size * torch.cos(angles)
        points[start:start + 6, 1] = 0.47 * size + 0.02 * size * torch.sin(angles)
    return points


def affine(points: torch.Tensor, matrix: list[list[float]], shift: list[float]) -> torch.Tensor:
    return points @ torch.tensor(matrix).t() + torch.tensor(shift)


def test_reference_choice_is_the_smallest_affine_landmark_distance():
    g = torch.Generator().manual_seed(0)
    lq = torch.stack([face_landmarks(g), face_landmarks(g)])  # (2, 68, 2)
    refs = torch.stack([
        torch.stack([lq[0] + torch.randn(68, 2, generator=g) * 3,  # another layout
                     affine(lq[0], [[1.1, 0.1], [-0.05, 0.9]], [4.0, -2.0]),  # same layout, moved
                     lq[0] + torch.randn(68, 2, generator=g) * 1.0]),
        torch.stack([affine(lq[1], [[0.9, 0.0], [0.0, 0.9]], [1.0, 1.0]),
                     lq[1] + torch.randn(68, 2, generator=g) * 2.0,
                     torch.full((68, 2), float("nan"))]),
    ])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    index = select_reference(lq, refs, mask, "eyes")
    expected = affine_landmark_distance(refs[0, :2], lq[0], subset="eyes").argmin()
    assert index.tolist() == [1, 0] and int(expected) == 1

    # A padded reference is never chosen, even when its landmarks would fit best.
    mask_without_best = torch.tensor([[True, False, True], [False, True, False]])
    assert select_reference(lq, refs, mask_without_best, "eyes").tolist() == [2, 1]
    # Without landmarks of the LQ face: the first real reference.
    nan_lq = torch.full_like(lq, float("nan"))
    assert select_reference(nan_lq, refs, mask_without_best).tolist() == [0, 1]
    assert select_reference(None, None, mask_without_best).tolist() == [0, 1]


def test_eye_boxes_cover_the_eyes_and_fall_back_to_the_template():
    g = torch.Generator().manual_seed(1)
    landmarks = torch.stack([face_landmarks(g), torch.full((68, 2), float("nan"))])
    boxes = eye_boxes(landmarks, (64, 64), margin=0.5)
    assert boxes.shape == (2, 2, 4)
    for eye, idx in enumerate((slice(36, 42), slice(42, 48))):
        pts = landmarks[0, idx]
        assert bool((pts[:, 0] > boxes[0, eye, 0]).all() and (pts[:, 0] < boxes[0, eye, 2]).all())
        assert bool((pts[:, 1] > boxes[0, eye, 1]).all() and (pts[:, 1] < boxes[0, eye, 3]).all())
        width = pts[:, 0].max() - pts[:, 0].min()
        torch.testing.assert_close(boxes[0, eye, 2] - boxes[0, eye, 0], width * 2.0)
        torch.testing.assert_close(boxes[0, eye, 3] - boxes[0, eye, 1], width * 2.0)  # square
    centers = (boxes[1, :, :2] + boxes[1, :, 2:]) / 2
    torch.testing.assert_close(centers, torch.tensor([[0.375 * 64, 0.47 * 64], [0.625 * 64, 0.47 * 64]]))


def test_eye_crops_sample_the_box():
    # On a linear ramp, bilinear crops are exact: pixel j of the patch samples
    # x0 + (j + 0.5) * w / s - 0.5 (pixel centres at integers).
    height, width, size = 40, 50, 8
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(2, 3, height, width)
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1).expand(2, 3, height, width)
    images = xs + 100 * ys
    boxes = torch.tensor([[[10.0, 5.0, 26.0, 21.0], [20.0, 12.0, 28.0, 20.0]],
                          [[4.0, 4.0, 36.0, 36.0], [30.0, 10.0, 46.0, 26.0]]])
    patches = crop_eye_patches(images, boxes, size)
    assert patches.shape == (2, 2, 3, size, size)
    j = torch.arange(size, dtype=torch.float32)
    for b in range(2):
        for e in range(2):
            x0, y0, x1, y1 = boxes[b, e].tolist()
            ex = x0 + (j + 0.5) * (x1 - x0) / size - 0.5
            ey = y0 + (j + 0.5) * (y1 - y0) / size - 0.5
            torch.testing.assert_close(patches[b, e, 0], ex.view(1, -1) + 100 * ey.view(-1, 1), atol=1e-3, rtol=0)


def test_feature_extractor_is_trainable_on_top_of_a_frozen_vgg():
    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset("tiny")
    ffe = FacialFeatureExtractor(config.ide, config.token_dim)
    g = torch.Generator().manual_seed(2)
    landmarks = torch.stack([face_landmarks(g), face_landmarks(g)])
    reference = torch.rand(2, 3, 64, 64, requires_grad=True)
    tokens = ffe(reference, landmarks)
    assert tokens.shape == (2, 4, config.token_dim)
    tokens.square().mean().backward()
    assert all(p.grad is None for p in ffe.vgg.parameters())
    assert all(p.grad is not None for p in ffe.projection.parameters())
    assert reference.grad is not None and float(reference.grad.abs().sum()) > 0
    # Each batch element depends only on its own reference.
    other = reference.detach().clone()
    other[1] = torch.rand(3, 64, 64)
    again = ffe(other, landmarks)
    torch.testing.assert_close(again[0], tokens[0].detach())
    assert not torch.allclose(again[1], tokens[1].detach())


def test_vgg_weights_load_from_a_torchvision_state_dict():
    from torchvision.models import vgg16

    full = vgg16(weights=None).state_dict()
    features = VGG16Features(2, full)
    torch.testing.assert_close(features.features[14].weight, full["features.14.weight"])
    outputs = features(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outputs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    features.train()
    assert not features.training


def test_identity_pooling_masks_padding_and_allows_no_references():
    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset("tiny").ide
    fie = FaceIdentityEncoder(config, 32).eval()
    embeddings = torch.randn(2, 5, config.identity_dim)
    mask = torch.tensor([[True, True, True, True, True], [True, False, False, False, False]])
    out = fie(embeddings, mask)
    assert out.shape == (2, config.num_identity_tokens, 32)
    # Padded entries do not matter.
    changed = embeddings.clone()
    changed[1, 1:] = torch.randn(4, config.identity_dim) * 10
    torch.testing.assert_close(fie(changed, mask), out)
    # N = 1 equals the unpadded single reference; order of references does not matter.
    torch.testing.assert_close(fie(embeddings[1:, :1], None)[0], out[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fie(embeddings[:1, torch.randperm(5)], None)[0], out[0], atol=1e-5, rtol=1e-5)
    # N = 0 (no embeddings, or all masked) is finite and differentiable.
    empty = fie(None, None, batch=2)
    all_masked = fie(embeddings, torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(empty).all() and torch.isfinite(all_masked).all()
    torch.testing.assert_close(empty, all_masked)
    fie.train()
    fie(embeddings, torch.zeros(2, 5, dtype=torch.bool)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fie.parameters() if p.grad is not None)


def test_identity_embedder_uses_the_chosen_reference():
    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset("tiny")
    ide = IdentityEmbedder(config.ide, config.token_dim).eval()
    g = torch.Generator().manual_seed(3)
    lq_landmarks = face_landmarks(g).unsqueeze(0)
    ref_landmarks = torch.stack([lq_landmarks[0] + torch.randn(68, 2, generator=g) * 3,
                                 affine(lq_landmarks[0], [[1.0, 0.0], [0.0, 1.0]], [1.0, 0.0])]).unsqueeze(0)
    references = torch.rand(1, 2, 3, 64, 64)
    out = ide(references, torch.ones(1, 2, dtype=torch.bool), lq_landmarks, ref_landmarks, torch.randn(1, 2, 16))
    assert out.reference_index.tolist() == [1]
    direct = ide.feature_extractor(references[:, 1], ref_landmarks[:, 1])
    torch.testing.assert_close(out.feature_tokens, direct)


def test_collinear_reference_landmarks_fall_back_to_the_first_reference():
    g = torch.Generator().manual_seed(4)
    lq = face_landmarks(g).unsqueeze(0)
    line = torch.stack([torch.linspace(0, 60, 68), torch.linspace(0, 30, 68)], dim=1)
    refs = torch.stack([line, line * 0.5 + 3]).unsqueeze(0)
    assert select_reference(lq, refs, torch.ones(1, 2, dtype=torch.bool)).tolist() == [0]


def test_a_collinear_reference_is_skipped_without_affecting_the_others():
    g = torch.Generator().manual_seed(5)
    lq = face_landmarks(g)
    line = torch.stack([torch.linspace(0, 60, 68), torch.linspace(0, 30, 68)], dim=1)
    noisy = lq + torch.randn(68, 2, generator=g) * 4
    exact = affine(lq, [[1.1, 0.1], [-0.1, 0.9]], [5.0, -2.0])  # A-LD 0 to the LQ landmarks
    # element 0: [collinear, noisy, exact] -> exact; element 1: [noisy, exact, collinear] -> exact
    refs = torch.stack([torch.stack([line, noisy, exact]), torch.stack([noisy, exact, line])])
    chosen = select_reference(torch.stack([lq, lq]), refs, torch.ones(2, 3, dtype=torch.bool))
    assert chosen.tolist() == [2, 1]
