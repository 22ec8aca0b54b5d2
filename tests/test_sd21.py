"""SD 2.1-base loading: LDM key mapping, single-file and diffusers round trips, error paths."""

from __future__ import annotations

import json
import pickle
import socket

import pytest
import torch

from honestface.errors import CheckpointError, ConfigError, MissingModelFileError
from honestface.loaders import ldm_keys, sd21
from honestface.testing.offline import NetworkAccessError, network_disabled
from honestface.testing.tiny_sd import full_pattern_sd21_configs, tiny_sd21_configs


@pytest.fixture
def no_network():
    """Fail the test on any attempt to open a network connection."""
    with network_disabled():
        yield


def test_network_is_really_disabled(no_network):
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(NetworkAccessError):
        socket.socket().connect(("127.0.0.1", 9))


@pytest.fixture(scope="module")
def full_pattern():
    return sd21.build_sd21(full_pattern_sd21_configs(), seed=0)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key].to(sa[key].dtype)), key


def _assert_same_outputs(models: sd21.SD21Models, loaded: sd21.SD21Models) -> None:
    generator = torch.Generator().manual_seed(1)
    cross = models.unet.config.cross_attention_dim
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    prompt = torch.randn(2, 5, cross, generator=generator)
    timestep = torch.tensor([399, 10])
    with torch.no_grad():
        expected = models.unet(latents, timestep, encoder_hidden_states=prompt).sample
        actual = loaded.unet(latents, timestep, encoder_hidden_states=prompt).sample
        # Weights are bit-identical (checked above); kernels may still pick other
        # summation orders for differently laid-out tensors, hence a float tolerance.
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
        image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
        torch.testing.assert_close(loaded.vae.encode(image).latent_dist.mode(),
                                   models.vae.encode(image).latent_dist.mode(), rtol=1e-5, atol=1e-6)
        z = torch.randn(1, 4, 4, 4, generator=generator)
        torch.testing.assert_close(loaded.vae.decode(z).sample, models.vae.decode(z).sample, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- key mapping
def test_shipped_config_gives_the_real_sd21_key_layout():
    """Key counts and names of the real v2-1_512-ema-pruned checkpoint."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    configs = sd21.sd21_configs()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    unet_names = ldm_keys.ldm_names(tuple(unet.state_dict()), unet.config, "unet")
    vae_names = ldm_keys.ldm_names(tuple(vae.state_dict()), vae.config, "vae")
    assert len(set(unet_names.values())) == 686 and len(set(vae_names.values())) == 248
    names = set(unet_names.values()) | set(vae_names.values())
    for key in (
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.6.0.skip_connection.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.proj_out.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.decoder.up.0.block.2.conv2.weight",
        "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
        "first_stage_model.post_quant_conv.weight",
    ):
        assert key in names, key
    # the decoder's up.0 is the last (highest-resolution) diffusers up block
    assert vae_names["decoder.up_blocks.3.resnets.0.conv1.weight"] == "first_stage_model.decoder.up.0.block.0.conv1.weight"
    probe = unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    assert tuple(probe.shape) == (320, 1024)


@pytest.mark.parametrize("configs", [full_pattern_sd21_configs(), tiny_sd21_configs()], ids=["full-pattern", "tiny-preset"])
def test_ldm_mapping_agrees_with_diffusers_own_converter(configs):
    """Our diffusers->LDM names, read back by diffusers' LDM->diffusers converter, give the same tensors."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    models = sd21.build_sd21(configs, seed=3)
    unet_state = models.unet.state_dict()
    ldm = ldm_keys.unet_to_ldm_state_dict(unet_state, models.unet.config)
    back = convert_ldm_unet_checkpoint(dict(ldm), dict(models.unet.config))
    assert back.keys() == unet_state.keys()
    for key in unet_state:
        assert torch.equal(back[key], unet_state[key]), key

    vae_state = models.vae.state_dict()
    ldm_vae = ldm_keys.vae_to_ldm_state_dict(vae_state, models.vae.config)
    assert ldm_vae["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    back_vae = convert_ldm_vae_checkpoint(dict(ldm_vae), dict(models.vae.config))
    assert back_vae.keys() == vae_state.keys()
    for key in vae_state:
        assert torch.equal(back_vae[key].reshape(vae_state[key].shape), vae_state[key]), key


def test_unknown_keys_are_rejected():
    config = full_pattern_sd21_configs()["unet"]
    with pytest.raises(KeyError):
        ldm_keys.unet_key_to_ldm("add_embedding.linear_1.weight", config)
    with pytest.raises(KeyError):
        ldm_keys.vae_key_to_ldm("encoder.mid_block.attentions.0.something.weight", full_pattern_sd21_configs()["vae"])


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip(tmp_path, full_pattern, no_network, suffix):
    path = sd21.save_sd21_single_file(
        tmp_path / f"model{suffix}", full_pattern.unet, full_pattern.vae,
        extra_tensors={"cond_stage_model.model.token_embedding.weight": torch.zeros(7, 4)})
    loaded = sd21.load_sd21(path)
    _assert_same_weights(full_pattern.unet, loaded.unet)
    _assert_same_weights(full_pattern.vae, loaded.vae)
    _assert_same_outputs(full_pattern, loaded)
    n_unet = len(full_pattern.unet.state_dict())
    n_vae = len(full_pattern.vae.state_dict())
    assert loaded.report.loaded == {"UNet": (n_unet, n_unet), "VAE": (n_vae, n_vae)}
    assert loaded.report.ignored == {"cond_stage_model.* (text encoder)": 1, "noise-schedule buffers": 3}
    assert loaded.scaling_factor == pytest.approx(0.18215)
    assert loaded.unet.training is False and not any(p.requires_grad for p in loaded.unet.parameters())


def test_single_file_with_explicit_config_folder(tmp_path, full_pattern, no_network):
    """A file without embedded configs (like a real release) loads with a config folder."""
    path = sd21.save_sd21_single_file(tmp_path / "plain.safetensors", full_pattern.unet, full_pattern.vae,
                                      embed_configs=False)
    config_dir = tmp_path / "configs"
    for part in ("unet", "vae"):
        (config_dir / part).mkdir(parents=True)
        (config_dir / part / "config.json").write_text(json.dumps(dict(getattr(full_pattern, part).config)))
    loaded = sd21.load_sd21(path, config=config_dir, dtype="bfloat16")
    assert loaded.unet.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16
    _assert_same_weights(full_pattern.unet.to(torch.bfloat16), loaded.unet)
    full_pattern.unet.float()


def test_diffusers_folder_round_trip(tmp_path, full_pattern, no_network):
    folder = sd21.save_sd21_diffusers(tmp_path / "sd", full_pattern.unet, full_pattern.vae)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = sd21.load_sd21(folder)
    _assert_same_weights(full_pattern.unet, loaded.unet)
    _assert_same_outputs(full_pattern, loaded)
    assert loaded.report.kind == "diffusers"
    # diffusers itself reads the folder we wrote
    from diffusers import UNet2DConditionModel
    reference = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
    _assert_same_weights(reference, loaded.unet)


def test_components_and_name_lookup(tmp_path, full_pattern, no_network):
    sd21.save_sd21_single_file(tmp_path / "checkpoints" / "sd.safetensors", full_pattern.unet, full_pattern.vae)
    loaded = sd21.load_sd21("sd.safetensors", models_dir=tmp_path, components=("unet",))
    assert loaded.vae is None and loaded.unet is not None
    assert list(loaded.report.loaded) == ["UNet"]
    assert "first_stage_model" not in str(loaded.report)  # VAE tensors are known, not "ignored"


def test_alphas_cumprod_matches_diffusers_schedule():
    from diffusers import DDPMScheduler

    config = sd21.sd21_configs()["scheduler"]
    alphas = sd21.alphas_cumprod_from_config(config)
    assert alphas.dtype == torch.float64 and alphas.shape == (1000,)
    assert torch.equal(alphas.float(), DDPMScheduler.from_config(config).alphas_cumprod)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert alphas[399].item() == pytest.approx(torch.prod(1 - betas[:400]).item(), rel=1e-6)
    assert torch.allclose(sd21.betas_from_config(config), betas, rtol=1e-12, atol=0)


EXECUTED: list[str] = []


def _record_execution(*args):
    EXECUTED.append("pickle code ran")
    return {"args": args}


class TrainerHyperParameters:
    """Stands for the OmegaConf/callback objects Lightning checkpoints carry."""

    def __reduce__(self):
        return (_record_execution, ("learning_rate", 1e-4))


def test_lightning_checkpoint_with_objects_loads_without_running_them(tmp_path, full_pattern, no_network):
    state = sd21.ldm_state_dict(full_pattern.unet, full_pattern.vae)
    configs = json.dumps({"unet": dict(full_pattern.unet.config), "vae": dict(full_pattern.vae.config)})
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": TrainerHyperParameters(), "epoch": 3,
                sd21.EMBEDDED_CONFIG_KEY: configs}, path)
    EXECUTED.clear()
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader refuses the object
        torch.load(path, weights_only=True)
    loaded = sd21.load_sd21(path)
    assert EXECUTED == []
    _assert_same_weights(full_pattern.unet, loaded.unet)
    _assert_same_weights(full_pattern.vae, loaded.vae)


