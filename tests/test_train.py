"""The training program on the tiny model and real faces (CPU).

Fast tests run the trainer in-process; the multi-process, kill-and-resume and
command-line tests start real processes and are marked slow.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from honestface.errors import ConfigError
from training import state as ckpt
from training.config import apply_overrides, load_config
from training.train import Trainer, build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "training" / "configs" / "tiny.yaml"
PAPER = REPO_ROOT / "training" / "configs" / "paper.yaml"

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def tiny_config(root: Path, output: Path, *overrides: str):
    return load_config(TINY, [f"data.roots=[{root}]", f"output_dir={output}", "train.log_every=0",
                              "data.val_fraction=0.25", *overrides])


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_tiny_trains_with_every_loss(celeba_subset, tmp_path):
    config = tiny_config(celeba_subset, tmp_path, "train.max_steps=2", "train.val_every=2",
                         "train.checkpoint_every=0", "train.log_every=1")
    trainer = Trainer(config)
    before = snapshot(trainer.model)
    disc_before = snapshot(trainer.discriminator)
    trainable = {id(p) for p in trainer.model.trainable_parameters()}
    summary = trainer.run()

    last = summary["last"]
    for name in ("mse", "ea_dists", "identity", "mfa", "adversarial", "total", "discriminator"):
        assert torch.isfinite(torch.tensor(last[f"loss/{name}"])), name
        assert last[f"loss/{name}"] > 0, name
    changed_trainable = 0
    for name, parameter in trainer.model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        if id(parameter) in trainable:
            changed_trainable += moved
        else:
            assert not moved, f"frozen parameter {name} changed"
    assert changed_trainable > 0.8 * len(trainable)
    # each group of trainable parts moved: LoRA, VRE projection, IDE heads, fusion
    # (the default concat fusion has no parameters)
    for prefix in ("restorer.unet.", "vre.projection", "ide.", "fusion"):
        group = [(n, p) for n, p in trainer.model.named_parameters() if n.startswith(prefix) and id(p) in trainable]
        assert group or prefix == "fusion", prefix
        assert not group or any(not torch.equal(p.detach(), before[n]) for n, p in group), prefix
    for name, parameter in trainer.discriminator.named_parameters():
        moved = not torch.equal(parameter.detach(), disc_before[name])
        assert moved == parameter.requires_grad or not parameter.requires_grad, name

    # TensorBoard has every loss, both learning rates, the validation metrics and the grid
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {f"loss/{n}" for n in ("mse", "ea_dists", "identity", "mfa", "adversarial", "total", "discriminator")}
    expected |= {"lr/generator", "lr/discriminator", "val/psnr", "val/psnr_lq", "val/ald_eyes", "val/deg"}
    assert expected <= scalars, expected - scalars
    assert [e.step for e in events.Scalars("loss/mse")] == [1, 2]
    assert "val/lq_restored_gt" in events.Tags()["images"]
    assert list((tmp_path / "samples").glob("step-*.png"))
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert Path(summary["export"]).is_file()


@pytest.mark.slow
def test_landmark_misses_are_counted_logged_and_limited(celeba_subset, tmp_path):
    """Aligned crops: landmarks come from the aligned face box, every face counts and none is
    missed. With detection on faces degraded beyond recognition, the misses are counted and
    training stops with a clear error once they pass the limit."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from honestface.errors import HonestFaceError

    quick = ["train.max_steps=2", "train.val_every=0", "train.checkpoint_every=0", "train.log_every=1",
             "losses.ea_dists=0", "losses.identity=0", "losses.adversarial=0"]  # MFA on (dlib heatmaps)
    trainer = Trainer(tiny_config(celeba_subset, tmp_path / "aligned", *quick))
    assert trainer.objective.heatmap_backend.detect is False
    trainer.run()
    assert (trainer.landmark_faces, trainer.landmark_misses) == (4, 0)  # 2 steps x 2 LQ faces
    events = EventAccumulator(str(tmp_path / "aligned" / "logs"))
    events.Reload()
    assert [e.value for e in events.Scalars("landmarks/faces")] == [2.0, 4.0]
    assert [e.value for e in events.Scalars("landmarks/missed")] == [0.0, 0.0]

    hopeless = ["data.aligned_faces=false", "data.degradation.blur_sigma=[15,15]",
                "data.degradation.downsample_scale=[30,30]", "train.landmark_miss_min_faces=2",
                "losses.backend_options={}"]  # tiny.yaml's dlib fallback box off: a miss stays a miss
    hopeless.append("train.max_steps=1")
    detecting = Trainer(tiny_config(celeba_subset, tmp_path / "detect", *quick, *hopeless))
    assert detecting.objective.heatmap_backend.detect is True
    with pytest.raises(HonestFaceError, match=r"landmarks were not found in 2 of 2 faces .* limit 5.0%"):
        detecting.run()
    # a limit of 100% lets the same run finish, the misses still counted
    tolerant = Trainer(tiny_config(celeba_subset, tmp_path / "tolerant", *quick, *hopeless,
                                   "train.max_landmark_miss_rate=1.0"))
    tolerant.run()
    assert (tolerant.landmark_faces, tolerant.landmark_misses) == (2, 2)


