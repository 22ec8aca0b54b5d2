"""One-step restorer: schedule, Eq. 3 against diffusers, VAE modes, LoRA merge."""

from __future__ import annotations

import pytest
import torch

from honestface.config import DiffusionConfig, HonestFaceConfig, LoRAConfig
from honestface.errors import CheckpointError
from honestface.models import build_diffusers
from honestface.models.restorer import OneStepRestorer, one_step_x0, training_alphas_cumprod


@pytest.fixture(scope="module")
def tiny():
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    return config, unet, vae


def randomize_lora(restorer: OneStepRestorer, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in restorer.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def test_schedule_matches_diffusers_sd21():
    from diffusers import DDPMScheduler

    from honestface.config import read_sd21_config

    scheduler = DDPMScheduler.from_config(read_sd21_config("scheduler"))
    ours = training_alphas_cumprod(HonestFaceConfig.from_preset("sd21").diffusion)
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours.float(), scheduler.alphas_cumprod, rtol=0, atol=0)
    assert abs(float(ours[399]) - float(scheduler.alphas_cumprod[399])) < 1e-7


def test_one_step_equals_the_predicted_original_sample_of_diffusers():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)
    abar = training_alphas_cumprod(DiffusionConfig())
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    expected = scheduler.step(eps, 399, latent).pred_original_sample
    torch.testing.assert_close(one_step_x0(latent, eps, abar[399]), expected, rtol=1e-12, atol=1e-12)
    # float32 input: computed in float64 and cast back, i.e. the float64 result rounded once.
    result32 = one_step_x0(latent.float(), eps.float(), abar[399])
    assert result32.dtype == torch.float32
    wide = (latent.float().double() - (1 - abar[399]).sqrt() * eps.float().double()) / abar[399].sqrt()
    assert torch.equal(result32, wide.float())


def test_restorer_forward_against_a_hand_computation(tiny):
    config, unet, vae = tiny
    restorer = OneStepRestorer(unet, vae, config.diffusion).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    prompt = torch.randn(2, 77, config.token_dim, generator=generator)
    with torch.no_grad():
        out = restorer(images, prompt)
        z_l = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
        eps = unet(z_l, torch.tensor([399, 399]), encoder_hidden_states=prompt).sample
        abar = training_alphas_cumprod(config.diffusion)[399]
        z_h = ((z_l.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).float()
        x_h = vae.decode(z_h / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(out.latent_lq, z_l)
    torch.testing.assert_close(out.noise_pred, eps)
    torch.testing.assert_close(out.latent_restored, z_h)
    torch.testing.assert_close(out.image, x_h)
    assert out.image.shape == (2, 3, 64, 64) and float(out.image.abs().max()) <= 1.0


def test_sampled_latents_are_seeded(tiny):
    config, unet, vae = tiny
    sample_config = DiffusionConfig(latent_mode="sample")
    restorer = OneStepRestorer(unet, vae, sample_config)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = restorer.encode(images, torch.Generator().manual_seed(5))
        b = restorer.encode(images, torch.Generator().manual_seed(5))
        c = restorer.encode(images, torch.Generator().manual_seed(6))
        mode = OneStepRestorer(unet, vae, DiffusionConfig()).encode(images)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, mode)


def test_lora_merge_gives_the_same_result_and_round_trips():
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    restorer = OneStepRestorer(unet, vae, config.diffusion).eval()
    restorer.add_lora(config.lora)
    randomize_lora(restorer)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    prompt = torch.randn(2, 77, config.token_dim)
    with torch.no_grad():
        unmerged = restorer(images, prompt)
        state = restorer.lora_state_dict()
        restorer.merge_lora()
        merged = restorer(images, prompt)
        restorer.unmerge_lora()
        again = restorer(images, prompt)
        base_unet, _ = build_diffusers(config, seed=0)
        plain = OneStepRestorer(base_unet, vae, config.diffusion).eval()(images, prompt)
    torch.testing.assert_close(merged.noise_pred, unmerged.noise_pred, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged.image, unmerged.image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again.noise_pred, unmerged.noise_pred, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain.noise_pred, unmerged.noise_pred, atol=1e-4)  # the adapter acts
    # Every linear and conv layer named by the targets has an adapter; convs have 4-D factors.
    assert any(k.endswith("conv1.lora_A.weight") and v.dim() == 4 for k, v in state.items())
    assert any(k.endswith("attn2.to_k.lora_A.weight") and v.shape[0] == config.lora.rank for k, v in state.items())
    assert all(k.startswith("unet.") for k in state)
    assert not any("time_emb" in k or "norm" in k for k in state)


def test_lora_state_dict_errors():
    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    restorer = OneStepRestorer(unet, vae, config.diffusion)
    restorer.add_lora(config.lora)
    state = restorer.lora_state_dict()
    assert restorer.load_lora_state_dict(state) == len(state)
    missing = dict(state)
    missing.pop(next(k for k in state if "lora_B" in k))
    with pytest.raises(CheckpointError, match="1 LoRA keys missing"):
        restorer.load_lora_state_dict(missing)
    with pytest.raises(CheckpointError, match="match no UNet module"):
        restorer.load_lora_state_dict({**state, "unet.not_a_layer.lora_A.weight": torch.zeros(1)})
    wrong_rank = {k: (v[:2] if "lora_A" in k else v) for k, v in state.items()}
    with pytest.raises(CheckpointError, match="LoRA rank"):
        restorer.load_lora_state_dict(wrong_rank)
    with pytest.raises(Exception, match="already has a LoRA"):
        restorer.add_lora(LoRAConfig())


def test_lora_targets_follow_peft_suffix_rule_on_sd21():
    """The preset's patterns select what peft itself would select on SD 2.1-base: 257
    linear/conv modules, ``conv_in`` not among them (a substring match gave 258)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from honestface.config import OSDFACE_LORA_TARGETS, read_sd21_config
    from honestface.models.restorer import lora_module_names

    with torch.device("meta"):  # the full-size UNet without memory
        unet = UNet2DConditionModel.from_config(read_sd21_config("unet"))
    ours = lora_module_names(unet, OSDFACE_LORA_TARGETS)
    peft_config = LoraConfig(r=16, lora_alpha=16, target_modules=list(OSDFACE_LORA_TARGETS))
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    theirs = [name for name, module in unet.named_modules()
              if isinstance(module, layers) and check_target_module_exists(peft_config, name)]
    assert ours == theirs
    assert len(ours) == 257 and "conv_in" not in ours and "conv_out" in ours
    substring = [name for name, module in unet.named_modules()
                 if type(module) in layers and any(p in name for p in OSDFACE_LORA_TARGETS)]
    assert sorted(set(substring) - set(ours)) == ["conv_in"]
