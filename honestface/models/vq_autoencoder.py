"""VQ autoencoder of the VRE's dictionaries (stage 1; DAEFR / OSDFace).

A taming-style VQGAN: ``encoder`` -> ``quant_conv`` (1x1) -> ``quantize`` (nearest code,
straight-through) -> ``post_quant_conv`` (1x1) -> ``decoder``. The encoder, ``quant_conv``
and the codebook are the classes of :mod:`honestface.models.vre`, so the first three parts
of a trained LQ autoencoder are exactly the VRE's ``vq`` module (same parameter names:
``encoder.*``, ``quant_conv.*``, ``quantize.embedding.weight``). The decoder mirrors the
encoder (taming/DAEFR layout: ``decoder.conv_in``, ``decoder.mid``, ``decoder.up[level]``
with ``num_res_blocks + 1`` blocks, ``decoder.norm_out``, ``decoder.conv_out``); it is only
needed to learn the dictionary and is ignored by the VRE.

Two autoencoders of this class are trained: the HQ dictionary on clean faces and the LQ
dictionary on synthetic LQ faces, the latter tied to the former by the association loss
(:func:`association_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VREConfig
from .vre import VQAttentionBlock, VQCodebook, VQEncoder, VQResnetBlock, _group_norm


class VQUpsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution (taming convention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class VQDecoder(nn.Module):
    """(B, embed_dim, g, g) -> (B, in_channels, R, R), g = R / 2^(L-1): the encoder mirrored."""

    def __init__(self, config: VREConfig) -> None:
        super().__init__()
        groups = config.norm_groups
        ch = config.base_channels
        multipliers = tuple(config.channel_multipliers)
        levels = len(multipliers)
        block_in = ch * multipliers[-1]
        resolution = config.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = VQResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = VQAttentionBlock(block_in, groups)
        self.mid.block_2 = VQResnetBlock(block_in, block_in, groups)
        stages: list[nn.Module] = []
        for level in reversed(range(levels)):  # built from the bottom, stored by level (taming)
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_out = ch * multipliers[level]
            for _ in range(config.num_res_blocks + 1):
                stage.block.append(VQResnetBlock(block_in, block_out, groups))
                block_in = block_out
                if resolution in config.attention_resolutions:
                    stage.attn.append(VQAttentionBlock(block_in, groups))
            if level != 0:
                stage.upsample = VQUpsample(block_in)
                resolution *= 2
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class Quantized:
    """What :func:`quantize` returns."""

    quantized: torch.Tensor  # (B, C, H, W) codes, straight-through: gradients flow to the features
    indices: torch.Tensor  # (B, H, W) long, nearest code of every position
    codebook_loss: torch.Tensor  # () mean ||sg[z] - e||^2: moves the codes to the features
    commitment_loss: torch.Tensor  # () mean ||z - sg[e]||^2: keeps the features near their codes
    perplexity: torch.Tensor  # () exp(entropy of the code usage in the batch); 1 .. codebook size


def quantize(features: torch.Tensor, codebook: VQCodebook) -> Quantized:
    """Nearest-code vector quantisation with the straight-through estimator (VQ-VAE).

    Args:
        features: (B, C, H, W) pre-quantisation features (``quant_conv`` output).
        codebook: the dictionary, ``embedding.weight`` (K, C).

    The two loss terms are returned unweighted; the VQ-VAE objective is
    ``codebook_loss + beta * commitment_loss`` (beta = 0.25).
    """
    b, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
    index, _ = codebook.nearest(flat)  # (B, HW), the VRE's own distance
    codes = codebook.embedding(index).to(features.dtype)  # (B, HW, C), differentiable in the codebook
    codes = codes.reshape(b, h, w, c).permute(0, 3, 1, 2)
    codebook_loss = F.mse_loss(codes.float(), features.detach().float())
    commitment_loss = F.mse_loss(features.float(), codes.detach().float())
    straight_through = features + (codes - features).detach()
    usage = torch.bincount(index.flatten(), minlength=codebook.embedding.num_embeddings).float()
    probabilities = usage / usage.sum()
    perplexity = torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum())
    return Quantized(straight_through, index.reshape(b, h, w), codebook_loss, commitment_loss, perplexity)


def association_loss(hq_features: torch.Tensor, lq_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """DAEFR's association loss: CLIP-style contrast between HQ and LQ feature positions.

    Every grid position of every image in the batch is one pair: its HQ feature (from the
    clean face) and its LQ feature (from the degraded face). Features are L2-normalised;
    the logits are ``exp(logit_scale) * hq @ lq^T`` over all B*H*W positions, and the loss
    is the mean of the cross entropies that pick each position's partner in both
    directions.

    Args:
        hq_features, lq_features: (B, C, H, W) pre-quantisation features of the same faces.
        logit_scale: () learnable log temperature (CLIP: log(1 / 0.07)).

    Returns:
        () loss; ``log(B*H*W)`` for unrelated features, 0 for perfectly matched ones.
    """
    if hq_features.shape != lq_features.shape:
        raise ValueError(f"HQ features {tuple(hq_features.shape)} and LQ features {tuple(lq_features.shape)} "
                         "differ: both dictionaries must have the same grid and code size")
    c = hq_features.shape[1]
    hq = F.normalize(hq_features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    lq = F.normalize(lq_features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
    logits = logit_scale.float().exp() * hq @ lq.t()  # (N, N), N = B*H*W
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@dataclass
class VQAutoencoderOutput:
    reconstruction: torch.Tensor  # (B, 3, R, R), the decoder's image (target range [-1, 1])
    features: torch.Tensor  # (B, C, g, g) pre-quantisation features
    quantized: Quantized


class VQAutoencoder(nn.Module):
    """``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``.

    ``forward`` takes what the encoder sees (the VRE's :func:`~honestface.models.vre.encoder_input`
    of a [-1, 1] face) and returns the reconstruction of the [-1, 1] face.
    """

    def __init__(self, config: VREConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = VQEncoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = VQCodebook(config.codebook_size, config.embed_dim)
        # taming's codebook start: small uniform codes, so every code begins near the features' origin
        nn.init.uniform_(self.quantize.embedding.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = VQDecoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) encoder input -> (B, embed_dim, g, g) pre-quantisation features."""
        return self.quant_conv(self.encoder(x))

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, g, g) codes -> (B, 3, R, R) image."""
        return self.decoder(self.post_quant_conv(quantized))

    def forward(self, x: torch.Tensor) -> VQAutoencoderOutput:
        features = self.encode(x)
        quantized = quantize(features, self.quantize)
        return VQAutoencoderOutput(self.decode(quantized.quantized), features, quantized)

    def vre_state_dict(self) -> dict[str, torch.Tensor]:
        """The parts the VRE uses (keys of :class:`~honestface.models.vre.VQLQEncoder`)."""
        return {k: v for k, v in self.state_dict().items()
                if k.startswith(("encoder.", "quant_conv.", "quantize."))}
