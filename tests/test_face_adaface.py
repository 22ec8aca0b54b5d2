"""AdaFace: the IR backbone read from a Lightning .ckpt laid out like the release files."""

from __future__ import annotations

import argparse

import pytest
import torch

from honestface.errors import CheckpointError, MissingModelFileError
from honestface.face import load_identity_backend
from honestface.face.adaface import AdaFace, AdaFaceIR, read_adaface
from honestface.face.arcface import recognition_crop
from honestface.testing.random_weights import randomize_batchnorm_statistics

LAYERS = (2, 1, 2, 1)


def random_adaface(seed: int = 0) -> AdaFaceIR:
    torch.manual_seed(seed)
    model = AdaFaceIR(LAYERS).eval()
    return randomize_batchnorm_statistics(model)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Lightning-style checkpoint: backbone under state_dict with 'model.', the AdaFace head,
    and hyper-parameters as an argparse Namespace (which torch's weights_only loader refuses)."""
    models = tmp_path_factory.mktemp("models")
    model = random_adaface()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)
    folder = models / "insightface" / "models" / "adaface"  # next to the insightface packs
    folder.mkdir(parents=True)
    torch.save({"epoch": 25, "global_step": 1000, "pytorch-lightning_version": "1.4.4", "state_dict": state,
                "hyper_parameters": argparse.Namespace(arch="ir_50", head="adaface", m=0.4, h=0.333)},
               folder / "adaface_test.ckpt")
    return models, model


def test_checkpoint_keys_follow_the_release_layout(checkpoint):
    _, model = checkpoint
    keys = set(model.state_dict())
    assert {"input_layer.0.weight", "input_layer.2.weight", "body.0.res_layer.3.weight",
            "body.2.shortcut_layer.0.weight", "output_layer.3.weight", "output_layer.4.running_var"} <= keys
    assert "body.0.shortcut_layer.0.weight" not in keys  # 64 -> 64: MaxPool shortcut, no weights
    assert "output_layer.4.weight" not in keys  # BatchNorm1d(affine=False)


def test_ckpt_loads_and_matches_the_original_network(checkpoint):
    models, original = checkpoint
    backend = load_identity_backend("adaface", models_dir=models, model="adaface/adaface_test.ckpt",
                                    input_alignment="arcface")
    assert isinstance(backend, AdaFace) and backend.network.layers_config == LAYERS
    faces = torch.rand(2, 3, 112, 112)
    faces[:, 0] *= 0.3  # R and B differ, so the channel order matters
    embeddings = backend.embed(faces)
    assert embeddings.shape == (2, 512)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    # AdaFace's convention: BGR, (pixel / 255 - 0.5) / 0.5.
    bgr = (faces[:, [2, 1, 0]] - 0.5) / 0.5
    with torch.no_grad():
        expected, _ = original(bgr)
        wrong_order, _ = original(faces * 2 - 1)
    assert torch.allclose(embeddings, expected, atol=1e-5)
    assert not torch.allclose(embeddings, wrong_order, atol=1e-3)


def test_ffhq_faces_and_gradients(checkpoint):
    models, original = checkpoint
    backend = load_identity_backend("adaface", models_dir=models, model="adaface/adaface_test.ckpt")
    faces = torch.rand(1, 3, 256, 256, requires_grad=True)
    embedding = backend.embed(faces)
    with torch.no_grad():
        expected, _ = original(recognition_crop(faces.detach()).flip(1) * 2 - 1)
    assert torch.allclose(embedding, expected, atol=1e-5)
    embedding.sum().backward()
    assert faces.grad.abs().sum() > 0


def test_wrong_and_missing_files(tmp_path, checkpoint):
    with pytest.raises(MissingModelFileError) as info:
        load_identity_backend("adaface", models_dir=tmp_path)
    message = info.value.args[0]
    assert "adaface/adaface_ir50_ms1mv2.ckpt" in message and str(tmp_path / "insightface" / "models") in message
    assert "facerestore_models" not in message
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.layer.weight": torch.zeros(3)}}, other)
    with pytest.raises(CheckpointError, match="AdaFace"):
        read_adaface(other)
    truncated = tmp_path / "truncated.ckpt"
    models, _ = checkpoint
    truncated.write_bytes((models / "insightface/models/adaface/adaface_test.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        read_adaface(truncated)


def test_the_old_facerestore_models_place_still_works_with_a_note(tmp_path, checkpoint, caplog):
    """Recognisers used to go in facerestore_models/, where restore packs list them as
    restorers: still read from there (default name too), with a warning logged once."""
    import logging
    import shutil

    models, original = checkpoint
    (tmp_path / "facerestore_models").mkdir()
    shutil.copy(models / "insightface/models/adaface/adaface_test.ckpt",
                tmp_path / "facerestore_models" / "adaface_ir50_ms1mv2.ckpt")
    with caplog.at_level(logging.WARNING, logger="honestface.paths"):
        first = load_identity_backend("adaface", models_dir=tmp_path, input_alignment="arcface")
        load_identity_backend("adaface", models_dir=tmp_path)
    notes = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notes) == 1 and "facerestore_models" in notes[0] and "insightface/models" in notes[0]
    faces = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected, _ = original(faces.flip(1) * 2 - 1)
    assert torch.allclose(first.embed(faces), expected, atol=1e-5)
