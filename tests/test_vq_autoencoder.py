"""Stage-1 VQ autoencoder: quantiser math, association loss, and the associate_2.ckpt round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from honestface.config import HonestFaceConfig
from honestface.errors import CheckpointError
from honestface.loaders.osdface import (HQ_PREFIX, VQ_FILE, VQ_PREFIX, find_osdface_folder, load_vq_dictionary,
                                        load_vq_encoder, save_vq_checkpoint)
from honestface.models.vq_autoencoder import VQAutoencoder, association_loss, quantize
from honestface.models.vre import VisualRepresentationEmbedder, encoder_input

torch.set_num_threads(1)


def tiny_vre_config():
    return HonestFaceConfig.from_preset("tiny").vre


def test_autoencoder_shapes_and_vre_keys():
    config = tiny_vre_config()
    torch.manual_seed(0)
    model = VQAutoencoder(config)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = model(encoder_input(x, config))
    assert out.reconstruction.shape == (2, 3, 64, 64)
    assert out.features.shape == (2, config.embed_dim, 16, 16)
    assert out.quantized.indices.shape == (2, 16, 16)
    vre = VisualRepresentationEmbedder(config, token_dim=32)
    assert set(model.vre_state_dict()) == set(vre.vq.state_dict())
    # the decoder mirrors the encoder: one attention per block at the 16 px level, as in the encoder
    assert len(model.decoder.up[2].attn) == config.num_res_blocks + 1 and len(model.decoder.up[0].attn) == 0


def test_quantize_matches_an_independent_nearest_code_search_and_passes_gradients_straight_through():
    config = tiny_vre_config()
    torch.manual_seed(1)
    model = VQAutoencoder(config)
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    features = torch.randn(2, config.embed_dim, 4, 4, requires_grad=True)
    result = quantize(features, model.quantize)

    flat = features.detach().permute(0, 2, 3, 1).reshape(-1, config.embed_dim)
    expected_index = torch.cdist(flat.double(), model.quantize.embedding.weight.detach().double()).argmin(dim=1)
    assert torch.equal(result.indices.flatten(), expected_index)
    codes = model.quantize.embedding.weight.detach()[expected_index]
    assert torch.allclose(result.quantized.detach().permute(0, 2, 3, 1).reshape(-1, config.embed_dim), codes,
                          atol=1e-6)
    distance = ((flat - codes) ** 2).mean()
    assert result.codebook_loss.item() == pytest.approx(distance.item(), rel=1e-5)
    assert result.commitment_loss.item() == pytest.approx(distance.item(), rel=1e-5)
    counts = torch.bincount(expected_index, minlength=config.codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    assert result.perplexity.item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)

    # straight-through: d(sum(w * q)) / d features == w; the codebook term moves only the codes,
    # the commitment term only the features
    weight = torch.randn_like(result.quantized)
    (result.quantized * weight).sum().backward()
    assert torch.allclose(features.grad, weight)
    features.grad = None
    model.quantize.embedding.weight.grad = None
    quantize(features, model.quantize).codebook_loss.backward()
    assert features.grad is None and model.quantize.embedding.weight.grad.abs().sum() > 0
    model.quantize.embedding.weight.grad = None
    quantize(features, model.quantize).commitment_loss.backward()
    assert features.grad.abs().sum() > 0 and model.quantize.embedding.weight.grad is None


def test_association_loss_equals_a_per_position_cross_entropy():
    torch.manual_seed(2)
    hq, lq = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    scale = torch.tensor(math.log(1 / 0.07))
    loss = association_loss(hq, lq, scale)
    # independently: one row of pairs at a time, cosine similarities, -log softmax of the partner
    a = [hq[b, :, i, j] for b in range(2) for i in range(3) for j in range(3)]
    c = [lq[b, :, i, j] for b in range(2) for i in range(3) for j in range(3)]
    n = len(a)
    sim = torch.tensor([[F.cosine_similarity(a[i], c[j], dim=0).item() for j in range(n)] for i in range(n)],
                       dtype=torch.float64) / 0.07
    forward = -torch.stack([sim[i].log_softmax(0)[i] for i in range(n)]).mean()
    backward = -torch.stack([sim[:, j].log_softmax(0)[j] for j in range(n)]).mean()
    assert loss.item() == pytest.approx(0.5 * (forward + backward).item(), rel=1e-4)
    # no temperature information: log N; identical, well separated features: ~0
    assert association_loss(hq, lq, torch.tensor(-1e4)).item() == pytest.approx(math.log(n), rel=1e-5)
    distinct = torch.eye(18).reshape(18, 2, 3, 3).permute(1, 0, 2, 3)  # one-hot per position
    assert association_loss(distinct, distinct, torch.tensor(math.log(100.0))).item() < 1e-6
    with pytest.raises(ValueError, match="same grid"):
        association_loss(hq, lq[:, :, :2], scale)


def test_checkpoint_is_read_by_the_vre_loader_like_the_release(tmp_path):
    """save_vq_checkpoint writes the release's format: the project's VRE loader takes the
    vqvae_LQ part (decoder and HQ dictionary ignored, counted), and the VRE then picks the
    codes the trained autoencoder's quantiser picks."""
    config = tiny_vre_config()
    torch.manual_seed(3)
    lq, hq = VQAutoencoder(config), VQAutoencoder(config)
    with torch.no_grad():
        lq.quantize.embedding.weight.normal_()
    folder = tmp_path / "stage1"
    path = save_vq_checkpoint(folder / VQ_FILE, lq=lq, hq=hq, extra_state={"logit_scale": torch.tensor(2.0)},
                              epoch=3, global_step=12, hyper_parameters={"vre": {"embed_dim": 32}})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 12 and raw["epoch"] == 3
    keys = raw["state_dict"].keys()
    assert {k for k in keys if k.startswith(VQ_PREFIX)} == {VQ_PREFIX + k for k in lq.state_dict()}
    assert {k for k in keys if k.startswith(HQ_PREFIX)} == {HQ_PREFIX + k for k in hq.state_dict()}

    assert find_osdface_folder(folder, files=(VQ_FILE,)) == folder
    vre = VisualRepresentationEmbedder(config, token_dim=32)
    report = load_vq_encoder(vre, path)
    assert report.loaded == len(vre.vq.state_dict())
    assert report.ignored == len(keys) - report.loaded
    for key, value in vre.vq.state_dict().items():
        assert torch.equal(value, lq.state_dict()[key]), key

    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = lq(encoder_input(image, config))
        codes, indices, valid = vre.select(image)
    used = set(out.quantized.indices.flatten().tolist())
    assert set(indices[valid].tolist()) <= used and int(valid.sum()) == min(len(used), config.num_tokens)

    # both dictionaries come back whole (decoders included), e.g. to continue stage 1
    for prefix, source in ((HQ_PREFIX, hq), (VQ_PREFIX, lq)):
        again = VQAutoencoder(config)
        load_vq_dictionary(again, path, prefix)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in again.state_dict().items())


def test_an_hq_dictionary_alone_is_refused_by_the_vre_loader(tmp_path):
    config = tiny_vre_config()
    path = save_vq_checkpoint(tmp_path / "hq_dictionary.ckpt", hq=VQAutoencoder(config))
    vre = VisualRepresentationEmbedder(config, token_dim=32)
    with pytest.raises(CheckpointError, match="vqvae_LQ"):
        load_vq_encoder(vre, path)
    with pytest.raises(CheckpointError, match="no 'vqvae_LQ.\\*' keys"):
        load_vq_dictionary(VQAutoencoder(config), path, VQ_PREFIX)
    other = HonestFaceConfig.from_preset("tiny").vre
    other.codebook_size = 64
    with pytest.raises(CheckpointError, match="shape"):
        load_vq_dictionary(VQAutoencoder(other), path, HQ_PREFIX)