def test_overfitting_a_few_faces_lowers_the_reconstruction_loss(celeba_subset, tmp_path):
    config = tiny_config(celeba_subset, tmp_path, "train.max_steps=40", "train.val_every=0",
                         "train.checkpoint_every=0", "losses.ea_dists=0", "losses.identity=0", "losses.mfa=0",
                         "losses.adversarial=0", "optim.lr=2e-3", "data.horizontal_flip=false",
                         "data.min_images_per_identity=16", "data.val_fraction=0", "train.batch_size=4")
    trainer = Trainer(config)
    trainer.train_set.items = trainer.train_set.items[:4]  # a handful of images
    trainer.sampler.length = 4
    trainer.run()
    mse = [h["loss/mse"] for h in trainer.history]
    # the tiny VAE is random and frozen, so it cannot reach zero; it still drops by ~half
    assert sum(mse[-5:]) / 5 < 0.6 * sum(mse[:3]) / 3, mse


def test_resume_in_process_equals_uninterrupted_run(celeba_subset, tmp_path):
    steps = ["train.max_steps=4", "train.val_every=0", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    straight = Trainer(tiny_config(celeba_subset, tmp_path / "a", *steps))
    straight.run()
    first = Trainer(tiny_config(celeba_subset, tmp_path / "b", "train.max_steps=2", "train.val_every=0",
                                "train.checkpoint_every=2"))
    first.run()
    resumed = Trainer(tiny_config(celeba_subset, tmp_path / "b", *steps), resume="auto")
    assert resumed.step == 2
    resumed.run()
    expected, got = straight.model.trainable_state_dict(), resumed.model.trainable_state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    assert straight.weights_digest() == resumed.weights_digest()
    # and the checkpoint of step 2 of the uninterrupted run equals the one of the split run
    a = ckpt.read_checkpoint(ckpt.checkpoint_dir(tmp_path / "a", 2), 0)
    b = ckpt.read_checkpoint(ckpt.checkpoint_dir(tmp_path / "b", 2), 0)
    assert a["trainer"]["sampler"] == b["trainer"]["sampler"]
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])


