"""IResNet, the ArcFace backbone of insightface's ``arcface_torch``, in PyTorch.

Module names follow ``arcface_torch`` so its ``.pth`` state dicts load directly:
``conv1, bn1, prelu, layer1..layer4 (blocks: bn1, conv1, bn2, prelu, conv2, bn3,
downsample.0/1), bn2, fc, features``. Input (B, 3, 112, 112) RGB normalised to [-1, 1];
output (B, num_features) embeddings (not L2-normalised).

IResNet-50 has blocks (3, 4, 14, 3), IResNet-100 (3, 13, 30, 3); each stage halves the
resolution in its first block, so 112 -> 7 before the fully connected layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


class IResidualBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride) -> BN, plus the (projected) input."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(channels, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """(B, 3, 112, 112) in [-1, 1] -> (B, num_features)."""

    def __init__(self, layers: Sequence[int] = IRESNET_LAYERS["r50"], num_features: int = 512,
                 widths: Sequence[int] = STAGE_WIDTHS, dropout: float = 0.0, input_size: int = 112) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("IResNet has four stages: give four block counts and four widths")
        self.layers_config = tuple(int(n) for n in layers)
        self.widths = tuple(int(w) for w in widths)
        self.input_size = input_size
        self.conv1 = nn.Conv2d(3, self.widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(self.widths[0])
        in_channels = self.widths[0]
        for stage, (count, width) in enumerate(zip(self.layers_config, self.widths), start=1):
            blocks = [IResidualBlock(in_channels, width, stride=2)]
            blocks += [IResidualBlock(width, width) for _ in range(count - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        spatial = input_size // 16
        self.fc = nn.Linear(in_channels * spatial * spatial, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)

    @property
    def num_features(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def blocks(self) -> list[IResidualBlock]:
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]


def layers_from_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """Block counts per stage from ``layerS.N.*`` keys."""
    counts = []
    for stage in range(1, 5):
        indices = {int(k.split(".")[1]) for k in state_dict if k.startswith(f"layer{stage}.")}
        counts.append(max(indices) + 1 if indices else 0)
    return tuple(counts)  # type: ignore[return-value]
