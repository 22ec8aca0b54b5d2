"""Reference conditioning computed once: the IDE's reference side (FFE on every reference,
FIE on the set) is encoded once per reference set and reused by every face; Eq. 6 picks a
reference per face from the stored landmarks. Results equal the direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honestface.errors import ImageError
from honestface.models.ide import IdentityEmbedder, ReferenceTokens, select_reference
from honestface.pipeline import HonestFacePipeline, ReferenceSet

from nano_helpers import ContentLandmarks, PooledIdentity, tiny_model


def faces(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def pipeline(model):
    return HonestFacePipeline(model, ContentLandmarks(), PooledIdentity(), batch_size=3)


def test_encode_then_choose_equals_ffe_on_the_chosen_reference(model):
    """The two-step IDE against the definition: FFE on the reference Eq. 6 picks, FIE on all."""
    torch.manual_seed(0)
    ide: IdentityEmbedder = model.ide
    marks = ContentLandmarks()
    refs = faces(6, 1).view(2, 3, 3, 64, 64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ref_points = marks.landmarks(refs.flatten(0, 1)).view(2, 3, 68, 2)
    ref_points[1, 2] = float("nan")
    lq_points = marks.landmarks(faces(2, 2))
    embeddings = torch.randn(2, 3, 16)
    with torch.no_grad():
        out = ide(refs, mask, lq_points, ref_points, embeddings)
        index = select_reference(lq_points, ref_points, mask, ide.config.selection_subset)
        rows = torch.arange(2)
        direct_features = ide.feature_extractor(refs[rows, index], ref_points[rows, index])
        direct_identity = ide.identity_encoder(embeddings, mask, 2)
        tokens = ide.encode(refs, mask, ref_points, embeddings)
    assert out.reference_index.tolist() == index.tolist()
    torch.testing.assert_close(out.feature_tokens, direct_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.identity_tokens, direct_identity, atol=1e-6, rtol=1e-6)
    # every real reference has its own tokens; padding stays zero
    assert tokens.feature_tokens.shape[:2] == (2, 3)
    assert float(tokens.feature_tokens[1, 2].abs().max()) == 0.0
    with torch.no_grad():
        alone = ide.feature_extractor(refs[0, 1:2], ref_points[0, 1:2])
    torch.testing.assert_close(tokens.feature_tokens[0, 1:2], alone, atol=1e-5, rtol=1e-5)


def test_model_forward_with_conditioning_equals_forward_with_references(model):
    """The trainer's call (references as tensors) and the pipeline's (encoded once) agree,
    and gradients reach the IDE heads on both roads."""
    lq, refs = faces(2, 3), faces(4, 4).view(2, 2, 3, 64, 64)
    mask = torch.tensor([[True, True], [True, False]])
    marks = ContentLandmarks()
    lq_points, ref_points = marks.landmarks(lq), marks.landmarks(refs.flatten(0, 1)).view(2, 2, 68, 2)
    embeddings = torch.randn(2, 2, 16)
    with torch.no_grad():
        direct = model(lq, refs, mask, lq_points, ref_points, embeddings)
        encoded = model.encode_references(refs, mask, ref_points, embeddings)
        via = model(lq, lq_landmarks=lq_points, conditioning=encoded)
    torch.testing.assert_close(via.image, direct.image)
    assert via.reference_index.tolist() == direct.reference_index.tolist()
    model.set_trainable()
    try:
        out = model(lq, lq_landmarks=lq_points, conditioning=model.encode_references(refs, mask, ref_points, embeddings))
        out.image.mean().backward()
        assert model.ide.feature_extractor.projection.weight.grad.abs().sum() > 0
        assert model.ide.identity_encoder.queries.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
    with pytest.raises(ImageError, match="conditioning holds 2 faces"):
        model(lq[:1], conditioning=encoded)


class CountingIDE:
    """Counts FFE calls (and the references they see) and FIE calls of a model."""

    def __init__(self, model, monkeypatch):
        self.ffe_calls, self.ffe_refs, self.fie_calls = 0, 0, 0
        ffe, fie = model.ide.feature_extractor, model.ide.identity_encoder
        ffe_forward, fie_forward = ffe.forward, fie.forward

        def counted_ffe(reference, landmarks):
            self.ffe_calls += 1
            self.ffe_refs += int(reference.shape[0])
            return ffe_forward(reference, landmarks)

        def counted_fie(*args, **kwargs):
            self.fie_calls += 1
            return fie_forward(*args, **kwargs)

        monkeypatch.setattr(ffe, "forward", counted_ffe)
        monkeypatch.setattr(fie, "forward", counted_fie)


def test_a_reference_set_is_encoded_once_for_every_face(model, pipeline, monkeypatch):
    lq, refs = faces(7, 5), faces(4, 6)
    per_face = pipeline.restore(lq, [refs.clone() for _ in range(7)])  # a copy each: encoded with each chunk
    reference_set = pipeline.encode_references(refs)
    assert reference_set.tokens is not None and reference_set.tokens.feature_tokens.shape[:2] == (1, 4)
    counter = CountingIDE(model, monkeypatch)
    shared = pipeline.restore(lq, reference_set)
    assert (counter.ffe_calls, counter.fie_calls) == (0, 0)  # 7 faces, 3 chunks: nothing recomputed
    torch.testing.assert_close(shared, per_face, atol=1e-5, rtol=1e-4)
    chosen = pipeline.choose_references(lq, reference_set)
    expected = select_reference(ContentLandmarks().landmarks(lq), reference_set.landmarks[None].expand(7, -1, -1, -1),
                                torch.ones(7, 4, dtype=torch.bool), model.config.ide.selection_subset)
    assert chosen.reference_index.tolist() == expected.tolist()
    torch.testing.assert_close(chosen.feature_tokens, reference_set.tokens.feature_tokens[0, expected])
    assert (counter.ffe_calls, counter.fie_calls) == (0, 0)
    # one tensor object given to every face is encoded once too, before the chunks
    same_tensor = pipeline.restore(lq, [refs] * 7)
    assert (counter.ffe_calls, counter.ffe_refs, counter.fie_calls) == (1, 4, 1)
    torch.testing.assert_close(same_tensor, per_face, atol=1e-5, rtol=1e-4)


def test_mixed_entries_are_encoded_together(model, pipeline, monkeypatch):
    """Tensor entries of a chunk go through the IDE in one call, sets are reused, None rows
    get the visual prompt alone."""
    lq = faces(3, 7)
    reference_set = pipeline.encode_references(faces(2, 8))
    fresh = faces(3, 9)
    counter = CountingIDE(model, monkeypatch)
    batch = pipeline.prepare_references([fresh, None, reference_set])
    assert (counter.ffe_calls, counter.ffe_refs, counter.fie_calls) == (1, 3, 1)
    assert batch.conditioning.mask.tolist() == [[True, True, True], [False] * 3, [True, True, False]]
    restored = pipeline.restore(lq, [fresh, None, reference_set])
    alone = torch.cat([pipeline.restore(lq[0:1], [fresh]), pipeline.restore(lq[1:2]),
                       pipeline.restore(lq[2:3], reference_set)])
    torch.testing.assert_close(restored, alone, atol=1e-5, rtol=1e-4)
    assert pipeline.choose_references(lq, [fresh, None, reference_set]).reference_index[1] == -1


def test_tokens_follow_the_weights_and_the_precision(model, pipeline):
    reference_set = pipeline.encode_references(faces(3, 10))
    assert pipeline.encode_references(reference_set) is reference_set  # complete: reused as it is
    before = reference_set.tokens.feature_tokens.clone()
    state = model.trainable_state_dict()
    changed = {k: (v + 0.1 if k.startswith("ide.feature_extractor.projection") else v) for k, v in state.items()}
    try:
        model.load_trainable_state_dict(changed)
        again = pipeline.encode_references(reference_set)
        assert again is not reference_set and again.tokens_key[0] is model.encoding_stamp
        assert not torch.allclose(again.tokens.feature_tokens, before)
    finally:
        model.load_trainable_state_dict(state)
    double = HonestFacePipeline(model, ContentLandmarks(), PooledIdentity(), dtype=torch.float64)
    try:
        assert double.encode_references(reference_set).tokens_key[1] == torch.float64
    finally:
        model.to(torch.float32)


def test_a_set_made_without_backends_gets_them_and_new_tokens(model, pipeline):
    plain = HonestFacePipeline(model, None, None)
    bare = plain.encode_references(faces(2, 11))
    assert bare.landmarks is None and bare.embeddings is None and bare.tokens is not None
    full = pipeline.encode_references(bare)
    assert full.landmarks.shape == (2, 68, 2) and full.embeddings.shape == (2, 16)
    # the identity tokens now see the embeddings
    assert not torch.allclose(full.tokens.identity_tokens, bare.tokens.identity_tokens)


def test_osdface_weights_need_no_tokens(pipeline):
    model = tiny_model()
    model.accepts_references = False
    osdface = HonestFacePipeline(model, ContentLandmarks(), PooledIdentity())
    reference_set = osdface.encode_references(faces(2, 12))
    assert reference_set.tokens is None
    lq = faces(2, 13)
    torch.testing.assert_close(osdface.restore(lq, reference_set), osdface.restore(lq))


def test_reference_tokens_check_their_shapes():
    with pytest.raises(ValueError, match="feature_tokens"):
        ReferenceTokens(torch.zeros(2, 3, 4), torch.zeros(2, 7, 8), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="landmarks"):
        ReferenceTokens(torch.zeros(2, 3, 4, 8), torch.zeros(2, 7, 8), torch.ones(2, 3, dtype=torch.bool),
                        torch.zeros(2, 2, 68, 2))
    assert isinstance(ReferenceSet(torch.zeros(0, 3, 64, 64)), ReferenceSet)
