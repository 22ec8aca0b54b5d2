"""Stage-1 VRE training (training/vq.py): the losses of each kind on real faces."""

from __future__ import annotations

import pytest
import torch

from honestface.errors import ConfigError, MissingModelFileError
from honestface.loaders.osdface import load_vq_encoder
from honestface.models.vre import VisualRepresentationEmbedder
from training.data import DataConfig, IdentityFaceDataset, collate, scan_identity_folders
from training.vq import VQLossSection, VQModelSection, VQTask

torch.set_num_threads(1)


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
    hq = VQTask("vq-hq", VQModelSection(preset="tiny"), VQLossSection(pretrained=False))
    history = train(hq, faces, 12)
    assert set(history[0]) >= {"l1", "perceptual", "codebook", "commitment", "total", "codes/perplexity"}
    assert "association" not in history[0]
    assert sum(h["l1"] for h in history[-3:]) < 0.8 * sum(h["l1"] for h in history[:3])
    hq_file = hq.export(tmp_path / "hq", step=12, epoch=0, hyper_parameters={})
    assert hq_file.name == "hq_dictionary.ckpt"

    # the LQ dictionary: association held back for 3 steps, then on; the HQ autoencoder frozen
    losses = VQLossSection(perceptual=0, start_steps={"association": 3})
    lq = VQTask("vq-lq", VQModelSection(preset="tiny", hq_dictionary=str(hq_file), train_hq=False), losses)
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
    both = VQTask("vq-lq", VQModelSection(preset="tiny", hq_dictionary=str(hq_file), init=str(exported)),
                  VQLossSection(perceptual=0))
    assert torch.equal(both.logit_scale.detach(), lq.logit_scale.detach())
    step = train(both, faces, 1)[0]
    assert {"hq_l1", "hq_codebook", "hq_commitment", "association"} <= set(step)
    assert any(not torch.equal(v, hq.hq.state_dict()[k]) for k, v in both.hq.state_dict().items())


def test_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs model.hq_dictionary"):
        VQTask("vq-lq", VQModelSection(preset="tiny"), VQLossSection(perceptual=0))
    with pytest.raises(MissingModelFileError, match="hq_dictionary"):
        VQTask("vq-lq", VQModelSection(preset="tiny", hq_dictionary=str(tmp_path / "none.ckpt")),
               VQLossSection(perceptual=0))
    with pytest.raises(ConfigError, match="unknown VRE config key 'codes'"):
        VQModelSection(preset="tiny", overrides={"codes": 3}).vre_config()
    with pytest.raises(ConfigError, match="unknown loss"):
        VQLossSection(start_steps={"gan": 3})
    with pytest.raises(ConfigError, match="unknown VQ kind"):
        VQTask("vq", VQModelSection(preset="tiny"), VQLossSection(perceptual=0))
    # the perceptual term needs its files unless switched off
    with pytest.raises(MissingModelFileError):
        VQTask("vq-hq", VQModelSection(preset="tiny"), VQLossSection(), models_dir=tmp_path)
    task = VQTask("vq-hq", VQModelSection(preset="tiny"), VQLossSection(perceptual=0))
    with pytest.raises(ConfigError, match="data.image_size to 64"):
        task.losses(torch.rand(1, 3, 32, 32), None, 0)
