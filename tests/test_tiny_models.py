"""The tiny models folder: real file formats, determinism, and loading through the real loaders."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from safetensors import safe_open

from honestface.loaders import sd21
from honestface.testing import make_tiny_models as tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    assert tiny.main([str(root), "--seed", "0"]) == 0
    return root


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_prints_every_file(tmp_path, capsys):
    written = tiny.make_tiny_models(tmp_path / "a", seed=5)
    assert tiny.main([str(tmp_path / "b"), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    for path in written.values():
        assert str(path.relative_to(tmp_path / "a")) in printed
    # the same seed writes byte-identical files
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_layout_is_comfyui_style(models):
    for relative in (tiny.SD_CHECKPOINT, tiny.HONESTFACE_CHECKPOINT, "honestface/vgg16-397923af.pth",
                     f"{tiny.SD_DIFFUSERS}/unet/config.json",
                     f"{tiny.SD_DIFFUSERS}/unet/diffusion_pytorch_model.safetensors",
                     f"{tiny.SD_DIFFUSERS}/vae/diffusion_pytorch_model.safetensors",
                     f"{tiny.SD_DIFFUSERS}/scheduler/scheduler_config.json",
                     f"{tiny.OSDFACE_FOLDER}/pytorch_lora_weights.safetensors",
                     f"{tiny.OSDFACE_FOLDER}/embedding_change_weights.pth",
                     f"{tiny.OSDFACE_FOLDER}/associate_2.ckpt", tiny.ARCFACE_ONNX):
        assert (models / relative).is_file(), relative


def test_sd_single_file_uses_ldm_names_and_matches_the_diffusers_folder(models):
    with safe_open(str(models / tiny.SD_CHECKPOINT), "pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(k.startswith(("model.diffusion_model.", "first_stage_model.")) or k in sd21.SCHEDULE_BUFFERS
                        for k in keys)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert json.loads(metadata[sd21.EMBEDDED_CONFIG_KEY])["unet"]["cross_attention_dim"] == 32

    single = sd21.load_sd21(models / tiny.SD_CHECKPOINT)
    folder = sd21.load_sd21(models / tiny.SD_DIFFUSERS)
    for a, b in ((single.unet, folder.unet), (single.vae, folder.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_osdface_files_have_the_release_formats(models):
    folder = models / tiny.OSDFACE_FOLDER
    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), "pt") as handle:
        lora_keys = list(handle.keys())
    assert lora_keys and all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
                             for k in lora_keys)
    projection = torch.load(folder / "embedding_change_weights.pth", weights_only=True)
    assert sorted(projection) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
    assert projection["conv1.weight"].ndim == 3  # Conv1d
    with pytest.raises(pickle.UnpicklingError):  # Lightning extras: weights_only refuses them
        torch.load(folder / "associate_2.ckpt", weights_only=True)
    from honestface.loaders.safe_pickle import restricted_load

    checkpoint, blocked = restricted_load(folder / "associate_2.ckpt")
    assert any("TrainingHyperParameters" in name for name in blocked)
    state = checkpoint["state_dict"]
    assert "vqvae_LQ.quantize.embedding.weight" in state
    assert any(k.startswith("vqvae_LQ.encoder.") for k in state)


def test_everything_loads_and_restores_through_the_pipeline(models):
    from honestface.loaders.checkpoint import config_from_checkpoint
    from honestface.pipeline import HonestFacePipeline

    config = config_from_checkpoint(models / tiny.HONESTFACE_CHECKPOINT)
    assert config.identity_backend == "dlib" and config.ide.identity_dim == 128
    pipeline = HonestFacePipeline.from_pretrained(
        "tiny-sd21-base.safetensors", checkpoint=models / tiny.HONESTFACE_CHECKPOINT,
        osdface_dir=models / tiny.OSDFACE_FOLDER, models_dir=models)
    report = "\n".join(pipeline.model.load_report)
    assert "UNet: 208/208 tensors loaded" in report and "VAE: 152/152" in report
    generator = torch.Generator().manual_seed(0)
    faces = torch.rand(2, 3, 64, 64, generator=generator)
    restored = pipeline.restore(faces, [torch.rand(2, 3, 64, 64, generator=generator), None])
    assert restored.shape == faces.shape and torch.isfinite(restored).all()

    osdface = HonestFacePipeline.from_pretrained("tiny-sd21-base", osdface_dir=models / tiny.OSDFACE_FOLDER,
                                                 models_dir=models, merge_lora=False)
    with_lora = osdface.restore(faces)
    with torch.no_grad():
        for name, parameter in osdface.model.restorer.unet.named_parameters():
            if ".lora_B." in name:
                parameter.zero_()
    without_lora = osdface.restore(faces)
    assert not torch.allclose(with_lora, without_lora)  # the tiny LoRA is not a zero adapter


def test_tiny_arcface_serves_both_arcface_backends(models):
    pytest.importorskip("insightface")
    from honestface.face import load_identity_backend

    faces = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    onnx = load_identity_backend("arcface-onnx", models_dir=models)
    torch_backend = load_identity_backend("arcface-torch", models_dir=models)
    a, b = onnx.embed(faces), torch_backend.embed(faces).detach()
    assert a.shape == b.shape == (3, 512)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cosine > 0.999).all(), cosine


def test_tiny_fan_is_face_alignments_download_format(models):
    """The .pth.tar loads, as face-alignment loads its own download, into its FAN network;
    the 'fan' landmark backend reads the same file."""
    fan_models = pytest.importorskip("face_alignment.models")
    from honestface.face import load_landmark_backend

    path = models / tiny.FAN_WEIGHTS
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = fan_models.FAN(tiny.TINY_FAN_STACKS)
    network.load_state_dict(state)  # strict: every key and shape matches
    backend = load_landmark_backend("fan", models_dir=models)
    for key, value in backend.network.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_training_files_have_the_released_formats(models):
    """The files paper.yaml's losses and backends load: same keys and shapes as the
    released files (the heads compared with the ones the lpips / DISTS packages ship)."""
    import importlib.util
    from pathlib import Path

    from torchvision.models.vgg import cfgs, make_layers

    def package_file(package, relative):
        spec = importlib.util.find_spec(package)
        return None if spec is None else Path(list(spec.submodule_search_locations)[0]) / relative

    def layout(state):
        return {k: tuple(v.shape) for k, v in state.items()}

    vgg = torch.load(models / "honestface" / "vgg16-397923af.pth", weights_only=True)
    assert layout(vgg) == {f"features.{k}": tuple(v.shape) for k, v in make_layers(cfgs["D"]).state_dict().items()}
    for ours, package, relative in ((tiny.LPIPS_HEAD, "lpips", "weights/v0.1/vgg.pth"),
                                    (tiny.DISTS_HEAD, "DISTS_pytorch", "weights.pt")):
        released = package_file(package, relative)
        if released is None:
            continue  # the test extra is not installed
        head = torch.load(models / ours, weights_only=True)
        assert layout(head) == layout(torch.load(released, map_location="cpu", weights_only=True)), ours
        assert all((v >= 0).all() for v in head.values())

    fan = torch.load(models / tiny.FAN_WEIGHTS, weights_only=True)  # face-alignment: a plain state dict
    assert "conv1.weight" in fan and "l0.weight" in fan and "m0.b1_2.conv1.weight" in fan
    arcface = torch.load(models / tiny.ARCFACE_TORCH, weights_only=True)
    assert "fc.weight" in arcface and "features.running_mean" in arcface
    with pytest.raises(pickle.UnpicklingError):  # Lightning objects inside, as in the release
        torch.load(models / tiny.ADAFACE_CKPT, weights_only=True)

    from honestface.face import load_identity_backend, load_landmark_backend

    faces = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert load_landmark_backend("fan", models_dir=models, detect=False).landmarks(faces).isfinite().all()
    for name, options in (("arcface-torch", {"model": tiny.ARCFACE_TORCH.removeprefix("insightface/models/")}), ("adaface", {})):
        embeddings = load_identity_backend(name, models_dir=models, **options).embed(faces)
        assert embeddings.shape == (2, 512) and embeddings.isfinite().all(), name
