"""The ablation configs of Tables 3b and 3c (training/configs/ablations/): each is paper.yaml
with one switch, each trains from the real-format random files (tiny sizes), and an IDE
with one branch exports a checkpoint that the normal loaders restore faces with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from honestface.config import HonestFaceConfig
from honestface.errors import ConfigError
from training.config import load_config, read_config_file
from training.train import Trainer

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER = REPO_ROOT / "training" / "configs" / "paper.yaml"
ABLATIONS = sorted((REPO_ROOT / "training" / "configs" / "ablations").glob("*.yaml"))

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    from honestface.testing import make_tiny_models as tiny

    root = tmp_path_factory.mktemp("models")
    tiny.make_tiny_models(root)
    return root


def ablation_config(path: Path, models: Path, data: Path, output: Path, *extra: str):
    """``path`` shrunk to the tiny preset at 64 px, one step, from make_tiny_models' files."""
    own = read_config_file(path)["model"].get("overrides") or {}  # the ablation's model switches, kept
    overrides = {"identity_backend": "arcface-torch", "ide.identity_dim": 512, **own}
    return load_config(path, [
        f"model.models_dir={models}", "model.sd21=tiny-sd21-base.safetensors", "model.osdface=osdface-tiny",
        "model.preset=tiny", f"model.overrides={json.dumps(overrides)}", f"data.roots=[{data}]",
        "data.image_size=64", "data.val_fraction=0.25", "data.val_max_samples=2", f"output_dir={output}",
        "train.max_steps=1", "train.batch_size=2", "train.num_workers=0", "train.cpu=true", "train.num_threads=1",
        "train.checkpoint_every=0", "train.log_every=1", "train.val_every=0", *extra])


def test_every_ablation_is_paper_yaml_with_its_switches():
    paper = read_config_file(PAPER)
    assert {p.stem for p in ABLATIONS} == {"mfa-off", "mfa-no-heatmap", "mfa-dists", "mfa-mse", "ide-none",
                                           "ide-ffe", "ide-fie-arcface", "ide-ffe-fie-adaface"}
    for path in ABLATIONS:
        data = read_config_file(path)
        changed = {section for section in paper if data[section] != paper[section]}
        assert changed and changed <= {"output_dir", "losses", "model"}, (path.name, changed)
        assert data["train"] == paper["train"] and data["data"] == paper["data"], path.name
        load_config(path, ["model.osdface=OSDFace"])  # valid as it stands, given the release folder


