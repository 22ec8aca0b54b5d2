"""Stage-1 VRE training (training/vq.py in training/train_autoencoder.py) on real faces: the
losses of each kind, the program's resume and export, and the export read by the VRE loader."""

from __future__ import annotations

import json

import pytest
import torch

from honestface.errors import ConfigError, MissingModelFileError
from honestface.loaders.osdface import VQ_FILE, find_osdface_folder, load_vq_encoder
from honestface.models.vre import VisualRepresentationEmbedder
from training.data import DataConfig, IdentityFaceDataset, collate, scan_identity_folders
from training.train_autoencoder import AutoencoderSection, AutoencoderTrainer, load_autoencoder_config
from training.vq import VQTask

from test_train import REPO_ROOT

torch.set_num_threads(1)
STAGE1_HQ = REPO_ROOT / "training" / "configs" / "stage1_vre_hq.yaml"
STAGE1_LQ = REPO_ROOT / "training" / "configs" / "stage1_vre_lq.yaml"

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def section(kind: str, **options) -> AutoencoderSection:
    return AutoencoderSection(kind=kind, vre_preset="tiny", **options)


@pytest.fixture(scope="module")
def faces(celeba_subset):
    """Four real faces (64 px) and their synthetic LQ, from the training data set."""
    config = DataConfig(roots=[str(celeba_subset)], image_size=64, max_references=0)
    dataset = IdentityFaceDataset(scan_identity_folders(config.roots), config)
    return collate([dataset[(i, i)] for i in range(4)])


def train(task: VQTask, batch, steps: int, lr: float = 1e-3) -> list[dict[str, float]]:
    optimizer = torch.optim.Adam(task.trainable_parameters(), lr=lr, betas=(0.5, 0.9))
    history = []
    for step in range(steps):
        terms, stats = task.losses(batch["gt"], batch["lq"], step)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        history.append({**{k: float(v.detach()) for k, v in terms.items()}, **stats})
    return history


def test_hq_then_lq_with_association(faces, tmp_path):
    torch.manual_seed(0)
    hq = VQTask(section("vq-hq", pretrained=False))
    history = train(hq, faces, 12)
    assert set(history[0]) >= {"l1", "perceptual", "codebook", "commitment", "total", "codes/perplexity"}
    assert "association" not in history[0]
    assert sum(h["l1"] for h in history[-3:]) < 0.8 * sum(h["l1"] for h in history[:3])
    hq_file = hq.export(tmp_path / "hq", step=12, epoch=0, hyper_parameters={})
    assert hq_file.name == "hq_dictionary.ckpt"

    # the LQ dictionary: association held back for 3 steps, then on; the HQ autoencoder frozen
    lq = VQTask(section("vq-lq", perceptual=0, start_steps={"association": 3}, hq_dictionary=str(hq_file),
                        train_hq=False))
    assert all(torch.equal(a, b) for a, b in zip(lq.hq.state_dict().values(), hq.hq.state_dict().values()))
    frozen = {k: v.clone() for k, v in lq.hq.state_dict().items()}
    history = train(lq, faces, 10)
    assert all("association" not in h for h in history[:3])
    assert all("association" in h and "hq_l1" not in h for h in history[3:])
    assert history[-1]["association"] < history[3]["association"]
    assert all(torch.equal(v, frozen[k]) for k, v in lq.hq.state_dict().items())
    exported = lq.export(tmp_path / "lq", step=10, epoch=0, hyper_parameters={"note": "test"})
    assert exported.name == "associate_2.ckpt"
    vre = VisualRepresentationEmbedder(lq.config, token_dim=32)
    load_vq_encoder(vre, exported)
    assert all(torch.equal(v, lq.lq.state_dict()[k]) for k, v in vre.vq.state_dict().items())

    # DAEFR's association stage: the HQ autoencoder learns too, with its own reconstruction terms
    both = VQTask(section("vq-lq", perceptual=0, hq_dictionary=str(hq_file), init=str(exported)))
    assert torch.equal(both.logit_scale.detach(), lq.logit_scale.detach())
    step = train(both, faces, 1)[0]
    assert {"hq_l1", "hq_codebook", "hq_commitment", "association"} <= set(step)
    assert any(not torch.equal(v, hq.hq.state_dict()[k]) for k, v in both.hq.state_dict().items())


