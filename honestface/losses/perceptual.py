"""Perceptual distances on VGG16 features: DISTS, edge-aware DISTS (Eq. 9) and LPIPS.

Both networks sit on torchvision's ImageNet VGG16 (the file ``vgg16-397923af.pth`` that
the identity embedder also uses) plus a small file of learned weights:

- **DISTS** (Ding et al. 2020): VGG16 with max-pooling replaced by L2 (Hanning) pooling;
  structure and texture similarities of the input and the five stage outputs, mixed by
  learned non-negative ``alpha`` / ``beta`` (1475 channels each). Weights file: the
  ``alpha``/``beta`` tensors of the authors' release (``weights.pt`` of DISTS_pytorch,
  stored here as ``dists_weights.pt``; .pt/.pth/.safetensors).
- **LPIPS** (Zhang et al. 2018, VGG variant): unit-normalised relu1_2 .. relu5_3 features,
  squared differences weighted per channel by five 1x1 "lin" layers. Weights file: the
  lpips package's ``v0.1/vgg.pth`` (keys ``lin{i}.model.1.weight``), stored here as
  ``lpips_vgg.pth``.

Their input normalisations coincide: LPIPS maps [-1, 1] with shift/scale that equal
ImageNet's mean/std on [0, 1], which is what the shared VGG16 applies.

``pretrained=False`` builds randomly initialised networks. This is for tests only (the
values mean nothing perceptually); training configs must use real weights or switch the
loss off.

Images: (B, 3, H, W) in [0, 1]. Distances: (B,).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..models.vgg import VGG16_STAGE_CHANNELS, VGG16_STAGE_ENDS, VGG16Features

#: Default file names, looked up in ``<models>/honestface``.
VGG16_FILE = "vgg16-397923af.pth"
DISTS_FILE = "dists_weights.pt"
LPIPS_FILE = "lpips_vgg.pth"

DISTS_CHANNELS = (3,) + VGG16_STAGE_CHANNELS  # input + five stages = 1475


def load_weight_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or a (safely unpickled) .pt/.pth/.ckpt file."""
    from ..loaders.safe_pickle import load_tensors

    return load_tensors(path, what=what)


#: Added under the square root of the Sobel magnitude (keeps its gradient finite on flat areas).
SOBEL_EPS = 1e-6


def sobel_edges(images: torch.Tensor, eps: float = SOBEL_EPS) -> torch.Tensor:
    """Edge map of EA-DISTS as the OSDFace release computes it, (B, C, H, W) -> (B, 3, H, W).

    The grayscale image (mean over the channels) is filtered with the unnormalised Sobel
    kernels ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and its transpose (zero padding of
    one pixel), and the magnitude ``sqrt(gx^2 + gy^2 + eps)`` is repeated to three
    channels, as DISTS takes RGB. On [0, 1] images the magnitude lies in
    [sqrt(eps), 4 sqrt(2)].
    """
    gray = images.mean(dim=1, keepdim=True)
    kernel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                            dtype=gray.dtype, device=gray.device)
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # (2, 1, 3, 3): x and y
    gradients = F.conv2d(gray, kernels, padding=1)
    magnitude = (gradients.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()
    return magnitude.expand(-1, 3, -1, -1)


class L2Pooling(nn.Module):
    """DISTS's anti-aliased pooling: sqrt(hanning3x3 * x^2), stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        window = torch.hann_window(5, periodic=False)[1:-1]  # (0.5, 1, 0.5)
        kernel = window[:, None] * window[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel", kernel[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x ** 2, self.kernel.to(x.dtype), stride=2, padding=1, groups=self.channels)
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS distance. ``forward(a, b) -> (B,)``, 0 for identical images.

    Args:
        vgg: a :class:`~honestface.models.vgg.VGG16Features` with all five stages (its
            conv weights are shared; max-pooling is replaced by :class:`L2Pooling`).
        alpha, beta: (1475,) learned non-negative weights; ``None`` gives the authors'
            initialisation (normal(0.1, 0.01)), for tests only.
    """

    def __init__(self, vgg: VGG16Features, alpha: torch.Tensor | None = None,
                 beta: torch.Tensor | None = None) -> None:
        super().__init__()
        if vgg.max_stage < 4:
            raise ValueError("DISTS needs all five VGG16 stages")
        self.vgg = vgg
        layers = []
        for layer in vgg.features:
            if isinstance(layer, nn.MaxPool2d):
                layers.append(L2Pooling(layers_channels(layers)))
            else:
                layers.append(layer)
        self.stages = nn.ModuleList()
        start = 0
        for end in VGG16_STAGE_ENDS:
            self.stages.append(nn.Sequential(*layers[start:end + 1]))
            start = end + 1
        total = sum(DISTS_CHANNELS)
        generator = torch.Generator().manual_seed(0)
        if alpha is None:
            alpha = 0.1 + 0.01 * torch.randn(total, generator=generator)
        if beta is None:
            beta = 0.1 + 0.01 * torch.randn(total, generator=generator)
        alpha, beta = alpha.reshape(-1).float(), beta.reshape(-1).float()
        if alpha.numel() != total or beta.numel() != total:
            raise CheckpointError("DISTS weights", f"alpha/beta have {alpha.numel()}/{beta.numel()} values",
                                  f"{total} each")
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "DISTS":
        return super().train(False)  # frozen

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = (images - self.vgg.mean.to(images.dtype)) / self.vgg.std.to(images.dtype)
        out = [images]
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        feats_a, feats_b = self.features(a), self.features(b)
        weight_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / weight_sum, DISTS_CHANNELS)
        betas = torch.split(self.beta / weight_sum, DISTS_CHANNELS)
        c1 = c2 = 1e-6
        structure = texture = 0.0
        for fa, fb, alpha, beta in zip(feats_a, feats_b, alphas, betas):
            mean_a, mean_b = fa.mean(dim=(2, 3)), fb.mean(dim=(2, 3))
            s1 = (2 * mean_a * mean_b + c1) / (mean_a ** 2 + mean_b ** 2 + c1)
            var_a = ((fa - mean_a[..., None, None]) ** 2).mean(dim=(2, 3))
            var_b = ((fb - mean_b[..., None, None]) ** 2).mean(dim=(2, 3))
            cov = (fa * fb).mean(dim=(2, 3)) - mean_a * mean_b
            s2 = (2 * cov + c2) / (var_a + var_b + c2)
            structure = structure + (s1 * alpha.to(s1.dtype)).sum(dim=1)
            texture = texture + (s2 * beta.to(s2.dtype)).sum(dim=1)
        return 1.0 - (structure + texture)