def test_base_configs_merge_section_by_section_and_loops_fail(tmp_path):
    (tmp_path / "parent.yaml").write_text("seed: 3\nlosses: {mse: 0.5, identity: 0.2}\n"
                                          "model: {overrides: {lora.rank: 8}}\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../parent.yaml\nlosses: {identity: 0}\nmodel: {overrides: {ide.use_fie: false}}\n",
                     encoding="utf-8")
    data = read_config_file(child)
    assert data == {"seed": 3, "losses": {"mse": 0.5, "identity": 0},
                    "model": {"overrides": {"lora.rank": 8, "ide.use_fie": False}}}
    config = load_config(child, ["losses.mse=2", "model.init=random"])
    assert (config.seed, config.losses.mse, config.losses.identity) == (3, 2.0, 0.0)
    (tmp_path / "parent.yaml").write_text("base: sub/child.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="loops back"):
        read_config_file(child)
    child.write_text("base: ../missing.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not found"):
        read_config_file(child)


@pytest.mark.slow
@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_ablation_trains_from_real_format_files(path, tiny_models, celeba_subset, tmp_path):
    from honestface.losses.objective import MSEDistance
    from honestface.losses.perceptual import DISTS, LPIPS
    from honestface.models.fusion import VisualOnlyFusion

    trainer = Trainer(ablation_config(path, tiny_models, celeba_subset, tmp_path))
    model, objective = trainer.model, trainer.objective
    expected_distance = {"mfa-dists": DISTS, "mfa-mse": MSEDistance, "mfa-off": type(None)}.get(path.stem, LPIPS)
    assert type(objective.mfa_distance) is expected_distance
    assert (objective.heatmap_backend is None) == (path.stem in ("mfa-off", "mfa-no-heatmap"))
    assert isinstance(model.fusion, VisualOnlyFusion) == (path.stem == "ide-none")
    assert (model.ide.feature_extractor is None) == (path.stem == "ide-fie-arcface")
    assert (model.ide.identity_encoder is None) == (path.stem == "ide-ffe")
    recogniser = {"ide-none": "NoneType", "ide-ffe": "NoneType", "ide-ffe-fie-adaface": "AdaFace"}
    assert type(trainer.identity).__name__ == recogniser.get(path.stem, "ArcFaceTorch")
    summary = trainer.run()
    last = summary["last"]
    assert ("loss/mfa" in last) == (path.stem != "mfa-off")
    for name, value in last.items():
        if name.startswith("loss/"):
            assert math.isfinite(value), name
    assert last["loss/total"] > 0 and Path(summary["export"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ide-ffe", "ide-fie-arcface"])
def test_one_branch_ide_export_restores_through_the_loaders(name, tiny_models, celeba_subset, tmp_path):
    from honestface.loaders.model_files import build_model, resolve_model_files
    from honestface.pipeline import HonestFacePipeline

    config = ablation_config(REPO_ROOT / "training" / "configs" / "ablations" / f"{name}.yaml", tiny_models,
                             celeba_subset, tmp_path, "optim.lr=1e-2")
    trainer = Trainer(config)
    export = trainer.run()["export"]
    files = resolve_model_files(sd21="tiny-sd21-base.safetensors", checkpoint=export, osdface_dir="osdface-tiny",
                                models_dir=tiny_models)
    assert (files.vgg is None) == (name == "ide-fie-arcface")  # no FFE: no VGG16 file needed
    model = build_model(files)
    assert (model.ide.feature_extractor is None, model.ide.identity_encoder is None) == \
        (name == "ide-fie-arcface", name == "ide-ffe")
    sample = trainer.val_set[(0, 0)]
    lq, refs = sample["lq"][None], sample["references"][sample["reference_mask"]]
    assert len(refs)
    identity = trainer.identity  # the FIE's recogniser (None for the FFE alone)
    pipeline = HonestFacePipeline(model, identity_backend=identity)
    restored = pipeline.restore(lq, [refs])
    assert restored.shape == lq.shape and torch.isfinite(restored).all()
    with torch.no_grad():
        trainer.model.eval()
        embeddings = None if identity is None else identity.embed(refs).float()[None]
        expected = trainer.model(lq, refs[None], identity_embeddings=embeddings).image
        without = trainer.model(lq).image
    assert torch.allclose(restored, expected, atol=2e-3)
    assert not torch.allclose(expected, without, atol=1e-4)  # the one branch changes the face


def test_ide_switches_build_only_their_branch_and_bad_combinations_fail():
    from honestface.models.honestface import HonestFaceModel, build_diffusers

    config = HonestFaceConfig.from_preset("tiny")
    config.ide.use_fie = False
    model = HonestFaceModel(config, *build_diffusers(config))
    assert model.ide.identity_encoder is None
    assert not any(key.startswith("ide.identity_encoder") for key in model.trainable_state_dict())
    refs = torch.rand(2, 3, 3, 64, 64)
    prompt, _, _ = model.prompt(torch.rand(2, 3, 64, 64), refs)
    tokens = model.encode_references(refs)
    assert tuple(tokens.identity_tokens.shape) == (2, 0, config.token_dim)
    assert prompt.shape == (2, config.vre.num_tokens, config.token_dim)
    # the FFE's 4 tokens lead the prompt, the VRE's fill the rest
    visual = model.vre(torch.rand(2, 3, 64, 64) * 2 - 1)  # another face: only the p_F part may agree
    assert torch.equal(prompt[:, :4], model.ide(refs, torch.ones(2, 3, dtype=torch.bool)).feature_tokens)
    assert visual.tokens.shape[1] == config.vre.num_tokens

    with pytest.raises(ConfigError, match="vre_only"):
        HonestFaceConfig.from_dict({**config.to_dict(), "ide": {**config.to_dict()["ide"], "use_ffe": False}})
    fie_only = HonestFaceConfig.from_preset("tiny")
    fie_only.ide.use_ffe = False
    fie_only.bundled = ("vgg",)
    with pytest.raises(ConfigError, match="use_ffe"):
        fie_only.validate()
    fie_only.bundled, fie_only.ide.use_fie, fie_only.ide.use_ffe = (), True, True
    fie_only.ide.use_fie, fie_only.ide.center_identity = False, True
    with pytest.raises(ConfigError, match="center_identity"):
        fie_only.validate()


def test_mfa_switches(tmp_path):
    from honestface.losses import LossConfig, TrainingObjective
    from honestface.losses.objective import MSEDistance

    with pytest.raises(ConfigError, match="mfa_distance"):
        LossConfig(mfa_distance="ssim")
    config = LossConfig(mse=0, ea_dists=0, identity=0, adversarial=0, pretrained=False, mfa_distance="mse",
                        mfa_heatmaps=False)
    objective = TrainingObjective.build(config, None, torch.linspace(0.99, 0.01, 1000))
    assert objective.heatmap_backend is None
    restored, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    mask = objective.mfa_masks(restored)
    assert torch.equal(mask, torch.ones(2, 1, 32, 32))
    # a mask of ones leaves Eq. 12 the identity: L_MFA is the MSE of the whole faces on [-1, 1]
    loss = objective.generator_losses(restored, target, mask=mask)["mfa"]
    assert torch.allclose(loss, ((restored - target) * 2).pow(2).mean())
    assert torch.allclose(MSEDistance()(restored, target), ((restored - target) * 2).pow(2).flatten(1).mean(1))