def test_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs model.hq_dictionary"):
        section("vq-lq", perceptual=0)
    with pytest.raises(MissingModelFileError, match="hq_dictionary"):
        VQTask(section("vq-lq", perceptual=0, hq_dictionary=str(tmp_path / "none.ckpt")))
    with pytest.raises(ConfigError, match="unknown VRE config key 'codes'"):
        VQTask(section("vq-hq", perceptual=0, vre={"codes": 3}))
    with pytest.raises(ConfigError, match="unknown loss"):
        section("vq-hq", start_steps={"gan": 3})
    with pytest.raises(ConfigError, match="model.kind must be one of kl, vq-hq, vq-lq"):
        section("vq")
    # the perceptual term needs its files unless switched off
    with pytest.raises(MissingModelFileError):
        VQTask(section("vq-hq", models_dir=str(tmp_path)))
    task = VQTask(section("vq-hq", perceptual=0))
    with pytest.raises(ConfigError, match="data.image_size to 64"):
        task.losses(torch.rand(1, 3, 32, 32), None, 0)
    tiny = ["model.hq_dictionary=x.ckpt", "model.vre_preset=tiny"]
    with pytest.raises(ConfigError, match="data.synthetic_lq: true"):
        load_autoencoder_config(STAGE1_LQ, [*tiny, "data.image_size=64", "data.synthetic_lq=false"])
    with pytest.raises(ConfigError, match="set data.image_size to 64"):
        load_autoencoder_config(STAGE1_LQ, tiny)  # 512 px faces for the 64 px tiny VRE


# ----------------------------------------------------------------------------- the program


def stage1_overrides(root, output, *extra: str) -> list[str]:
    """stage1_vre_*.yaml at test sizes: the tiny preset's VRE at 64 px, random LPIPS."""
    return [f"data.roots=[{root}]", f"output_dir={output}", "model.vre_preset=tiny", "data.image_size=64",
            "model.pretrained=false", "data.val_fraction=0.25", "train.batch_size=2", "train.num_workers=0",
            "train.cpu=true", "train.num_threads=1", "train.log_every=1", "train.val_batches=1",
            "train.val_batch_size=2", "optim.lr=1e-3", "train.keep_checkpoints=0", *extra]


def run_stage1(root, output, steps: int = 3, **kwargs) -> tuple[AutoencoderTrainer, AutoencoderTrainer]:
    """The two stage-1 programs, a few steps each: HQ dictionary, then LQ with association."""
    hq = AutoencoderTrainer(load_autoencoder_config(STAGE1_HQ, stage1_overrides(
        root, output / "vre-hq", f"train.max_steps={steps}", f"train.val_every={steps}",
        f"train.checkpoint_every={steps}")))
    hq.run()
    lq = AutoencoderTrainer(load_autoencoder_config(STAGE1_LQ, stage1_overrides(
        root, output / "vre-lq", f"train.max_steps={steps}", f"train.val_every={steps}",
        f"train.checkpoint_every={steps}", f"model.hq_dictionary={output / 'vre-hq' / 'hq_dictionary.ckpt'}",
        "model.start_steps={association: 1}")))
    lq.run()
    return hq, lq


