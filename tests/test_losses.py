"""Training losses: DISTS/EA-DISTS/LPIPS formulas, identity (Eq. 8), GAN (Eq. 5), the objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from honestface.errors import ConfigError, MissingModelFileError
from honestface.image_io import list_images, load_images
from honestface.losses import (
    DISTS,
    LPIPS,
    EdgeAwareDISTS,
    IdentityLoss,
    LossConfig,
    TrainingObjective,
    build_dists,
    build_lpips,
    build_vgg16,
    sobel_edges,
)
from honestface.losses.perceptual import DISTS_CHANNELS, L2Pooling
from honestface.models.discriminator import (
    DiscriminatorConfig,
    LatentDiscriminator,
    base_unet_state_dict,
    discriminator_loss,
    forward_noise,
    generator_loss,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return build_vgg16(pretrained=False)


@pytest.fixture(scope="module")
def faces(shared_data) -> torch.Tensor:
    folders = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())
    same = list_images(folders[0])[:2]
    other = list_images(folders[1])[:1]
    return load_images(same + other, size=128)


def images(seed: int, batch: int = 2, size: int = 48) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_dists_on_input_channels_matches_the_formula(vgg):
    """With all weight on the 3 input channels, DISTS is the SSIM-like formula on pixels."""
    total = sum(DISTS_CHANNELS)
    alpha = torch.zeros(total)
    beta = torch.zeros(total)
    alpha[:3], beta[:3] = 1.0, 3.0
    dists = DISTS(vgg, alpha, beta)
    a, b = images(1), images(2)
    expected = []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        mx, my = x.mean(axis=(1, 2)), y.mean(axis=(1, 2))
        s1 = (2 * mx * my + 1e-6) / (mx ** 2 + my ** 2 + 1e-6)
        vx, vy = x.var(axis=(1, 2)), y.var(axis=(1, 2))
        cov = (x * y).mean(axis=(1, 2)) - mx * my
        s2 = (2 * cov + 1e-6) / (vx + vy + 1e-6)
        expected.append(1 - (s1.sum() * 1 + s2.sum() * 3) / 12)
    assert np.allclose(dists(a, b).numpy(), expected, atol=1e-5)
    assert torch.allclose(dists(a, a), torch.zeros(2), atol=1e-6)


def test_l2_pooling_is_hanning_weighted_energy():
    pool = L2Pooling(1)
    x = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    window = np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]) / 4.0
    padded = np.pad(x[0, 0].numpy() ** 2, 1)
    expected = np.array([[np.sqrt((padded[i:i + 3, j:j + 3] * window).sum() + 1e-12) for j in range(0, 6, 2)]
                         for i in range(0, 6, 2)])
    assert np.allclose(pool(x)[0, 0].numpy(), expected, atol=1e-6)


def test_ea_dists_is_dists_of_images_plus_dists_of_sobel_edges(vgg):
    dists = build_dists(pretrained=False, vgg=vgg)
    ea = EdgeAwareDISTS(dists)
    a, b = images(3), images(4)
    assert torch.allclose(ea(a, b), dists(b, a) + dists(sobel_edges(b), sobel_edges(a)), atol=1e-6)
    # the edge branch sees structure: a flat image and a striped one with the same mean
    flat = torch.full((1, 3, 32, 32), 0.5)
    stripes = flat.clone()
    stripes[..., (torch.arange(32) // 2) % 2 == 0, :] = 0.25  # stripes two rows wide
    stripes[..., (torch.arange(32) // 2) % 2 == 1, :] = 0.75
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # zero padding makes the border an edge
    assert sobel_edges(flat)[inside].max() < 2e-3 and sobel_edges(stripes)[inside].min() > 0.1


def test_sobel_edges_follow_the_release_formula():
    """The OSDFace release's edge map, written out pixel by pixel: grayscale = channel mean,
    unnormalised 3x3 Sobel (cross-correlation, zero padding), sqrt(gx^2 + gy^2 + 1e-6),
    the same map on all three channels."""
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    gray = np.pad(x.mean(dim=1).numpy(), ((0, 0), (1, 1), (1, 1)))  # zeros around
    expected = np.zeros((2, 7, 9))
    for b in range(2):
        for i in range(7):
            for j in range(9):
                p = gray[b, i:i + 3, j:j + 3]  # the 3x3 neighbourhood of pixel (i, j)
                gx = (p[0, 2] + 2 * p[1, 2] + p[2, 2]) - (p[0, 0] + 2 * p[1, 0] + p[2, 0])
                gy = (p[2, 0] + 2 * p[2, 1] + p[2, 2]) - (p[0, 0] + 2 * p[0, 1] + p[0, 2])
                expected[b, i, j] = np.sqrt(gx * gx + gy * gy + 1e-6)
    edges = sobel_edges(x)
    assert edges.shape == (2, 3, 7, 9)
    for channel in range(3):
        assert np.allclose(edges[:, channel].numpy(), expected, rtol=0, atol=1e-12)
    # a vertical step of height 1 on a grey image: |gx| = 1 + 2 + 1 = 4 next to the step
    step = torch.zeros(1, 3, 5, 6, dtype=torch.float64)
    step[..., 3:] = 1.0
    assert torch.allclose(sobel_edges(step)[0, 0, 2, 2:4], torch.full((2,), 4.0, dtype=torch.float64), atol=1e-6)


def test_lpips_matches_manual_first_stage(vgg):
    weights = [torch.zeros(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    weights[0] = torch.rand(1, 64, 1, 1, generator=torch.Generator().manual_seed(0))
    lpips = LPIPS(vgg, weights)
    a, b = images(5), images(6)
    fa, fb = vgg(a)[0], vgg(b)[0]
    na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    expected = ((na - nb) ** 2 * weights[0]).sum(1).mean(dim=(1, 2))
    assert torch.allclose(lpips(a, b), expected, atol=1e-6)
    assert torch.allclose(lpips(a, a), torch.zeros(2), atol=1e-7)


def test_perceptual_losses_grow_with_distortion(vgg, faces):
    dists, lpips = build_dists(pretrained=False, vgg=vgg), build_lpips(pretrained=False, vgg=vgg)
    clean = faces[:1]
    mild = (clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    strong = F.interpolate(F.interpolate(clean, size=16, mode="area"), size=128, mode="bilinear")
    for loss in (dists, lpips, EdgeAwareDISTS(dists)):
        assert loss(clean, clean).item() == pytest.approx(0.0, abs=1e-6)
        assert 0 < loss(mild, clean).item() < loss(strong, clean).item()


def test_missing_weight_files_are_start_up_errors(tmp_path):
    with pytest.raises(MissingModelFileError) as error:
        build_dists(pretrained=True, models_dir=tmp_path)
    assert "vgg16" in str(error.value)
    with pytest.raises(MissingModelFileError):
        TrainingObjective.build(LossConfig(mse=1, ea_dists=0, identity=0, adversarial=0, mfa=1,
                                           mfa_landmarks="dlib"), unet=None,
                                alphas_cumprod=torch.ones(10), models_dir=tmp_path)


def test_identity_loss_is_sum_of_cosine_distances(faces):
    from honestface.losses.objective import build_identity_backend

    recognisers = [build_identity_backend(name, False, None, "cpu") for name in ("arcface-torch", "adaface")]
    loss = IdentityLoss(recognisers)
    restored = faces[:2].clone().requires_grad_(True)
    target = faces[1:3]
    value = loss(restored, target)
    expected = sum(1 - F.cosine_similarity(r.embed(restored), r.embed(target), dim=-1) for r in recognisers)
    assert torch.allclose(value, expected, atol=1e-5)
    assert torch.allclose(loss(target, target), torch.zeros(2), atol=1e-5)
    value.sum().backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0
    assert all(not p.requires_grad for r in recognisers for p in r.parameters())


def test_identity_loss_with_real_recogniser_separates_people(faces):
    """dlib's descriptor (real weights, not differentiable) as an ensemble member."""
    from honestface.face import load_identity_backend

    loss = IdentityLoss([load_identity_backend("dlib")])
    same = loss(faces[1:2], faces[0:1]).item()
    other = loss(faces[2:3], faces[0:1]).item()
    assert loss(faces[0:1], faces[0:1]).item() == pytest.approx(0.0, abs=1e-5)
    assert same < other