def layers_channels(layers: list[nn.Module]) -> int:
    """Output channels of the last convolution in ``layers``."""
    for layer in reversed(layers):
        if isinstance(layer, nn.Conv2d):
            return layer.out_channels
    raise ValueError("no convolution before the pooling layer")


class EdgeAwareDISTS(nn.Module):
    """EA-DISTS (Eq. 9): DISTS(x_H, x_hat) + DISTS(Sobel(x_H), Sobel(x_hat)); (B,)."""

    def __init__(self, dists: DISTS) -> None:
        super().__init__()
        self.dists = dists

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dists(target, restored) + self.dists(sobel_edges(target), sobel_edges(restored))


class LPIPS(nn.Module):
    """LPIPS (VGG). ``forward(a, b) -> (B,)`` for images in [0, 1].

    Args:
        vgg: :class:`~honestface.models.vgg.VGG16Features` with all five stages.
        lin_weights: five (1, C_i, 1, 1) non-negative channel weights; ``None`` gives
            ones / C_i (plain mean of squared unit-feature differences), for tests only.
    """

    def __init__(self, vgg: VGG16Features, lin_weights: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        if vgg.max_stage < 4:
            raise ValueError("LPIPS needs all five VGG16 stages")
        self.vgg = vgg
        if lin_weights is None:
            lin_weights = [torch.full((1, c, 1, 1), 1.0 / c) for c in VGG16_STAGE_CHANNELS]
        for index, (weight, channels) in enumerate(zip(lin_weights, VGG16_STAGE_CHANNELS)):
            if weight.numel() != channels:
                raise CheckpointError("LPIPS weights", f"lin{index} has {weight.numel()} values", f"{channels}")
            self.register_buffer(f"lin{index}", weight.reshape(1, channels, 1, 1).float())
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for index, (fa, fb) in enumerate(zip(self.vgg(a), self.vgg(b))):
            na = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            weighted = ((na - nb) ** 2 * getattr(self, f"lin{index}").to(fa.dtype)).sum(dim=1)
            total = total + weighted.mean(dim=(1, 2))
        return total


# ----------------------------------------------------------------------------- builders


def _resolve(name: str | Path, models_dir: str | Path | None, what: str) -> Path:
    from ..paths import find_model_file

    return find_model_file("honestface", name, models_dir=models_dir, what=what)


def build_vgg16(pretrained: bool = True, models_dir: str | Path | None = None,
                vgg_file: str | Path = VGG16_FILE) -> VGG16Features:
    """All five stages of the frozen ImageNet VGG16 (random weights if not ``pretrained``)."""
    state = None
    if pretrained:
        from ..models.vgg import load_vgg16_state_dict

        state = load_vgg16_state_dict(_resolve(vgg_file, models_dir, "VGG16 (torchvision ImageNet weights)"))
    return VGG16Features(4, state)


def build_dists(pretrained: bool = True, models_dir: str | Path | None = None,
                dists_file: str | Path = DISTS_FILE, vgg_file: str | Path = VGG16_FILE,
                vgg: VGG16Features | None = None) -> DISTS:
    """DISTS from its files (``pretrained=False``: random, test-only)."""
    vgg = vgg or build_vgg16(pretrained, models_dir, vgg_file)
    if not pretrained:
        return DISTS(vgg)
    path = _resolve(dists_file, models_dir, "DISTS weights (alpha/beta)")
    state = load_weight_file(path, "DISTS weights")
    if "alpha" not in state or "beta" not in state:
        raise CheckpointError(path, f"no 'alpha'/'beta' tensors (keys: {sorted(state)[:6]})",
                              "the DISTS release's weights.pt")
    return DISTS(vgg, state["alpha"], state["beta"])


def build_lpips(pretrained: bool = True, models_dir: str | Path | None = None,
                lpips_file: str | Path = LPIPS_FILE, vgg_file: str | Path = VGG16_FILE,
                vgg: VGG16Features | None = None) -> LPIPS:
    """LPIPS-VGG from its files (``pretrained=False``: uniform lin weights, test-only)."""
    vgg = vgg or build_vgg16(pretrained, models_dir, vgg_file)
    if not pretrained:
        return LPIPS(vgg)
    path = _resolve(lpips_file, models_dir, "LPIPS VGG linear layers")
    state = load_weight_file(path, "LPIPS weights")
    weights = []
    for index in range(5):
        key = next((k for k in (f"lin{index}.model.1.weight", f"lin{index}.weight") if k in state), None)
        if key is None:
            raise CheckpointError(path, f"no lin{index} weight (keys: {sorted(state)[:6]})",
                                  "the lpips package's v0.1 vgg.pth")
        weights.append(state[key])
    return LPIPS(vgg, weights)
