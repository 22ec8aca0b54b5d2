"""References as people have them: raw LFW photos aligned to the model's crop, faceless
inputs dropped with a note, a ReferenceSet computed once and used as-is, and the identity
match threshold checked on LFW people."""

from __future__ import annotations

import pytest
import torch

from honestface.face import align_reference_photos, classify_input
from honestface.image_io import load_image
from honestface.pipeline import IDENTITY_MATCH_THRESHOLD_DEG, ReferenceSet, identity_match_threshold

from nano_helpers import nano_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipeline():
    return nano_pipeline(batch_size=4)


@pytest.fixture(scope="module")
def person(shared_data):
    folder = sorted(p for p in (shared_data / "lfw").iterdir() if p.is_dir())[1]
    return sorted(folder.glob("*.jpg"))


def test_raw_photos_become_aligned_references(shared_data, detector, person):
    photos = [load_image(p) for p in person[:3]]
    celeba_crop = load_image(sorted((shared_data / "celeba").glob("*/*.jpg"))[0])  # already aligned, 256
    no_face = photos[0][:, 190:, :]  # a real region without a face
    tiny = torch.rand(3, 20, 20)
    inputs = photos + [celeba_crop, no_face, tiny]
    names = ["a.jpg", "b.jpg", "c.jpg", "crop.jpg", "empty.jpg", "tiny.png"]
    result = align_reference_photos(inputs, 128, detector, names=names)
    assert result.images.shape == (4, 3, 128, 128) and result.kept == [0, 1, 2, 3]
    assert "empty.jpg: no face found, dropped" in result.notes
    assert any(n.startswith("tiny.png: 20x20 px, too small") for n in result.notes)
    assert sum(n.startswith(("a.jpg", "b.jpg", "c.jpg")) and "face aligned" in n for n in result.notes) == 3
    assert not any(n.startswith("crop.jpg") for n in result.notes)  # an aligned crop is only resized
    # Independent check: the references found for the raw photos are FFHQ-aligned crops.
    big = align_reference_photos(photos, 256, detector)
    for crop in big.images:
        kind = classify_input(crop, detector)
        assert kind.kind == "aligned" and kind.error < 0.08, kind
    empty = align_reference_photos([no_face], 128, detector, names=["x.png"])
    assert empty.images.shape == (0, 3, 128, 128) and empty.kept == [] and len(empty.notes) == 1


def test_reference_set_is_computed_once_and_matches_tensor_references(pipeline, detector, person, monkeypatch):
    refs = align_reference_photos([load_image(p) for p in person[1:4]], pipeline.image_size, detector).images
    lq_faces = align_reference_photos([load_image(p) for p in person[4:6]], pipeline.image_size, detector).images
    lq = torch.nn.functional.interpolate(lq_faces, scale_factor=0.25, mode="area")  # degraded
    # the full restoration (fidelity=False): where the references' effect shows
    from_tensors = pipeline.restore(lq, references=[refs, refs], generator=torch.Generator().manual_seed(0),
                               fidelity=False)
    encoded = pipeline.encode_references(refs)
    assert isinstance(encoded, ReferenceSet) and len(encoded) == 3
    assert encoded.landmarks.shape == (3, 68, 2) and encoded.embeddings.shape == (3, 128)

    calls = []
    embed = pipeline.identity_backend.embed
    monkeypatch.setattr(pipeline.identity_backend, "embed", lambda images: calls.append(len(images)) or embed(images))
    from_set = pipeline.restore(lq, references=[encoded, encoded], generator=torch.Generator().manual_seed(0),
                               fidelity=False)
    shared = pipeline.restore(lq, references=encoded, generator=torch.Generator().manual_seed(0),
                               fidelity=False)
    assert calls == []  # the set's embeddings are used as they are, for every face
    assert torch.allclose(from_set, from_tensors, atol=1e-4) and torch.equal(from_set, shared)
    plain = pipeline.restore(lq, generator=torch.Generator().manual_seed(0),
                               fidelity=False)
    assert (from_set - plain).abs().max() > 1e-3  # the references do change the restoration
    half = pipeline.restore(lq, references=encoded, strength=0.5, generator=torch.Generator().manual_seed(0),
                               fidelity=False)
    assert torch.allclose(half, (from_set + lq) / 2, atol=1e-5)


def test_identity_threshold_is_stated_per_family():
    assert set(IDENTITY_MATCH_THRESHOLD_DEG) == {"dlib", "arcface", "adaface"}
    assert identity_match_threshold("dlib-torch") == identity_match_threshold("dlib") == IDENTITY_MATCH_THRESHOLD_DEG["dlib"]
    assert identity_match_threshold("arcface-onnx") == IDENTITY_MATCH_THRESHOLD_DEG["arcface"]
    from honestface.errors import ConfigError

    with pytest.raises(ConfigError, match="match_threshold"):
        identity_match_threshold("test-identity")


@pytest.mark.slow
def test_identity_threshold_separates_lfw_people(shared_data, pipeline, detector):
    """Every 12th LFW person (31 people, 4 photos each): a photo matches the references made
    from the person's 3 other raw photos below the dlib threshold, and the references of the
    next 3 people stay above it (measured on 150 people: README "Face analysis")."""
    folders = sorted(p for p in (shared_data / "lfw").iterdir() if p.is_dir())[::12]
    sets, probes = [], []
    for folder in folders:
        photos = [load_image(p) for p in sorted(folder.glob("*.jpg"))[:4]]
        aligned = align_reference_photos(photos, pipeline.image_size, detector)
        if len(aligned.kept) == 4:
            probes.append(aligned.images[0])
            sets.append(pipeline.encode_references(aligned.images[1:]))
    assert len(sets) >= 25
    threshold = pipeline.match_threshold
    assert threshold == IDENTITY_MATCH_THRESHOLD_DEG["dlib"]
    faces = torch.stack(probes)
    same = torch.stack([pipeline.identity_distance(faces[i:i + 1], refs)[0] for i, refs in enumerate(sets)])
    different = torch.stack([pipeline.identity_distance(faces, refs) for refs in sets])  # (people, people)
    others = torch.cat([different.diagonal(k) for k in (1, 2, 3)])
    report = f"same max {same.max():.1f}, different min {others.min():.1f}, threshold {threshold}"
    assert (same < threshold).float().mean() >= 0.95, report
    assert (others < threshold).float().mean() <= 0.03, report
    assert same.median() < others.median() - 8, report
