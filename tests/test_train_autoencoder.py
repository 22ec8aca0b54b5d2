"""Stage 1: the autoencoder program on real faces, its resume, its export, and stage 2 on top
of a frozen pretrained VAE; the degradation options of a none-to-heavy training range."""

from __future__ import annotations

import pytest
import torch

from honestface.config import HonestFaceConfig
from honestface.degradation import DegradationConfig, apply_degradation, degrade, sample_degradation_params
from honestface.errors import ConfigError
from training.train import Trainer, build_model, load_pretrained_vae
from training.train_autoencoder import AutoencoderTrainer, load_autoencoder_config, psnr

from test_train import REPO_ROOT, tiny_config

NANO_VAE = REPO_ROOT / "training" / "configs" / "nano_vae.yaml"

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def tiny_vae_overrides() -> list[str]:
    """The tiny model preset's VAE at 64 px (nano_vae.yaml's program, test sizes)."""
    config = HonestFaceConfig.from_preset("tiny").vae
    return [f"model.config.{key}={value}" for key, value in config.items()]


def autoencoder_config(root, output, *overrides: str):
    return load_autoencoder_config(NANO_VAE, [
        f"data.roots=[{root}]", f"output_dir={output}", "data.image_size=64", "data.val_fraction=0.25",
        "train.batch_size=4", "train.log_every=0", "train.val_batch_size=4", "train.val_batches=1",
        "train.num_threads=1", "train.mixed_precision='no'", "model.scaling_samples=8", *tiny_vae_overrides(), *overrides])


