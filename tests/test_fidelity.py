"""Automatic fidelity: the estimator, its checkpoint round trip, the pipeline's blend and the
loss that trains it (against independent computations)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honestface.config import FidelityConfig, HonestFaceConfig
from honestface.errors import ConfigError
from honestface.loaders.checkpoint import save_checkpoint
from honestface.losses import LossConfig, TrainingObjective
from honestface.models import HonestFaceModel, build_diffusers
from honestface.models.fidelity import FidelityEstimator
from honestface.pipeline import HonestFacePipeline, RestoreInfo, load_model

from test_bundled import bundled_config, faces


def fidelity_model(seed: int = 0) -> HonestFaceModel:
    config = bundled_config()
    config.fidelity = FidelityConfig(enabled=True, resolution=64, channels=8)
    unet, vae = build_diffusers(config, seed)
    torch.manual_seed(seed + 1)
    model = HonestFaceModel(config, unet, vae).eval()
    with torch.no_grad():  # a head that does not sit at w = 0.5 for every face
        model.fidelity.mlp[2].weight.normal_(0, 0.5)
    return model


def test_estimator_gives_one_weight_per_face_in_0_1():
    estimator = FidelityEstimator(FidelityConfig(resolution=32, channels=8)).eval()
    lq, restored = torch.rand(5, 3, 64, 64), torch.rand(5, 3, 64, 64)
    weight = estimator(lq, restored)
    assert weight.shape == (5,) and bool(((weight > 0) & (weight < 1)).all())
    # a zero output layer gives exactly 0.5 ("undecided")
    with torch.no_grad():
        estimator.mlp[2].weight.zero_()
        estimator.mlp[2].bias.zero_()
    assert torch.equal(estimator(lq, restored), torch.full((5,), 0.5))


def test_checkpoint_round_trip_and_pipeline_blend(tmp_path):
    model = fidelity_model()
    path = save_checkpoint(model, tmp_path / "fidelity.safetensors")
    loaded = load_model(checkpoint=path).eval()
    assert loaded.config.fidelity == model.config.fidelity and loaded.fidelity is not None
    for (name, a), (_, b) in zip(model.fidelity.state_dict().items(), loaded.fidelity.state_dict().items()):
        assert torch.equal(a, b), name
    lq, _ = faces(batch=3)
    pipeline = HonestFacePipeline(loaded, batch_size=2)
    info = RestoreInfo()
    raw = pipeline.restore(lq, fidelity=False, info=info)
    assert info.fidelity == []
    blended = pipeline.restore(lq, info=info)
    weight = torch.tensor(info.fidelity)
    # independent: the model's weight of each face from the raw restoration
    with torch.no_grad():
        expected_w = model.fidelity(lq, model(lq).image.clamp(0, 1))
    torch.testing.assert_close(weight, expected_w, atol=1e-5, rtol=0)
    torch.testing.assert_close(blended, (lq + expected_w.view(-1, 1, 1, 1) * (raw - lq)).clamp(0, 1),
                               atol=1e-5, rtol=0)
    assert not torch.allclose(blended, raw, atol=1e-3)


def test_weights_without_estimator_refuse_a_required_blend():
    config = bundled_config()
    unet, vae = build_diffusers(config, 0)
    pipeline = HonestFacePipeline(HonestFaceModel(config, unet, vae).eval())
    lq, _ = faces(batch=1)
    info = RestoreInfo()
    out = pipeline.restore(lq, info=info)  # the paper's path: nothing to blend
    assert info.fidelity == [] and out.shape == lq.shape
    with pytest.raises(ConfigError, match="no automatic-fidelity estimator"):
        pipeline.restore(lq, fidelity=True)


def test_fidelity_loss_trains_only_the_estimator():
    model = fidelity_model()
    model.set_trainable()
    objective = TrainingObjective.build(LossConfig(mse=0.0, ea_dists=0.0, identity=0.0, mfa=0.0, adversarial=0.0,
                                                   fidelity=1.0, pretrained=False), model.unet,
                                        model.restorer.alphas_cumprod.float())
    lq, _ = faces(batch=2)
    gt = torch.rand_like(lq)
    output = model(lq)
    terms = objective.generator_losses(output.image, gt, lq=lq, fidelity=output.fidelity)
    change, wanted = (output.image.detach() - lq).flatten(1), (gt - lq).flatten(1)
    best = ((change * wanted).sum(1) / change.pow(2).sum(1)).clamp(0, 1)
    expected = F.mse_loss(output.fidelity, best.detach())
    torch.testing.assert_close(terms["fidelity"], expected)
    terms["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fidelity.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.unet.parameters())
    with pytest.raises(ConfigError, match="fidelity estimator"):
        objective.generator_losses(output.image, gt, lq=lq, fidelity=None)


def test_older_configs_read_without_the_fidelity_section():
    data = HonestFaceConfig.from_preset("tiny").to_dict()
    del data["fidelity"]
    assert HonestFaceConfig.from_dict(data).fidelity.enabled is False


def test_optimal_blend_weight_minimises_the_blend_error():
    from honestface.losses.objective import optimal_blend_weight

    generator = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(3, 3, 16, 16, generator=generator), torch.rand(3, 3, 16, 16, generator=generator)
    restored = torch.stack([gt[0], lq[1] + 0.5 * (gt[1] - lq[1]), lq[2] - (gt[2] - lq[2])]).clamp(0, 1)
    best = optimal_blend_weight(lq, restored, gt)
    grid = torch.linspace(0, 1, 1001)
    errors = torch.stack([((lq + w * (restored - lq) - gt) ** 2).flatten(1).sum(1) for w in grid])
    torch.testing.assert_close(best, grid[errors.argmin(dim=0)], atol=1.5e-3, rtol=0)
    assert float(best[0]) == pytest.approx(1.0, abs=1e-4) and float(best[2]) == 0.0


def test_estimator_computes_in_float32_in_a_bf16_model():
    estimator = FidelityEstimator(FidelityConfig(resolution=32, channels=8)).eval()
    lq, restored = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    expected = estimator(lq, restored)
    half = estimator.to(torch.bfloat16)
    torch.testing.assert_close(half(lq.bfloat16(), restored.bfloat16()), expected, atol=2e-2, rtol=0)
    one = half(lq[:1].bfloat16(), restored[:1].bfloat16())  # one face: running statistics
    assert one.dtype == torch.float32 and one.shape == (1,)