# ----------------------------------------------------------------------------- errors
def test_tiny_file_without_config_is_checked_against_sd21(tmp_path, full_pattern):
    path = sd21.save_sd21_single_file(tmp_path / "small.safetensors", full_pattern.unet, full_pattern.vae,
                                      embed_configs=False)
    with pytest.raises(CheckpointError, match="cross-attention dim 1024"):
        sd21.load_sd21(path)


def test_sd15_style_checkpoint_is_recognised(tmp_path):
    configs = full_pattern_sd21_configs(cross_attention_dim=768)
    configs["unet"].update(use_linear_projection=False, attention_head_dim=8)
    sd15 = sd21.build_sd21(configs, seed=0)
    path = sd21.save_sd21_single_file(tmp_path / "v1-5.safetensors", sd15.unet, sd15.vae, embed_configs=False)
    with pytest.raises(CheckpointError) as error:
        sd21.load_sd21(path, config=full_pattern_sd21_configs())
    message = str(error.value)
    assert "Stable Diffusion 1.x (cross-attention dim 768)" in message
    assert "expected an SD 2.1-base-style UNet with cross-attention dim 32" in message
    assert "attn2.to_k.weight" in message


def test_sdxl_style_keys_are_recognised(tmp_path):
    from safetensors.torch import save_file

    state = {
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77),
    }
    save_file(state, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(CheckpointError, match="Stable Diffusion XL"):
        sd21.load_sd21(tmp_path / "sdxl.safetensors")


def test_partial_file_reports_missing_tensors(tmp_path, full_pattern):
    state = sd21.ldm_state_dict(full_pattern.unet, full_pattern.vae)
    del state["model.diffusion_model.output_blocks.5.2.conv.weight"]
    from safetensors.torch import save_file
    configs = {"unet": dict(full_pattern.unet.config), "vae": dict(full_pattern.vae.config)}
    save_file(state, str(tmp_path / "partial.safetensors"),
              metadata={sd21.EMBEDDED_CONFIG_KEY: json.dumps(configs)})
    with pytest.raises(CheckpointError, match=r"1 of \d+ UNet tensors are missing, e.g. .*output_blocks.5.2.conv.weight"):
        sd21.load_sd21(tmp_path / "partial.safetensors")


def test_diffusers_unet_file_is_not_taken_for_a_checkpoint(tmp_path, full_pattern):
    folder = sd21.save_sd21_diffusers(tmp_path / "sd", full_pattern.unet, full_pattern.vae)
    with pytest.raises(CheckpointError, match="diffusers folder instead"):
        sd21.load_sd21(folder / "unet" / "diffusion_pytorch_model.safetensors", config=full_pattern_sd21_configs())


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_and_garbage_files(tmp_path, full_pattern, suffix):
    path = sd21.save_sd21_single_file(tmp_path / f"good{suffix}", full_pattern.unet, full_pattern.vae)
    data = path.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        sd21.load_sd21(truncated)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        sd21.load_sd21(garbage)
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        sd21.load_sd21(empty)


def test_missing_paths_name_the_folder(tmp_path, full_pattern, monkeypatch):
    monkeypatch.delenv("HONESTFACE_MODELS", raising=False)
    with pytest.raises(MissingModelFileError) as error:
        sd21.load_sd21(tmp_path / "nowhere.safetensors")
    assert error.value.folder == str(tmp_path)
    with pytest.raises(MissingModelFileError) as error:
        sd21.load_sd21("v2-1_512-ema-pruned.safetensors", models_dir=tmp_path)
    message = error.value.args[0]
    assert "checkpoints" in message and "diffusers" in message

    folder = sd21.save_sd21_diffusers(tmp_path / "sd", full_pattern.unet, None)
    with pytest.raises(MissingModelFileError) as error:
        sd21.load_sd21(folder)
    assert error.value.folder == str(folder / "vae")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingModelFileError) as error:
        sd21.load_sd21(folder, components=("unet",))
    assert error.value.filename == "diffusion_pytorch_model.safetensors"
    assert error.value.folder == str(folder / "unet")


def test_bad_arguments(tmp_path, full_pattern):
    path = sd21.save_sd21_single_file(tmp_path / "m.safetensors", full_pattern.unet, full_pattern.vae)
    with pytest.raises(ConfigError):
        sd21.load_sd21(path, dtype="int8")
    with pytest.raises(ConfigError):
        sd21.load_sd21(path, components=("text_encoder",))
    other = tmp_path / "m.onnx"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        sd21.load_sd21(other)
    v_config = dict(sd21.sd21_configs()["scheduler"], prediction_type="v_prediction")
    with pytest.raises(CheckpointError, match="v_prediction"):
        sd21.load_sd21(path, config={"unet": dict(full_pattern.unet.config), "vae": dict(full_pattern.vae.config),
                                     "scheduler": v_config})