def test_autoencoder_learns_resumes_exactly_and_exports(celeba_subset, tmp_path):
    straight = AutoencoderTrainer(autoencoder_config(celeba_subset, tmp_path / "a", "train.max_steps=4",
                                                     "train.val_every=4", "train.checkpoint_every=2"))
    val = straight.val_set
    gt = torch.stack([val[i]["gt"] for i in range(4)])
    before = float(psnr(straight.reconstruct(gt), gt).mean())
    summary = straight.run()
    after = float(psnr(straight.reconstruct(gt), gt).mean())
    assert after > before, "four steps of reconstruction training must improve the reconstruction"
    assert summary["validation"]["val/psnr"] == pytest.approx(after, abs=1e-3)

    # 2 steps, a new process-like trainer resuming from the step-2 checkpoint, 2 more steps
    first = AutoencoderTrainer(autoencoder_config(celeba_subset, tmp_path / "b", "train.max_steps=2",
                                                  "train.val_every=0", "train.checkpoint_every=2"))
    first.run()
    resumed = AutoencoderTrainer(autoencoder_config(celeba_subset, tmp_path / "b", "train.max_steps=4",
                                                    "train.val_every=0", "train.checkpoint_every=2"),
                                 resume="auto")
    assert resumed.step == 2
    resumed.run()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resuming"

    # the export is a diffusers folder with the latents' scaling factor, read by stage 2
    export = tmp_path / "a" / "vae"
    assert (export / "config.json").is_file() and (export / "diffusion_pytorch_model.safetensors").is_file()
    with torch.no_grad():
        latents = torch.cat([straight.model.encode(straight.train_set[(i, 0)]["gt"][None] * 2 - 1).latent_dist.mode()
                             for i in torch.randperm(len(straight.train_set),
                                                     generator=torch.Generator().manual_seed(0))[:8].tolist()])
    config = HonestFaceConfig.from_preset("tiny")
    vae = load_pretrained_vae(export, config)
    assert vae.config.scaling_factor == pytest.approx(1.0 / float(latents.std()), rel=1e-4)
    assert config.vae["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), vae.state_dict().items()):
        assert torch.equal(a, b), name


def test_stage_two_keeps_the_pretrained_vae_frozen(celeba_subset, tmp_path):
    stage1 = AutoencoderTrainer(autoencoder_config(celeba_subset, tmp_path / "vae", "train.max_steps=1",
                                                   "train.val_every=0", "train.checkpoint_every=0"))
    stage1.run()
    config = tiny_config(celeba_subset, tmp_path / "stage2", "train.max_steps=2", "train.val_every=0",
                         "train.checkpoint_every=0", f"model.vae={tmp_path / 'vae' / 'vae'}", "model.freeze=[vae]",
                         "losses.ea_dists=0", "losses.identity=0", "losses.mfa=0", "losses.adversarial=0",
                         "model.overrides={bundled: [vae]}")
    trainer = Trainer(config)
    pretrained = {k: v.clone() for k, v in stage1.model.state_dict().items()}
    for name, value in trainer.model.vae.state_dict().items():
        assert torch.equal(value, pretrained[name]), f"{name} is not the stage-1 weight"
    optimised = {id(p) for p in trainer.g_params}
    assert not any(id(p) in optimised for p in trainer.model.vae.parameters())
    trainer.run()
    for name, value in trainer.model.vae.state_dict().items():
        assert torch.equal(value, pretrained[name]), f"{name} changed although the VAE is frozen"


def test_pretrained_vae_must_match_the_model(tmp_path):
    from diffusers import AutoencoderKL

    config = HonestFaceConfig.from_preset("tiny")
    other = {k: v for k, v in config.vae.items() if not k.startswith("_")}
    other["latent_channels"] = 8
    AutoencoderKL.from_config(other).save_pretrained(str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="latent_channels"):
        load_pretrained_vae(tmp_path / "other", config)
    with pytest.raises(ConfigError, match="train_autoencoder.py"):
        load_pretrained_vae(tmp_path / "missing", config)


def test_model_section_checks_frozen_parts():
    from training.config import ModelSection

    with pytest.raises(ConfigError, match="unknown part"):
        ModelSection(init="random", freeze=["decoder"])
    with pytest.raises(ConfigError, match="model.vae"):
        ModelSection(init="sd21", sd21="x", vae="folder")
    assert build_model  # imported for the stage-2 path above


# ----------------------------------------------------------------------------- degradation


def test_clean_probability_leaves_images_as_they_are():
    images = torch.rand(6, 3, 32, 32)
    config = DegradationConfig(kernel_size=9, blur_sigma=(2.0, 3.0), downsample_scale=(2.0, 4.0),
                               noise_sigma=(5.0, 10.0), clean_probability=1.0)
    out = degrade(images, config, generator=3)
    assert torch.equal(out, (images * 255).round() / 255)
    half = DegradationConfig(kernel_size=9, blur_sigma=(2.0, 3.0), downsample_scale=(2.0, 4.0),
                             noise_sigma=(5.0, 10.0), clean_probability=0.5)
    params = sample_degradation_params(200, half, generator=1)
    assert 70 < int(params.clean.sum()) < 130
    out = apply_degradation(images[:1].expand(200, -1, -1, -1).contiguous()[:8], params.__class__(
        **{k: (v[:8] if isinstance(v, torch.Tensor) and v.numel() else v) for k, v in vars(params).items()}), half)
    for index in range(8):
        same = torch.equal(out[index], (images[0] * 255).round() / 255)
        assert same == params.is_clean(index)


def test_severity_couples_parameters_and_default_draws_are_unchanged():
    base = dict(kernel_size=9, blur_sigma=(0.1, 4.5), downsample_scale=(1.0, 9.0), noise_sigma=(0.0, 12.0),
                jpeg_quality=(35.0, 95.0), isotropic_probability=1.0)
    independent = sample_degradation_params(2000, DegradationConfig(**base), generator=5)
    coupled = sample_degradation_params(2000, DegradationConfig(**base, severity_spread=0.0), generator=5)
    # spread 0: every parameter sits at the same relative place of its range, JPEG reversed
    place_blur = (coupled.sigma_x - 0.1) / 4.4
    assert torch.allclose((coupled.scale - 1.0) / 8.0, place_blur, atol=1e-5)
    assert torch.allclose(coupled.noise_sigma / 12.0, place_blur, atol=1e-5)
    assert torch.allclose((95.0 - coupled.jpeg_quality.float()) / 60.0, place_blur, atol=0.01)
    # evenly from none to heavy: about a fifth of the images in the lightest fifth
    assert 0.15 < float((place_blur < 0.2).float().mean()) < 0.25
    corr = torch.corrcoef(torch.stack([independent.sigma_x, independent.scale]))[0, 1]
    assert abs(float(corr)) < 0.1
    # the options draw after everything else: the default stream of a seed is unchanged
    again = sample_degradation_params(2000, DegradationConfig(**base, clean_probability=0.3), generator=5)
    assert torch.equal(again.sigma_x, independent.sigma_x) and torch.equal(again.noise_seed, independent.noise_seed)
    with pytest.raises(ConfigError):
        DegradationConfig(severity_spread=2.0)