def test_random_similarity_is_a_bounded_similarity_about_the_centre():
    from honestface.losses.identity import random_similarity

    assert torch.allclose(random_similarity(3, 64, 0.0), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))
    first = random_similarity(256, 128, 0.05, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, random_similarity(256, 128, 0.05, generator=torch.Generator().manual_seed(3)))
    linear, offset = first[:, :, :2].double(), first[:, :, 2].double()
    scale = torch.linalg.det(linear).sqrt()
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], -2)
    assert torch.allclose(linear, scale[:, None, None] * rotation, atol=1e-6)  # a similarity
    assert (scale - 1).abs().max() <= 0.05 + 1e-6 and angle.abs().max() <= 0.05 + 1e-6
    assert (scale - 1).abs().max() > 0.04 and angle.abs().max() > 0.04  # the range is used
    centre = torch.full((2,), 63.5, dtype=torch.float64)
    shift = (linear @ centre + offset) - centre  # where the centre goes
    assert shift.abs().max() <= 0.05 * 128 + 1e-4 and shift.abs().max() > 0.04 * 128
    with pytest.raises(ConfigError, match="jitter"):
        random_similarity(1, 64, 0.5)


def test_identity_loss_jitter_moves_restored_and_target_together(faces):
    """One random transform per sample, the same for both faces, before the recogniser."""
    from honestface.face import load_identity_backend
    from honestface.face.align import warp
    from honestface.losses.identity import random_similarity

    recogniser = load_identity_backend("dlib-torch")
    faces128 = faces  # (3, 3, 128, 128)
    loss = IdentityLoss([recogniser], jitter=0.05)
    restored = faces128[0:2].clone().requires_grad_(True)
    target = faces128[1:3]
    torch.manual_seed(7)
    value = loss(restored, target)
    torch.manual_seed(7)
    matrix = random_similarity(2, 128, 0.05)
    expected = 1 - F.cosine_similarity(recogniser.embed(warp(restored, matrix, (128, 128))),
                                       recogniser.embed(warp(target, matrix, (128, 128))), dim=-1)
    assert torch.allclose(value, expected, atol=1e-5)
    assert not torch.allclose(value, IdentityLoss([recogniser])(restored, target), atol=1e-4)  # it does jitter
    assert loss(target, target).abs().max() < 1e-5
    value.sum().backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        loss(faces128[:1], faces128[:1, :, :96, :96])


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    from honestface.config import HonestFaceConfig

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(HonestFaceConfig.from_preset("tiny").unet)