def test_program_trains_resumes_and_exports_the_release_format(celeba_subset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hq, lq = run_stage1(celeba_subset, tmp_path, steps=2)
    assert hq.config.data.synthetic_lq is False and lq.config.data.synthetic_lq is True
    events = EventAccumulator(str(tmp_path / "vre-lq" / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/l1", "loss/perceptual", "loss/codebook", "loss/commitment", "loss/total", "loss/association",
            "loss/hq_l1", "codes/perplexity", "association/accuracy", "lr", "val/psnr"} <= scalars
    assert [e.step for e in events.Scalars("loss/association")] == [2]  # from optimiser step 1 (0-based) on

    # the VRE loader reads the export like the release's file, from the output folder
    folder = find_osdface_folder(tmp_path / "vre-lq", files=(VQ_FILE,))
    vre = VisualRepresentationEmbedder(lq.model.config, token_dim=32)
    load_vq_encoder(vre, folder / VQ_FILE)
    assert all(torch.equal(v, lq.model.lq.state_dict()[k]) for k, v in vre.vq.state_dict().items())
    raw = torch.load(folder / VQ_FILE, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and raw["hyper_parameters"]["kind"] == "vq-lq"
    assert raw["hyper_parameters"]["vre"]["codebook_size"] == lq.model.config.codebook_size

    # resuming exactly: 4 steps straight equal 2 + 2 resumed, across the association's start
    args = lambda output, steps: load_autoencoder_config(STAGE1_LQ, stage1_overrides(  # noqa: E731
        celeba_subset, output, f"train.max_steps={steps}", "train.val_every=0", "train.checkpoint_every=2",
        f"model.hq_dictionary={tmp_path / 'vre-hq' / 'hq_dictionary.ckpt'}", "model.start_steps={association: 3}"))
    straight = AutoencoderTrainer(args(tmp_path / "a", 4))
    straight.run()
    AutoencoderTrainer(args(tmp_path / "b", 2)).run()
    resumed = AutoencoderTrainer(args(tmp_path / "b", 4), resume="auto")
    assert resumed.step == 2
    resumed.run()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("_lpips") for k in a)  # the frozen LPIPS is no part of the checkpoint
    summary = json.loads((tmp_path / "b" / "config.json").read_text())
    assert summary["model"]["kind"] == "vq-lq"


# ----------------------------------------------------------------------------- stage 1 -> stage 2


def new_program() -> None:
    """A fresh accelerate state, as the next program of the recipe (another process) gets:
    stage 1 runs in bf16, the tiny stage 2 in float32."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def restore_with_stage1_vre(models, export, vre_folder, stage1_lq, face):
    """Restore ``face`` with the stage-2 export and the stage-1 VRE, through the normal
    loaders; the same model with a random VQ encoder gives another result."""
    from honestface.loaders.model_files import load_model
    from honestface.pipeline import HonestFacePipeline

    model = load_model(sd21="tiny-sd21-base.safetensors", checkpoint=export, osdface_dir=vre_folder,
                       models_dir=models)
    assert any(line.startswith(VQ_FILE) for line in model.load_report)
    trained = stage1_lq.model.lq.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.vre.vq.state_dict().items())
    with torch.no_grad():
        _, _, valid = model.vre.select(face[None] * 2 - 1)
    assert int(valid.sum()) >= 1  # the trained dictionary gives the prompt its codes
    restored = HonestFacePipeline(model).restore(face[None])
    assert restored.shape == (1, 3, 64, 64) and torch.isfinite(restored).all()
    assert 0 <= float(restored.min()) and float(restored.max()) <= 1
    with torch.no_grad():
        for parameter in model.vre.vq.parameters():
            parameter.normal_()
    other = HonestFacePipeline(model).restore(face[None])
    assert (other - restored).abs().max() > 1e-4, "the stage-1 VRE must matter to the result"
    return restored


def test_stage1_output_starts_stage2_and_restores(celeba_subset, tmp_path):
    """From faces alone: both stage-1 programs, then the main trainer from SD 2.1-base
    (random tiny files in the real formats, no OSDFace release) with the stage-1 output folder
    as its VRE, then a restore through the normal loaders."""
    import shutil

    from honestface.testing import make_tiny_models as tiny
    from training.config import load_config
    from training.train import Trainer

    models = tmp_path / "models"
    tiny.make_tiny_models(models)
    shutil.rmtree(models / tiny.OSDFACE_FOLDER)  # nothing of the release
    _, lq = run_stage1(celeba_subset, tmp_path, steps=2)
    new_program()
    vre_folder = tmp_path / "vre-lq"
    config = load_config(REPO_ROOT / "training" / "configs" / "tiny.yaml", [
        f"data.roots=[{celeba_subset}]", f"output_dir={tmp_path / 'stage2'}", "data.val_fraction=0.25",
        f"model.models_dir={models}", "model.init=sd21", "model.sd21=tiny-sd21-base.safetensors",
        f"model.osdface={vre_folder}", "model.overrides={identity_backend: dlib, ide.identity_dim: 128}",
        "model.identity=dlib", "train.max_steps=1", "train.val_every=0", "train.checkpoint_every=0",
        "train.log_every=0", "losses.ea_dists=0", "losses.mfa=0", "losses.identity=0", "losses.adversarial=0"])
    trainer = Trainer(config)
    summary = trainer.run()
    face = trainer.val_set[(0, 0)]["lq"]
    restore_with_stage1_vre(models, summary["export"], vre_folder, lq, face)


@pytest.mark.slow
def test_stage1_then_paper_structure_end_to_end(celeba_subset, tmp_path):
    """The issue's end-to-end run: stage 1 from faces, then training/configs/paper.yaml as it
    is (every loss, FAN, ArcFace + AdaFace, bf16, gradient checkpointing) at tiny sizes with
    model.init=sd21 and the stage-1 VRE instead of the OSDFace release, then a restore."""
    import math
    import shutil

    from honestface.testing import make_tiny_models as tiny
    from training.config import load_config
    from training.train import Trainer

    models = tmp_path / "models"
    tiny.make_tiny_models(models)
    shutil.rmtree(models / tiny.OSDFACE_FOLDER)
    _, lq = run_stage1(celeba_subset, tmp_path, steps=3)
    new_program()
    vre_folder = tmp_path / "vre-lq"
    config = load_config(REPO_ROOT / "training" / "configs" / "paper.yaml", [
        f"model.models_dir={models}", "model.sd21=tiny-sd21-base.safetensors", "model.init=sd21",
        f"model.osdface={vre_folder}", "model.preset=tiny",
        "model.overrides={identity_backend: arcface-torch, ide.identity_dim: 512}",
        f"data.roots=[{celeba_subset}]", "data.image_size=64", "data.val_fraction=0.25", "data.val_max_samples=2",
        f"output_dir={tmp_path / 'stage2'}", "train.max_steps=2", "train.batch_size=2", "train.num_workers=0",
        "train.cpu=true", "train.num_threads=1", "train.checkpoint_every=0", "train.log_every=1",
        "train.val_every=0"])
    assert config.losses.pretrained and config.train.mixed_precision == "bf16"
    trainer = Trainer(config)
    summary = trainer.run()
    for name in ("mse", "ea_dists", "identity", "mfa", "adversarial", "total", "discriminator"):
        assert math.isfinite(summary["last"][f"loss/{name}"]), name
    face = trainer.val_set[(0, 0)]["lq"]
    restore_with_stage1_vre(models, summary["export"], vre_folder, lq, face)


@pytest.mark.slow
def test_two_processes_train_the_lq_dictionary(celeba_subset, tmp_path):
    import subprocess
    import sys

    from test_train import _env

    hq = AutoencoderTrainer(load_autoencoder_config(STAGE1_HQ, stage1_overrides(
        celeba_subset, tmp_path / "vre-hq", "train.max_steps=1", "train.val_every=0", "train.checkpoint_every=0")))
    hq.run()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               str(REPO_ROOT / "training" / "train_autoencoder.py"), "--config", str(STAGE1_LQ),
               "--output", str(tmp_path / "vre-lq"),
               *stage1_overrides(celeba_subset, tmp_path / "vre-lq", "train.max_steps=2", "train.val_every=0",
                                 "train.checkpoint_every=2", "model.start_steps={association: 1}",
                                 f"model.hq_dictionary={tmp_path / 'vre-hq' / 'hq_dictionary.ckpt'}")]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "vre-lq" / "summary.json").read_text())["world_size"] == 2
    checkpoint = tmp_path / "vre-lq" / "checkpoints" / "step-00000002"
    assert (checkpoint / "rng-rank0.pt").is_file() and (checkpoint / "rng-rank1.pt").is_file()
    assert [s["world_size"] for s in json.loads((checkpoint / "trainer.json").read_text())["sampler"]] == [2, 2]
    vre = VisualRepresentationEmbedder(hq.model.config, token_dim=32)
    load_vq_encoder(vre, find_osdface_folder(tmp_path / "vre-lq", files=(VQ_FILE,)) / VQ_FILE)
