"""Every road from model files to a model gives the same weights and the same faces.

The library (``HonestFacePipeline.from_pretrained`` / ``load_model``), the CLI
(``build_pipeline``), the trainer's ``init: checkpoint`` and a model put together by hand
from the files' own readers are compared on the tiny models folder. (The ComfyUI loader node
is compared in ``tests/test_nodes.py``.)
"""

from __future__ import annotations

import pytest
import torch

from honestface.testing import make_tiny_models as tiny

SD = "tiny-sd21-base.safetensors"
CHECKPOINT = "honestface-tiny.safetensors"
OSDFACE = "osdface-tiny"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny.make_tiny_models(root, seed=0)
    return root


def _faces() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _restore(model) -> torch.Tensor:
    from honestface.pipeline import HonestFacePipeline

    torch.manual_seed(0)
    refs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    return HonestFacePipeline(model).restore(_faces(), [refs, None])


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: str | None = None) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    if skip is not None:
        state_a = {k: v for k, v in state_a.items() if not k.startswith(skip)}
        state_b = {k: v for k, v in state_b.items() if not k.startswith(skip)}
    assert sorted(state_a) == sorted(state_b)
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


def by_hand(models, merge_lora: bool):
    """The tiny HonestFace model put together from each file's own reader, no loader module."""
    from honestface.loaders.checkpoint import read_checkpoint
    from honestface.loaders.osdface import load_osdface
    from honestface.loaders.sd21 import load_sd21
    from honestface.models.honestface import HonestFaceModel
    from honestface.models.vgg import load_vgg16_state_dict

    config, state = read_checkpoint(models / tiny.HONESTFACE_CHECKPOINT)
    sd = load_sd21(models / tiny.SD_CHECKPOINT)
    vgg = load_vgg16_state_dict(models / "honestface" / config.ide.vgg_file)
    model = HonestFaceModel(config, sd.unet, sd.vae, vgg_state_dict=vgg, lora=False)
    load_osdface(model, models / tiny.OSDFACE_FOLDER, parts=("vq",))
    model.restorer.add_lora(config.lora)
    model.load_trainable_state_dict(state, source="by hand")
    if merge_lora:
        model.restorer.merge_lora()
    return model


def test_library_cli_and_hand_built_models_are_the_same(models):
    from honestface.cli.restore import build_pipeline
    from honestface.pipeline import HonestFacePipeline, load_model

    # float32: the hand-built model is compared bit for bit ("auto" is bf16 on some CPUs)
    library = HonestFacePipeline.from_pretrained(SD, checkpoint=CHECKPOINT, osdface_dir=OSDFACE,
                                                 models_dir=models, dtype="float32").model
    cli = build_pipeline(SD, CHECKPOINT, osdface=OSDFACE, models_dir=models, landmarks=None, dtype="float32").model
    hand = by_hand(models, merge_lora=True)
    assert_same_weights(library, hand)
    assert_same_weights(cli, hand)
    assert library.load_report == cli.load_report
    expected = _restore(hand)
    assert torch.equal(_restore(library), expected)
    assert torch.equal(_restore(cli), expected)
    assert torch.equal(_restore(load_model(sd21=SD, checkpoint=CHECKPOINT, osdface_dir=OSDFACE,
                                           models_dir=models)), expected)


def test_training_init_from_a_checkpoint_is_the_unmerged_library_model(models):
    from honestface.pipeline import load_model
    from training.config import ModelSection
    from training.train import build_model

    section = ModelSection(preset="tiny", init="checkpoint", sd21=SD, osdface=OSDFACE, checkpoint=CHECKPOINT,
                           models_dir=str(models))
    trained = build_model(section, seed=0)
    library = load_model(sd21=SD, checkpoint=CHECKPOINT, osdface_dir=OSDFACE, models_dir=models, merge_lora=False)
    assert_same_weights(trained, library)
    assert_same_weights(trained, by_hand(models, merge_lora=False))
    assert trained.restorer.lora_config is not None  # an adapter to train, not merged
    trainable = {name for name, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("restorer.unet.") for n in trainable)


def test_osdface_roads_are_the_same(models):
    from honestface.cli.restore import build_pipeline
    from honestface.pipeline import HonestFacePipeline

    library = HonestFacePipeline.from_pretrained(SD, osdface_dir=OSDFACE, models_dir=models).model
    cli = build_pipeline(SD, OSDFACE, models_dir=models).model
    assert_same_weights(library, cli, skip="ide.")  # OSDFace has no IDE: its random one is never run
    assert library.load_report == cli.load_report
    assert not library.accepts_references and not cli.accepts_references
    assert torch.equal(_restore(library), _restore(cli))


def test_the_checkpoint_config_is_read_once_per_load(models, monkeypatch):
    from honestface.loaders import checkpoint as checkpoint_module
    from honestface.pipeline import load_model

    reads = []
    original = checkpoint_module.read_checkpoint_metadata
    monkeypatch.setattr(checkpoint_module, "read_checkpoint_metadata", lambda path: reads.append(path) or original(path))
    load_model(sd21=SD, checkpoint=CHECKPOINT, osdface_dir=OSDFACE, models_dir=models)
    assert reads == [models / tiny.HONESTFACE_CHECKPOINT]
