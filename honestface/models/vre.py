"""Visual representation embedder (VRE, paper Eq. 7; OSDFace's LQ embedder).

A taming/DAEFR-style VQ encoder turns the LQ face into a grid of features; each feature
is matched to its nearest code in the LQ codebook. The codes of the ``num_tokens`` most
confident grid positions (smallest distance to their nearest code), counting every code
once, form the visual prompt ``p_L`` after a small 1x1-convolution projection.

Module and parameter names follow the OSDFace release so ``associate_2.ckpt``
(``vqvae_LQ.encoder.*``, ``vqvae_LQ.quant_conv.*``, ``vqvae_LQ.quantize.embedding.weight``)
and ``embedding_change_weights.pth`` (``conv1.*``, ``conv2.*``) load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VREConfig


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class VQResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> conv2, plus a 1x1 ``nin_shortcut``
    when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class VQAttentionBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections.

    ``norm2`` exists in the released weights (DAEFR uses it for cross-attention in the
    decoder); the encoder's self-attention does not use it.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(channels, groups)
        self.norm2 = _group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm1(x)
        # (B, 1, HW, C) so scaled_dot_product_attention sees one head.
        q, k, v = (proj(normed).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(attended)


class VQDownsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel right/bottom (taming convention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VQEncoder(nn.Module):
    """(B, 3, R, R) -> (B, z_channels, R / 2^(L-1), R / 2^(L-1)), L = len(channel_multipliers)."""

    def __init__(self, config: VREConfig) -> None:
        super().__init__()
        groups = config.norm_groups
        ch = config.base_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        resolution = config.resolution
        in_multipliers = (1,) + tuple(config.channel_multipliers)
        self.down = nn.ModuleList()
        block_in = ch
        for level, multiplier in enumerate(config.channel_multipliers):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            block_in = ch * in_multipliers[level]
            block_out = ch * multiplier
            for _ in range(config.num_res_blocks):
                stage.block.append(VQResnetBlock(block_in, block_out, groups))
                block_in = block_out
                if resolution in config.attention_resolutions:
                    stage.attn.append(VQAttentionBlock(block_in, groups))
            if level != len(config.channel_multipliers) - 1:
                stage.downsample = VQDownsample(block_in)
                resolution //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = VQResnetBlock(block_in, block_in, groups)
        self.mid.attn_1 = VQAttentionBlock(block_in, groups)
        self.mid.block_2 = VQResnetBlock(block_in, block_in, groups)
        self.norm_out = _group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn) > 0:
                    h = stage.attn[index](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VQCodebook(nn.Module):
    """The LQ dictionary: ``embedding.weight`` (codebook_size, embed_dim)."""

    def __init__(self, codebook_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    def nearest(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, C) -> nearest code index (B, P) and its squared distance (B, P)."""
        # float32 at least: half-precision distances would reorder near-ties.
        features = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
        codes = self.embedding.weight.to(features.dtype)
        # ||z||^2 + ||e||^2 - 2 z.e, the same expansion the released model was trained with.
        distances = (features.pow(2).sum(-1, keepdim=True) + codes.pow(2).sum(-1)
                     - 2.0 * features @ codes.t())
        min_distance, index = distances.min(dim=-1)
        return index, min_distance


