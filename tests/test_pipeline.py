"""HonestFacePipeline: OSDFace mode, 1 and 5 references, batching, input handling, training entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honestface.config import HonestFaceConfig
from honestface.errors import ConfigError, ImageError
from honestface.image_io import resize_to
from honestface.models import HonestFaceModel, build_diffusers
from honestface.pipeline import HonestFacePipeline

from nano_helpers import ContentLandmarks, PooledIdentity, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pipeline(model):
    return HonestFacePipeline(model, ContentLandmarks(), PooledIdentity(), batch_size=2)


def faces(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(64, 64), mode="bilinear", align_corners=False)


def test_osdface_mode_without_references(model, pipeline):
    lq = faces(3, 0)
    restored = pipeline.restore(lq)
    with torch.no_grad():
        direct = model(lq)
    # the pipeline batches differently from the direct call: float32 round-off only
    torch.testing.assert_close(restored, direct.image, atol=1e-4, rtol=1e-4)
    assert bool((direct.reference_index == -1).all())
    torch.testing.assert_close(pipeline.restore(lq, [None, None, torch.zeros(0, 3, 64, 64)]), restored)
    assert restored.shape == (3, 3, 64, 64) and 0 <= float(restored.min()) and float(restored.max()) <= 1


def test_one_and_five_references_and_batching(model, pipeline):
    lq = faces(3, 1)
    one = faces(1, 2)
    five = faces(5, 3)
    batched = pipeline.restore(lq, [five, None, one])
    alone = [pipeline.restore(lq[0:1], [five]), pipeline.restore(lq[1:2]), pipeline.restore(lq[2:3], [one])]
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-4)
    without = pipeline.restore(lq)
    assert not torch.allclose(batched[0], without[0], atol=1e-4)  # references change the result
    torch.testing.assert_close(batched[1], without[1], atol=1e-5, rtol=1e-4)  # N = 0 is OSDFace
    assert torch.isfinite(batched).all()


def test_reference_choice_uses_landmarks(pipeline):
    lq = faces(1, 4)
    refs = faces(4, 5)
    refs[2] = lq[0]  # identical landmarks: A-LD 0
    batch = pipeline.prepare_references([refs])
    assert batch.mask.tolist() == [[True] * 4] and batch.landmarks.shape == (1, 4, 68, 2)
    assert batch.embeddings.shape == (1, 4, 16)
    out = pipeline.forward_prepared(lq, batch.images, batch.mask, pipeline.detect_landmarks(lq), batch.landmarks,
                                    batch.embeddings)
    assert out.reference_index.tolist() == [2]
    # Without a landmark backend the first reference is used (eyes at aligned-face positions).
    plain = HonestFacePipeline(pipeline.model, None, PooledIdentity())
    assert plain.forward_prepared(lq, batch.images, batch.mask, None, None, batch.embeddings).reference_index.tolist() == [0]


def test_input_conversions(pipeline):
    rgb = faces(1, 6)
    restored = pipeline.restore(rgb)
    gray = rgb.mean(dim=1, keepdim=True)
    white = torch.ones(1, 3, 64, 64)
    # One batch: grayscale repeated to RGB, opaque RGBA, fully transparent RGBA (-> white).
    converted = pipeline.restore(torch.cat([
        torch.cat([gray.expand(-1, 3, -1, -1), torch.ones(1, 1, 64, 64)], 1),
        torch.cat([rgb, torch.ones(1, 1, 64, 64)], 1),
        torch.cat([rgb, torch.zeros(1, 1, 64, 64)], 1)]))
    torch.testing.assert_close(pipeline.restore(gray), converted[:1])
    torch.testing.assert_close(converted[1:2], restored)
    torch.testing.assert_close(converted[2:3], pipeline.restore(white))
    torch.testing.assert_close(pipeline.restore(rgb[0]), restored)  # (3, H, W)

    odd = torch.rand(1, 3, 50, 70)
    at_model_size = pipeline.restore(odd, output_size=64)
    assert at_model_size.shape == (1, 3, 64, 64)
    torch.testing.assert_close(at_model_size, pipeline.restore(resize_to(odd, 64)))
    out = pipeline.restore(odd)
    assert out.shape == (1, 3, 50, 70)
    torch.testing.assert_close(out, resize_to(at_model_size, (50, 70)))


def test_bad_inputs_are_clear_errors(model, pipeline):
    lq = faces(2, 7)
    nan = lq.clone()
    nan[1, 0, 3, 3] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        pipeline.restore(nan)
    with pytest.raises(ImageError, match="1, 3 or 4 channels"):
        pipeline.restore(torch.rand(1, 2, 64, 64))
    with pytest.raises(ImageError, match="float"):
        pipeline.restore((lq * 255).to(torch.uint8))
    with pytest.raises(ImageError, match="one entry"):
        pipeline.restore(lq, [faces(1, 8)])
    with pytest.raises(ImageError, match=r"references\[0\]"):
        bad_ref = faces(1, 9)
        bad_ref[0, 0, 0, 0] = float("inf")
        pipeline.restore(lq, [bad_ref, None])
    with pytest.raises(ImageError, match="shape"):
        pipeline.restore(torch.rand(64, 64))
    with pytest.raises(ImageError, match="lq must have shape"):
        model(torch.rand(1, 3, 32, 32))

    class WrongDim(PooledIdentity):
        embedding_dim = 512
    # the error names the recogniser to choose: the one the model was trained with
    with pytest.raises(ConfigError, match=f"512-d .* choose identity backend '{model.config.identity_backend}', the one "
                                          "the model was trained with"):
        HonestFacePipeline(model, None, WrongDim())


def test_progress_reports_every_chunk(pipeline):
    calls = []
    pipeline.restore(faces(3, 10), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (2, 3), (3, 3)]


def test_forward_prepared_is_differentiable_in_the_trainable_parts():
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    model = HonestFaceModel(config, unet, vae)
    model.set_trainable()
    pipe = HonestFacePipeline(model)
    model.train()
    lq = faces(2, 11)
    refs = faces(6, 12).view(2, 3, 3, 64, 64)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = pipe.forward_prepared(lq, refs, mask, None, None, torch.randn(2, 3, 16))
    assert out.image.shape == (2, 3, 64, 64)
    assert out.latent_lq.shape == out.latent_restored.shape == (2, 4, 16, 16)
    (out.image.square().mean() + out.latent_restored.square().mean()).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    for name, parameter in model.named_parameters():
        if id(parameter) in trainable:
            assert parameter.requires_grad, name
        else:
            assert parameter.grad is None, name
    lora_grads = [p.grad for n, p in model.unet.named_parameters() if "lora_A" in n]
    assert lora_grads and all(g is not None for g in lora_grads[:5])
    # lora_B starts at zero, so only B gets gradients at the first step of a fresh adapter.
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.unet.named_parameters() if "lora_B" in n)
    assert model.vre.projection.conv1.weight.grad is not None
    assert model.ide.identity_encoder.queries.grad is not None
    assert model.ide.feature_extractor.projection.weight.grad is not None
    assert all(p.grad is None for p in model.vae.parameters())


def test_pipeline_from_files_in_the_real_formats(tmp_path_factory):
    from honestface.testing.make_tiny_models import HONESTFACE_CHECKPOINT, OSDFACE_FOLDER, make_tiny_models

    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    honest = HonestFacePipeline.from_pretrained("tiny-sd21-base.safetensors", checkpoint=HONESTFACE_CHECKPOINT
                                                .split("/", 1)[1], osdface_dir=OSDFACE_FOLDER.split("/", 1)[1],
                                                models_dir=root)
    assert any(line.startswith("associate_2.ckpt: loaded") for line in honest.model.load_report)
    assert any(line.startswith("honestface-tiny.safetensors: loaded") for line in honest.model.load_report)
    lq = faces(2, 13)
    refs = torch.rand(2, 3, 64, 64)
    restored = honest.restore(lq, [refs, None])
    assert restored.shape == (2, 3, 64, 64) and torch.isfinite(restored).all()
    osdface = HonestFacePipeline.from_pretrained(root / "diffusers" / "tiny-sd21-base",
                                                 osdface_dir=root / OSDFACE_FOLDER)
    assert [line.split(":")[0] for line in osdface.model.load_report[-3:]] == [
        "associate_2.ckpt", "embedding_change_weights.pth", "pytorch_lora_weights.safetensors"]
    # OSDFace weights have no trained identity embedder: references are ignored.
    torch.testing.assert_close(osdface.restore(lq, [refs, refs]), osdface.restore(lq))


def test_identity_backend_of_another_family_is_warned(caplog):
    from honestface.pipeline import warn_on_identity_mismatch

    with caplog.at_level("WARNING", logger="honestface.pipeline"):
        warn_on_identity_mismatch("dlib", "dlib-torch")  # one network, run by dlib or PyTorch
        warn_on_identity_mismatch("arcface-torch", "arcface-onnx")
        assert not caplog.records
        warn_on_identity_mismatch("arcface-onnx", "dlib-torch")
    assert "trained with ('dlib-torch')" in caplog.text
