"""Visual representation embedder: OSDFace key names, token choice, normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honestface.config import HonestFaceConfig, VREConfig
from honestface.models.vre import VisualRepresentationEmbedder, VQLQEncoder, select_distinct_codes


def reference_selection(code_index: torch.Tensor, min_distance: torch.Tensor, num_tokens: int):
    """The per-image rule, written as a plain loop: walk positions by increasing distance
    and keep each code the first time it is seen."""
    chosen = []
    order = sorted(range(len(min_distance)), key=lambda p: (float(min_distance[p]), p))
    for position in order:
        code = int(code_index[position])
        if code not in chosen:
            chosen.append(code)
        if len(chosen) == num_tokens:
            break
    return chosen


def test_sd21_vq_encoder_has_the_released_key_names_and_shapes():
    config = HonestFaceConfig.from_preset("sd21").vre
    with torch.device("meta"):
        vq = VQLQEncoder(config)
    shapes = {k: tuple(v.shape) for k, v in vq.state_dict().items()}
    expected = {
        "encoder.conv_in.weight": (64, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (64,),
        "encoder.down.0.block.1.conv2.weight": (64, 64, 3, 3),
        "encoder.down.0.downsample.conv.weight": (64, 64, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (128, 64, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.5.block.0.conv1.weight": (512, 256, 3, 3),
        "encoder.down.5.attn.0.q.weight": (512, 512, 1, 1),
        "encoder.down.5.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.down.5.attn.1.norm2.weight": (512,),
        "encoder.mid.block_1.norm1.weight": (512,),
        "encoder.mid.attn_1.k.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (512, 512, 3, 3),
        "quant_conv.weight": (512, 512, 1, 1),
        "quantize.embedding.weight": (1024, 512),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    # Attention only at 16x16 (the last level) and in the middle; no downsample after it.
    assert not any(k.startswith("encoder.down.4.attn") for k in shapes)
    assert not any(k.startswith("encoder.down.5.downsample") for k in shapes)
    assert not any(".temb_proj." in k for k in shapes)


def test_tiny_encoder_gives_a_16x16_grid():
    config = HonestFaceConfig.from_preset("tiny")
    vre = VisualRepresentationEmbedder(config.vre, config.token_dim)
    features = vre.vq(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 256, config.vre.embed_dim)


@pytest.mark.parametrize("codebook", [4, 40, 128])
def test_batched_selection_equals_the_per_image_rule(codebook):
    generator = torch.Generator().manual_seed(codebook)
    batch, positions, num_tokens = 6, 256, 77
    code_index = torch.randint(0, codebook, (batch, positions), generator=generator)
    # Rounded distances create ties; the rule breaks them by position.
    min_distance = torch.round(torch.rand(batch, positions, generator=generator) * 50) / 50
    indices, valid = select_distinct_codes(code_index, min_distance, num_tokens, codebook)
    assert indices.shape == (batch, num_tokens) and valid.shape == (batch, num_tokens)
    for b in range(batch):
        expected = reference_selection(code_index[b], min_distance[b], num_tokens)
        count = int(valid[b].sum())
        assert count == len(expected) == min(num_tokens, len(set(code_index[b].tolist())))
        assert indices[b, :count].tolist() == expected
        assert bool(valid[b, :count].all()) and not bool(valid[b, count:].any())
        assert bool((indices[b, count:] == 0).all())


def test_embedder_output_matches_a_per_image_computation():
    torch.manual_seed(0)
    config = HonestFaceConfig.from_preset("tiny")
    config.vre.codebook_size = 24  # fewer codes than tokens: some slots must stay zero
    vre = VisualRepresentationEmbedder(config.vre, config.token_dim).eval()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out = vre(images)
        for b in range(3):
            x = (images[b:b + 1] - 0.5) / 0.5
            z = vre.vq.quant_conv(vre.vq.encoder(x))[0].flatten(1).t()  # (P, C)
            codes = vre.vq.quantize.embedding.weight
            d = torch.cdist(z.double(), codes.double()) ** 2
            min_d, idx = d.min(dim=1)
            chosen = reference_selection(idx, min_d, config.vre.num_tokens)
            assert out.indices[b, : len(chosen)].tolist() == chosen
            expected_codes = torch.zeros(config.vre.num_tokens, codes.shape[1])
            expected_codes[: len(chosen)] = codes[chosen]
            torch.testing.assert_close(out.codes[b], expected_codes)
            h = F.silu(F.conv1d(expected_codes.t().unsqueeze(0), vre.projection.conv1.weight, vre.projection.conv1.bias))
            tokens = F.silu(F.conv1d(h, vre.projection.conv2.weight, vre.projection.conv2.bias))[0].t()
            torch.testing.assert_close(out.tokens[b], tokens, atol=1e-5, rtol=1e-5)
    assert out.tokens.shape == (3, 77, config.token_dim)
    assert int(out.valid.sum(dim=1).max()) <= 24


def test_input_normalisation_of_the_released_weights():
    config = VREConfig(base_channels=16, channel_multipliers=(1, 2, 2), resolution=64, z_channels=32,
                       embed_dim=32, codebook_size=64, norm_groups=8, projection_hidden=16)
    vre = VisualRepresentationEmbedder(config, 32)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    seen = vre.encoder_input(x)
    torch.testing.assert_close(seen, 2 * x - 1)
    assert float(seen.min()) >= -3.0 and float(seen.max()) <= 1.0
    assert float(vre.encoder_input(-torch.ones(1, 3, 64, 64)).min()) == -3.0
    config.double_normalization = False
    torch.testing.assert_close(VisualRepresentationEmbedder(config, 32).encoder_input(x), x)
    # Other sizes are resized (bilinear) to the encoder resolution first.
    big = torch.rand(1, 3, 128, 128) * 2 - 1
    resized = F.interpolate(big, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(vre.encoder_input(big), resized)
