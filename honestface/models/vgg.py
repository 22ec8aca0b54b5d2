"""The frozen VGG16 trunk (torchvision layout, ImageNet weights) shared by the IDE's facial
feature extractor and the perceptual losses (LPIPS, DISTS, EA-DISTS).

Images are (B, 3, H, W) in [0, 1]; the trunk normalises them with the ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

#: Index of the last ReLU of each VGG16 stage in ``torchvision.models.vgg16().features``
#: (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16_STAGE_ENDS = (3, 8, 15, 22, 29)
VGG16_STAGE_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """Frozen VGG16 (torchvision layout, ImageNet weights) up to ``max_stage``.

    ``forward(images (B, 3, H, W) in [0, 1]) -> list`` of the stage outputs 0..max_stage.
    """

    def __init__(self, max_stage: int, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.max_stage = max_stage
        # Only the convolutional trunk, as laid out in torchvision's vgg16().features.
        self.features = make_layers(cfgs["D"], batch_norm=False)[: VGG16_STAGE_ENDS[max_stage] + 1]
        if state_dict is not None:
            self.load_weights(state_dict)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, state_dict: dict[str, torch.Tensor], source: str = "VGG16 weights") -> None:
        """Load torchvision's ``features.*`` keys (classifier keys are ignored)."""
        wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = [k for k in own if f"features.{k}" not in wanted]
        if missing:
            raise CheckpointError(source, f"missing VGG16 keys {missing[:4]}",
                                  "torchvision's vgg16 state dict (features.N.weight/bias)")
        for key, value in own.items():
            source_value = wanted[f"features.{key}"]
            if source_value.shape != value.shape:
                raise CheckpointError(source, f"VGG16 key features.{key} has shape {tuple(source_value.shape)}",
                                      f"shape {tuple(value.shape)}")
            value.copy_(source_value)

    def train(self, mode: bool = True) -> "VGG16Features":
        return super().train(False)  # always frozen

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        outputs = []
        start = 0
        for end in VGG16_STAGE_ENDS[: self.max_stage + 1]:
            h = self.features[start:end + 1](h)
            outputs.append(h)
            start = end + 1
        return outputs


def load_vgg16_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """torchvision's VGG16 file (``vgg16-397923af.pth`` or a .safetensors copy), read safely."""
    from ..loaders.safe_pickle import load_tensors

    return load_tensors(path)
