"""The VRE's VQ encoder and code selection against golden numbers of the OSDFace release.

How ``fixtures/osdface_lq_embed_golden.json`` was made (once; only its numbers are kept):

1. The release's ``lq_embed`` package (``lq_embed/inference.py``, ``lq_embed/vqvae.py`` of
   jkwang28/OSDFace) was run unchanged with ``torch`` on the CPU.
2. Its ``vqvae_encoder(args, n_embed=96, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 1, 1),
   num_res_blocks=1, attn_resolutions=[16], resolution=512, z_channels=32, n_min=77)``
   (``args``: no cat_prompt_embedding, no use_pos_embedding, no use_att_pool) read an
   ``associate_2.ckpt``-style file whose ``state_dict`` held ``vqvae_LQ.<key>`` for every
   key of :class:`honestface.models.vre.VQLQEncoder` with the configuration below, filled
   by :func:`golden_weights` (the release's encoder has exactly these keys; its
   ``load_state_dict(strict=False)`` therefore loaded all of them).
3. Input: :func:`golden_images`, two 64x64 images in [-1, 1], each passed alone (the
   release's ``quantize.inference`` takes its minimum over the whole batch, so it handles one
   image per call). ``forward`` resizes to 512 (bilinear, align_corners=False), maps
   ``(x - 0.5) / 0.5`` and returns the (1, 77, 32) selected codes.
4. Stored: the ``quant_conv`` output of the same preprocessed input (the top-left 2x2 of
   every channel, mean and standard deviation), the codebook index of every returned row
   (-1 for the all-zero rows that pad when fewer than 77 distinct codes exist: 59 and 61
   here) and the sum of the returned codes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from honestface.config import VREConfig
from honestface.models.vre import VisualRepresentationEmbedder

GOLDEN = Path(__file__).parent / "fixtures" / "osdface_lq_embed_golden.json"

CONFIG = VREConfig(base_channels=32, channel_multipliers=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                   attention_resolutions=(16,), resolution=512, z_channels=32, embed_dim=32,
                   codebook_size=96, norm_groups=32, num_tokens=77, projection_hidden=16)


def golden_weights(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """One float64 normal draw per key in sorted key order (seed 20251201), then scaled:
    codebook x0.5, convolution weights / sqrt(fan_in), GroupNorm weights 1 + 0.1 x,
    everything else (biases) 0.1 x; cast to float32."""
    generator = torch.Generator().manual_seed(20251201)
    weights = {}
    for key, shape in sorted(shapes.items()):
        noise = torch.randn(shape, generator=generator, dtype=torch.float64).float()
        if key.endswith("embedding.weight"):
            weights[key] = noise * 0.5
        elif len(shape) == 4:
            weights[key] = noise / (shape[1] * shape[2] * shape[3]) ** 0.5
        elif "norm" in key and key.endswith(".weight"):
            weights[key] = 1.0 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def golden_images() -> torch.Tensor:
    """(2, 3, 64, 64) in [-1, 1]: float64 uniform draws (seed 7) cast to float32, x2 - 1."""
    generator = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 64, 64, generator=generator, dtype=torch.float64).float() * 2 - 1


def test_vq_encoder_and_code_selection_match_the_release():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    vre = VisualRepresentationEmbedder(CONFIG, token_dim=16).eval()
    shapes = {k: tuple(v.shape) for k, v in vre.vq.state_dict().items()}
    vre.vq.load_state_dict(golden_weights(shapes))
    images = golden_images()
    with torch.no_grad():
        features = vre.vq(vre.encoder_input(images))  # (2, 256, 32)
        codes, indices, valid = vre.select(images)
    grid = features.transpose(1, 2).reshape(2, 32, 16, 16)
    corner = torch.tensor(golden["quant_conv_corner"]).view(2, 32, 2, 2)
    assert torch.allclose(grid[:, :, :2, :2], corner, atol=2e-5)
    assert torch.allclose(grid.mean(dim=(1, 2, 3)), torch.tensor(golden["quant_conv_mean"]), atol=1e-6)
    assert torch.allclose(grid.std(dim=(1, 2, 3)), torch.tensor(golden["quant_conv_std"]), atol=1e-5)
    # the same codes in the same order (ascending distance, each code once), zero rows after
    ours = torch.where(valid, indices, torch.full_like(indices, -1))
    assert ours.tolist() == golden["selected_codes"]
    assert torch.allclose(codes.sum(dim=(1, 2)), torch.tensor(golden["tokens_sum"]), atol=1e-4)