def test_gradient_accumulation_equals_the_larger_batch(celeba_subset, tmp_path):
    common = ["train.max_steps=2", "train.val_every=0", "train.checkpoint_every=0", "losses.ea_dists=0",
              "losses.identity=0", "losses.mfa=0", "losses.adversarial=0", "optim.lr=1e-3"]
    big = Trainer(tiny_config(celeba_subset, tmp_path / "big", "train.batch_size=2", *common))
    big.run()
    accumulated = Trainer(tiny_config(celeba_subset, tmp_path / "acc", "train.batch_size=1",
                                      "train.gradient_accumulation=2", *common))
    accumulated.run()
    for one, other in zip(big.history, accumulated.history):  # same samples, same loss
        assert one["loss/mse"] == pytest.approx(other["loss/mse"], rel=1e-5)
    initial = build_model(big.config.model, 0).trainable_state_dict()
    a, b = big.model.trainable_state_dict(), accumulated.model.trainable_state_dict()
    difference = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    change = torch.cat([(a[k] - initial[k]).abs().flatten() for k in a])
    # equal up to float rounding, which Adam amplifies only where a gradient is ~0
    assert difference.mean() < 1e-3 * change.mean()
    assert (difference > 1e-5).float().mean() < 1e-3


def test_export_loads_in_the_core_restorer(celeba_subset, tmp_path):
    from honestface.loaders.checkpoint import load_checkpoint
    from honestface.pipeline import HonestFacePipeline

    config = tiny_config(celeba_subset, tmp_path, "train.max_steps=1", "train.val_every=0",
                         "train.checkpoint_every=0", "losses.ea_dists=0", "losses.identity=0", "losses.mfa=0",
                         "losses.adversarial=0", "optim.lr=1e-2")
    trainer = Trainer(config)
    summary = trainer.run()
    fresh = build_model(config.model, config.seed)  # same base weights, untrained adapter
    lq = trainer.val_set[(0, 0)]["lq"][None]
    with torch.no_grad():
        untrained = fresh(lq).image
    # the training checkpoint's model file is the same inference format
    in_checkpoint = ckpt.latest_checkpoint(tmp_path) / ckpt.MODEL_FILE
    load_checkpoint(build_model(config.model, config.seed), in_checkpoint)
    load_checkpoint(fresh, summary["export"])
    pipeline = HonestFacePipeline(fresh)
    restored = pipeline.restore(lq)
    with torch.no_grad():
        trainer.model.eval()
        expected = trainer.model(lq).image
    assert torch.allclose(restored, expected, atol=1e-5)
    assert not torch.allclose(untrained, expected, atol=1e-4)


def test_config_overrides_and_errors(tmp_path):
    config = load_config(TINY, ["train.max_steps=7", "losses.adversarial=0", "data.roots=[a, b]"])
    assert config.train.max_steps == 7 and config.losses.adversarial == 0 and config.data.roots == ["a", "b"]
    paper = load_config(PAPER, ["model.osdface=OSDFace"])
    assert paper.train.max_steps == 60_000 and paper.train.batch_size == 4
    assert (paper.losses.mse, paper.losses.ea_dists, paper.losses.identity, paper.losses.adversarial,
            paper.losses.mfa) == (1.0, 1.0, 0.1, 0.02, 1.0)
    assert paper.optim.lr == 1e-4 and paper.losses.pretrained
    with pytest.raises(ConfigError):
        load_config(TINY, ["train.max_step=3"])
    with pytest.raises(ConfigError):
        load_config(TINY, ["nonsense"])
    with pytest.raises(ConfigError):
        load_config(TINY, ["model.init=sd21"])  # needs model.sd21
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.yaml")
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_missing_perceptual_weights_stop_the_start(celeba_subset, tmp_path):
    from honestface.errors import MissingModelFileError

    config = tiny_config(celeba_subset, tmp_path, "losses.pretrained=true", f"model.models_dir={tmp_path}")
    with pytest.raises(MissingModelFileError):
        Trainer(config)


# ----------------------------------------------------------------------------- processes