def test_gan_losses_are_eq5():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    d = torch.sigmoid(logits)
    assert torch.allclose(generator_loss(logits), -torch.log(d).mean())
    real = torch.tensor([1.0, -0.5, 2.0])
    expected = -torch.log(1 - d).mean() - torch.log(torch.sigmoid(real)).mean()
    assert torch.allclose(discriminator_loss(real, logits), expected)


def test_forward_noise_is_eq1():
    abar = torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)
    z, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([0, 700])
    noisy = forward_noise(z, t, abar, noise=eps)
    for i in range(2):
        a = abar[t[i]].item()
        assert torch.allclose(noisy[i], math.sqrt(a) * z[i] + math.sqrt(1 - a) * eps[i], atol=1e-6)


def test_discriminator_copies_base_weights_and_trains_only_its_adapter(tiny_unet):
    import copy

    from peft import LoraConfig, inject_adapter_in_model

    generator_unet = copy.deepcopy(tiny_unet)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "conv1"],
                                       init_lora_weights="gaussian"), generator_unet)
    base = base_unet_state_dict(generator_unet)
    assert set(base) == set(tiny_unet.state_dict())
    disc = LatentDiscriminator(generator_unet, DiscriminatorConfig(lora_rank=4, lora_alpha=4, head_hidden=16))
    own = base_unet_state_dict(disc)
    for key, value in own.items():
        if key.startswith(("conv_in.", "down_blocks.", "mid_block.")):
            assert torch.equal(value, tiny_unet.state_dict()[key]), key
    trainable = [n for n, p in disc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith(("head.", "null_prompt")) for n in trainable)
    assert not any("up_blocks" in n for n, _ in disc.named_parameters())

    # a few steps separate "real" and "fake" latent distributions
    optimizer = torch.optim.AdamW(disc.trainable_parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        real = torch.randn(4, 4, 8, 8, generator=generator) + 1.5
        fake = torch.randn(4, 4, 8, 8, generator=generator) - 1.5
        t = torch.randint(0, 300, (4,), generator=generator)
        loss = discriminator_loss(disc(real, t), disc(fake, t))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_lowpass_faces_is_a_gaussian_blur_scaled_with_the_face_size():
    from scipy.ndimage import gaussian_filter

    from honestface.losses.identity import lowpass_faces

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    out = lowpass_faces(images, 4.0)  # sigma 4 px at 128 px = 2 px at 64 px
    expected = gaussian_filter(images.double().numpy(), sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=3.0)
    assert torch.allclose(out.double(), torch.from_numpy(expected), atol=1e-5)
    assert lowpass_faces(images, 0.0) is images


def test_identity_loss_lowpass_sees_no_grid_at_the_latent_pitch(faces):
    """A faint 4 px grid changes a recogniser's embedding; under the low-pass it does not."""
    from honestface.face import load_identity_backend

    recogniser = load_identity_backend("dlib-torch")
    target = faces[:2]
    grid = torch.zeros(1, 1, 128, 128)
    grid[..., ::4, :] = 0.06
    grid[..., :, ::4] = 0.06
    gridded = (target + grid).clamp(0, 1).requires_grad_(True)
    plain = IdentityLoss([recogniser])(gridded, target)
    blurred = IdentityLoss([recogniser], lowpass=1.5)(gridded, target)
    assert plain.min() > 5 * blurred.max()
    blurred.sum().backward()
    assert gridded.grad.abs().sum() > 0  # still a loss to learn from
    with pytest.raises(ConfigError, match="low-pass"):
        IdentityLoss([recogniser], lowpass=-1)


def test_objective_switches_losses_and_weights_them(tiny_unet, faces):
    alphas = torch.linspace(0.999, 0.01, 1000)
    config = LossConfig(mse=1.0, ea_dists=0.5, identity=0.1, mfa=1.0, adversarial=0.02, pretrained=False,
                        mfa_landmarks="dlib", backend_options={"dlib": {"aligned_fallback": True}},
                        discriminator=DiscriminatorConfig(lora_rank=2, lora_alpha=2, head_hidden=8),
                        identity_jitter=0.02, identity_lowpass=1.5)
    objective = TrainingObjective.build(config, tiny_unet, alphas)
    assert objective.identity.jitter == 0.02 and objective.identity.lowpass == 1.5
    target = F.interpolate(faces[:2], size=64, mode="area")
    restored = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    restored.requires_grad_(True)
    mask = objective.mfa_masks(target)
    assert mask.shape == (2, 1, 64, 64) and mask.max() > 0.9 and mask.min() < 0.1
    latent = torch.randn(2, 4, 8, 8, requires_grad=True)
    terms = objective.generator_losses(restored, target, latent, mask)
    assert set(terms) == {"mse", "ea_dists", "identity", "mfa", "adversarial", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    weighted = (terms["mse"] + 0.5 * terms["ea_dists"] + 0.1 * terms["identity"] + terms["mfa"]
                + 0.02 * terms["adversarial"])
    assert torch.allclose(terms["total"], weighted)
    terms["total"].backward()
    assert restored.grad.abs().sum() > 0 and latent.grad.abs().sum() > 0
    d_loss = objective.discriminator_losses(latent.detach(), torch.randn(2, 4, 8, 8))
    assert torch.isfinite(d_loss)

    only_mse = TrainingObjective.build(LossConfig(ea_dists=0, identity=0, mfa=0, adversarial=0), tiny_unet, alphas)
    assert only_mse.ea_dists is None and only_mse.discriminator is None and only_mse.identity is None
    assert set(only_mse.generator_losses(restored, target)) == {"mse", "total"}

    # start_steps: a loss joins the total from its step on (and is not computed before)
    config.start_steps = {"identity": 10, "mfa": 5}
    early = objective.generator_losses(restored, target, latent, mask, step=4)
    assert set(early) == {"mse", "ea_dists", "adversarial", "total"}
    assert torch.allclose(early["total"], early["mse"] + 0.5 * early["ea_dists"] + 0.02 * early["adversarial"])
    assert set(objective.generator_losses(restored, target, latent, mask, step=5)) == \
        {"mse", "ea_dists", "mfa", "adversarial", "total"}
    assert "identity" in objective.generator_losses(restored, target, latent, mask, step=10)


def test_loss_config_validation():
    assert LossConfig.from_dict(LossConfig().to_dict()) == LossConfig()
    defaults = LossConfig()
    weights = (defaults.mse, defaults.ea_dists, defaults.identity, defaults.adversarial, defaults.mfa)
    assert weights == (1, 1, 0.1, 0.02, 1)
    with pytest.raises(ConfigError):
        LossConfig(mse=-1)
    with pytest.raises(ConfigError):
        LossConfig.from_dict({"perceptual": 1})
    with pytest.raises(ConfigError, match="start_steps names unknown"):
        LossConfig(start_steps={"perceptual": 3})
    with pytest.raises(ConfigError, match=">= 0"):
        LossConfig(start_steps={"identity": -1})
    assert LossConfig.from_dict({"start_steps": {"identity": "100"}}).start_steps == {"identity": 100}
    with pytest.raises(ConfigError):
        LossConfig(discriminator={"rank": 3})
    assert LossConfig.from_dict({"identity_jitter": "0.03"}).identity_jitter == 0.03
    with pytest.raises(ConfigError, match="identity_jitter"):
        LossConfig(identity_jitter=-0.1)
    assert LossConfig.from_dict({"identity_lowpass": "1.5"}).identity_lowpass == 1.5
    with pytest.raises(ConfigError, match="identity_lowpass"):
        LossConfig(identity_lowpass=20)


def test_perceptual_weights_load_from_their_release_formats(tmp_path):
    """VGG16 in torchvision's layout, DISTS alpha/beta as in its weights.pt, LPIPS lin layers."""
    from torchvision.models import vgg16

    folder = tmp_path / "honestface"
    folder.mkdir()
    torch.manual_seed(3)
    features = vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / "vgg16-397923af.pth")
    generator = torch.Generator().manual_seed(4)
    alpha = torch.rand(1, 1475, 1, 1, generator=generator)
    beta = torch.rand(1, 1475, 1, 1, generator=generator)
    torch.save({"alpha": alpha, "beta": beta}, folder / "dists_weights.pt")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
            for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, folder / "lpips_vgg.pth")

    dists = build_dists(pretrained=True, models_dir=tmp_path)
    assert torch.equal(dists.alpha, alpha.flatten()) and torch.equal(dists.beta, beta.flatten())
    assert torch.equal(dists.vgg.features[0].weight, features["0.weight"])
    lpips = build_lpips(pretrained=True, models_dir=tmp_path, vgg=dists.vgg)
    assert torch.equal(lpips.lin3, lins["lin3.model.1.weight"])
    a, b = images(7), images(8)
    assert torch.isfinite(dists(a, b)).all() and torch.isfinite(lpips(a, b)).all()

    from honestface.errors import CheckpointError

    torch.save({"weights": alpha}, folder / "dists_weights.pt")
    with pytest.raises(CheckpointError):
        build_dists(pretrained=True, models_dir=tmp_path)