class VQLQEncoder(nn.Module):
    """``encoder`` + ``quant_conv`` + ``quantize``: the ``vqvae_LQ.*`` part of associate_2.ckpt."""

    def __init__(self, config: VREConfig) -> None:
        super().__init__()
        self.encoder = VQEncoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.quantize = VQCodebook(config.codebook_size, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) encoder input -> (B, P, embed_dim) pre-quantisation features, P = grid^2."""
        return self.quant_conv(self.encoder(x)).flatten(2).transpose(1, 2)


class TokenProjection(nn.Module):
    """``conv1`` (1x1, embed_dim -> hidden), SiLU, ``conv2`` (1x1, hidden -> token_dim), SiLU.

    (B, T, embed_dim) -> (B, T, token_dim); keys match ``embedding_change_weights.pth``.
    """

    def __init__(self, embed_dim: int, hidden: int, token_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(embed_dim, hidden, 1)
        self.conv2 = nn.Conv1d(hidden, token_dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(tokens.transpose(1, 2)))
        return F.silu(self.conv2(h)).transpose(1, 2)


def select_distinct_codes(code_index: torch.Tensor, min_distance: torch.Tensor, num_tokens: int,
                          num_codes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched token choice of the VRE.

    Positions are sorted by their nearest-code distance (ascending, stable); walking that
    order, each code is kept the first time it appears, until ``num_tokens`` codes are
    kept. Fewer distinct codes than ``num_tokens`` leave the remaining slots invalid.

    Args:
        code_index: (B, P) nearest code of every grid position.
        min_distance: (B, P) its distance.
        num_tokens: T.
        num_codes: codebook size (default: ``code_index.max() + 1``).

    Returns:
        indices (B, T) long (0 where invalid) and valid (B, T) bool.
    """
    batch, positions = code_index.shape
    order = torch.sort(min_distance, dim=1, stable=True).indices
    codes_sorted = torch.gather(code_index, 1, order)  # (B, P)
    rank = torch.arange(positions, device=code_index.device).expand(batch, positions)
    if num_codes is None:
        num_codes = int(code_index.max().item()) + 1 if code_index.numel() else 1
    first_rank = torch.full((batch, num_codes), positions, dtype=torch.long, device=code_index.device)
    first_rank.scatter_reduce_(1, codes_sorted, rank, reduce="amin", include_self=True)
    is_first = torch.gather(first_rank, 1, codes_sorted) == rank  # (B, P)
    slot = torch.cumsum(is_first.long(), dim=1) - 1
    keep = is_first & (slot < num_tokens)
    # Rows that keep nothing at a position write into a dump column T, dropped afterwards.
    target = torch.where(keep, slot, torch.full_like(slot, num_tokens))
    indices = torch.zeros(batch, num_tokens + 1, dtype=torch.long, device=code_index.device)
    indices.scatter_(1, target, torch.where(keep, codes_sorted, torch.zeros_like(codes_sorted)))
    valid = torch.zeros(batch, num_tokens + 1, dtype=torch.bool, device=code_index.device)
    valid.scatter_(1, target, keep)
    return indices[:, :num_tokens], valid[:, :num_tokens]


def encoder_input(images: torch.Tensor, config: VREConfig) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, R, R), what the VQ encoder sees.

    Resized (bilinear) to ``config.resolution``; with ``config.double_normalization`` mapped
    again by ``(x - 0.5) / 0.5`` as the released weights were trained (values in [-3, 1]).
    Stage-1 training feeds its encoders through this same function, so a trained dictionary
    sees at inference exactly what it saw in training.
    """
    size = config.resolution
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if config.double_normalization:
        images = (images - 0.5) / 0.5
    return images


@dataclass
class VREOutput:
    tokens: torch.Tensor  # (B, T, token_dim) p_L
    codes: torch.Tensor  # (B, T, embed_dim) selected codebook vectors (zeros where invalid)
    indices: torch.Tensor  # (B, T) selected code indices
    valid: torch.Tensor  # (B, T) bool


class VisualRepresentationEmbedder(nn.Module):
    """LQ face -> visual prompt ``p_L`` (B, num_tokens, token_dim).

    Attributes ``vq`` (frozen, from ``associate_2.ckpt``) and ``projection`` (trainable,
    from ``embedding_change_weights.pth``).
    """

    def __init__(self, config: VREConfig, token_dim: int) -> None:
        super().__init__()
        self.config = config
        self.vq = VQLQEncoder(config)
        self.projection = TokenProjection(config.embed_dim, config.projection_hidden, token_dim)

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the VQ encoder sees (:func:`encoder_input`)."""
        return encoder_input(images, self.config)

    def select(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> codes (B, T, embed_dim), indices (B, T), valid (B, T)."""
        features = self.vq(self.encoder_input(images))
        code_index, min_distance = self.vq.quantize.nearest(features)
        indices, valid = select_distinct_codes(code_index, min_distance, self.config.num_tokens,
                                              self.config.codebook_size)
        weight = self.vq.quantize.embedding.weight
        codes = weight[indices] * valid.unsqueeze(-1).to(weight.dtype)
        return codes, indices, valid

    def forward(self, images: torch.Tensor) -> VREOutput:
        """(B, 3, H, W) in [-1, 1] -> :class:`VREOutput` with ``tokens`` = p_L."""
        codes, indices, valid = self.select(images)
        return VREOutput(tokens=self.projection(codes), codes=codes, indices=indices, valid=valid)