def _command(config_args: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "training" / "train.py"), "--config", str(TINY), *config_args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(celeba_subset, tmp_path):
    args = [f"data.roots=[{celeba_subset}]", "data.val_fraction=0.25", "train.max_steps=6",
            "train.checkpoint_every=2", "train.val_every=0", "train.log_every=1", "train.keep_checkpoints=0"]
    done = subprocess.run(_command(["--output", str(tmp_path / "straight"), *args]), env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(_command(["--output", str(killed_dir), *args]), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # kill it in the middle of step 4, after the checkpoint of step 2
        if "honestface.train: step 3 " in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL
    assert ckpt.latest_checkpoint(killed_dir).name in ("step-00000002", "step-00000004")
    assert not (killed_dir / "honestface.safetensors").exists(), "the run finished before it was killed"
    resumed = subprocess.run(_command(["--output", str(killed_dir), "--resume", "auto", *args]), env=_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "straight" / "honestface.safetensors"))
    got = load_file(str(killed_dir / "honestface.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())["weights_sha256"]
    b = json.loads((killed_dir / "summary.json").read_text())["weights_sha256"]
    assert a == b


@pytest.mark.slow
def test_two_processes_keep_identical_weights(celeba_subset, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(REPO_ROOT / "training" / "train.py"), "--config", str(TINY), "--output", str(tmp_path),
               f"data.roots=[{celeba_subset}]", "data.val_fraction=0.25", "train.max_steps=4",
               "train.checkpoint_every=2", "train.val_every=0"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["weights_sha256"]) == 2 and len(set(summary["weights_sha256"])) == 1
    # both ranks stored their random state and their own share of the data order
    checkpoint = ckpt.latest_checkpoint(tmp_path)
    assert (checkpoint / "rng-rank0.pt").is_file() and (checkpoint / "rng-rank1.pt").is_file()
    trainer_state = json.loads((checkpoint / "trainer.json").read_text())
    assert [s["world_size"] for s in trainer_state["sampler"]] == [2, 2]


def test_training_from_model_files_and_from_its_own_checkpoint(celeba_subset, tmp_path):
    """make_tiny_models writes SD 2.1 / OSDFace / VGG files in their real formats: start from
    them (the paper's OSDFace initialisation), then continue from the exported checkpoint."""
    from honestface.testing.make_tiny_models import make_tiny_models

    models = tmp_path / "models"
    make_tiny_models(models)
    common = [f"model.models_dir={models}", "model.sd21=tiny-sd21-base.safetensors", "model.osdface=osdface-tiny",
              "model.overrides={identity_backend: dlib, ide.identity_dim: 128}", "model.identity=dlib",
              "train.max_steps=1", "train.val_every=0", "train.checkpoint_every=0",
              "losses.ea_dists=0", "losses.mfa=0", "losses.identity=0"]
    first = Trainer(tiny_config(celeba_subset, tmp_path / "a", "model.init=osdface", *common))
    from safetensors.torch import load_file

    lora_file = load_file(str(models / "honestface" / "osdface-tiny" / "pytorch_lora_weights.safetensors"))
    start = first.model.trainable_state_dict()
    assert all(torch.equal(start[k], v) for k, v in lora_file.items())  # OSDFace's LoRA is the start
    exported = first.run()["export"]

    second = Trainer(tiny_config(celeba_subset, tmp_path / "b", "model.init=checkpoint",
                                 f"model.checkpoint={exported}", *common))
    again = second.model.trainable_state_dict()
    trained = first.model.trainable_state_dict()
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)


def test_osdface_file_decides_the_lora_modules_for_training_and_inference(celeba_subset, tmp_path):
    """A release-format LoRA file on fewer modules than the preset (attention only, rank 2):
    training starts from it instead of refusing it, trains exactly those modules, and the
    exported checkpoint rebuilds the same adapter for inference."""
    from safetensors.torch import load_file, save_file

    from honestface.config import OSDFACE_LORA_TARGETS
    from honestface.loaders.checkpoint import build_model_from_checkpoint
    from honestface.loaders.osdface import LORA_FILE
    from honestface.loaders.sd21 import load_sd21
    from honestface.loaders.lora import lora_targets_from_state
    from honestface.models.restorer import lora_module_names
    from honestface.testing.make_tiny_models import OSDFACE_FOLDER, make_tiny_models

    models = tmp_path / "models"
    make_tiny_models(models)
    lora_path = models / OSDFACE_FOLDER / LORA_FILE
    full = load_file(str(lora_path))
    generator = torch.Generator().manual_seed(0)
    attention = {}
    for key in sorted(full):  # the release's key format, another module set and rank
        if ".attn" in key and key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            a, b = full[key], full[module + ".lora_B.weight"]
            attention[key] = torch.randn(2, a.shape[1], generator=generator) * 0.1
            attention[module + ".lora_B.weight"] = torch.randn(b.shape[0], 2, generator=generator) * 0.1
    save_file(attention, str(lora_path), metadata={"format": "pt"})
    file_modules, _ = lora_targets_from_state(attention)

    common = [f"model.models_dir={models}", "model.sd21=tiny-sd21-base.safetensors", "model.osdface=osdface-tiny",
              "model.overrides={identity_backend: dlib, ide.identity_dim: 128}", "model.identity=dlib",
              "train.max_steps=1", "train.val_every=0", "train.checkpoint_every=0",
              "losses.ea_dists=0", "losses.mfa=0", "losses.identity=0", "losses.adversarial=0"]
    sd = load_sd21("tiny-sd21-base.safetensors", models_dir=models)
    assert set(file_modules) < set(lora_module_names(sd.unet, OSDFACE_LORA_TARGETS))  # differs from the preset
    trainer = Trainer(tiny_config(celeba_subset, tmp_path / "run", "model.init=osdface", *common))
    start = trainer.model.restorer.lora_state_dict()
    assert start.keys() == attention.keys() and all(torch.equal(start[k], v) for k, v in attention.items())
    assert trainer.model.config.lora.rank == 2
    exported = trainer.run()["export"]
    trained = trainer.model.restorer.lora_state_dict()
    assert any(not torch.equal(trained[k], attention[k]) for k in attention)  # it trained them

    restored = build_model_from_checkpoint(exported, sd.unet, sd.vae)
    again = restored.restorer.lora_state_dict()
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)


@pytest.mark.slow
def test_paper_config_runs_from_real_format_files(celeba_subset, tmp_path):
    """training/configs/paper.yaml as it is (every loss on with pretrained networks, MFA
    heatmaps and Eq. 6 landmarks from FAN, ArcFace + AdaFace, OSDFace initialisation, bf16
    autocast, gradient checkpointing), only shrunk: the tiny preset at 64 px, from
    make_tiny_models' files in their real formats."""
    from safetensors.torch import load_file

    from honestface.loaders.safe_pickle import load_tensors
    from honestface.testing import make_tiny_models as tiny

    models = tmp_path / "models"
    tiny.make_tiny_models(models)
    config = load_config(PAPER, [
        f"model.models_dir={models}", "model.sd21=tiny-sd21-base.safetensors", "model.osdface=osdface-tiny",
        "model.preset=tiny", "model.overrides={identity_backend: arcface-torch, ide.identity_dim: 512}",
        f"data.roots=[{celeba_subset}]", "data.image_size=64", "data.val_fraction=0.25", "data.val_max_samples=2",
        f"output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.batch_size=2", "train.num_workers=0",
        "train.cpu=true", "train.num_threads=1", "train.checkpoint_every=0", "train.log_every=1",
        "train.val_every=2", "train.val_batches=1", "train.val_batch_size=2"])
    for name in ("mse", "ea_dists", "identity", "mfa", "adversarial"):
        assert config.losses.enabled(name), name
    assert config.losses.pretrained and config.model.init == "osdface"
    assert config.train.mixed_precision == "bf16"
    trainer = Trainer(config)

    # every network was read from its file
    objective = trainer.objective
    dists = load_tensors(models / tiny.DISTS_HEAD, what="DISTS head")
    assert torch.equal(objective.ea_dists.dists.alpha, dists["alpha"].flatten())
    lins = load_tensors(models / tiny.LPIPS_HEAD, what="LPIPS head")
    assert torch.equal(objective.mfa_distance.lin4, lins["lin4.model.1.weight"])
    vgg = load_tensors(models / "honestface" / "vgg16-397923af.pth", what="VGG16")
    assert torch.equal(objective.mfa_distance.vgg.features[28].weight, vgg["features.28.weight"])
    fan = load_tensors(models / tiny.FAN_WEIGHTS, what="FAN")
    assert torch.equal(objective.heatmap_backend.network.l0.weight, fan["l0.weight"])  # one hourglass stack
    assert objective.heatmap_backend.detect is False and trainer.landmarks.detect is False
    adaface = load_tensors(models / tiny.ADAFACE_CKPT, what="AdaFace", state_key="state_dict")
    recognisers = objective.identity.recognisers
    assert [type(r).__name__ for r in recognisers] == ["ArcFaceTorch", "AdaFace"]
    assert torch.equal(recognisers[1].network.input_layer[0].weight, adaface["model.input_layer.0.weight"])
    lora = load_file(str(models / tiny.OSDFACE_FOLDER / "pytorch_lora_weights.safetensors"))
    start = trainer.model.restorer.lora_state_dict()
    assert all(torch.equal(start[k], v) for k, v in lora.items())

    summary = trainer.run()
    last = summary["last"]
    for name in ("mse", "ea_dists", "identity", "mfa", "adversarial", "total", "discriminator"):
        assert math.isfinite(last[f"loss/{name}"]) and last[f"loss/{name}"] > 0, name
    # FAN in the aligned box: the 2 x 2 LQ faces (Eq. 6 and MFA) and the references, no miss
    assert trainer.landmark_misses == 0 and trainer.landmark_faces >= 8 + len(trainer._reference_cache)
    assert Path(summary["export"]).is_file()


def test_reexporting_a_finished_run_keeps_its_summary_and_history(celeba_subset, tmp_path, caplog):
    from training.train import main

    args = ["--config", str(TINY), "--output", str(tmp_path), f"data.roots=[{celeba_subset}]",
            "data.val_fraction=0.25", "train.max_steps=2", "train.val_every=0", "train.checkpoint_every=0",
            "train.log_every=0", "losses.adversarial=0", "losses.ea_dists=0", "losses.identity=0", "losses.mfa=0",
            "optim.scheduler=cosine"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    history = json.loads((tmp_path / "history.json").read_text())
    assert summary["steps"] == 2 and [row["step"] for row in history] == [1, 2]

    assert main([*args, "--resume", "auto"]) == 0  # nothing left to train: exports again
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert json.loads((tmp_path / "history.json").read_text()) == history

    with caplog.at_level("WARNING", logger="honestface.train"):
        assert main([*args, "--resume", "auto", "train.max_steps=3"]) == 0
    assert "max_steps changed from 2 to 3" in caplog.text
    assert [row["step"] for row in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]


def test_nano_recipe_stages_read_each_others_exports():
    """The shipped model's four configs form one chain: each stage reads the export the stage
    before it writes, and stage 3 sees the degradations stage 2b trained on."""
    from training.train_autoencoder import load_autoencoder_config

    configs = REPO_ROOT / "training" / "configs"
    vae, stage2 = load_autoencoder_config(configs / "nano_vae.yaml"), load_config(configs / "nano.yaml")
    stage2b, stage3 = load_config(configs / "nano_identity.yaml"), load_config(configs / "nano_fidelity.yaml")
    assert Path(stage2.model.vae) == Path(vae.output_dir) / "vae"
    assert Path(stage2b.model.checkpoint) == Path(stage2.output_dir) / stage2.train.export_name
    assert Path(stage3.model.checkpoint) == Path(stage2b.output_dir) / stage2b.train.export_name
    assert stage2b.losses.identity > 0 and stage2b.losses.identity_lowpass > 0
    assert stage3.data.degradation == stage2b.data.degradation
    assert stage3.data.split_seed == stage2b.data.split_seed == stage2.data.split_seed
    assert stage3.data.val_fraction == stage2b.data.val_fraction == stage2.data.val_fraction
