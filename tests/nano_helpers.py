"""Models as several test files build them (the shipped nano model, a tiny random one) and
deterministic stand-ins for the landmark and identity backends."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nano_pipeline(batch_size: int = 4, identity: bool = True):
    """The shipped honestface-nano model with dlib landmarks (fitted in the aligned face box
    when no face is detected) and, with ``identity``, the recogniser it was trained with."""
    from honestface.face import load_identity_backend, load_landmark_backend
    from honestface.pipeline import HonestFacePipeline, load_model

    model = load_model(checkpoint="honestface-nano.safetensors")
    recogniser = load_identity_backend(model.config.identity_backend) if identity else None
    return HonestFacePipeline(model, load_landmark_backend("dlib", aligned_fallback=True), recogniser,
                              batch_size=batch_size)


def tiny_model():
    """The "tiny" preset with random weights and a LoRA that changes the output (B != 0)."""
    import torch

    from honestface.config import HonestFaceConfig
    from honestface.models import HonestFaceModel, build_diffusers

    config = HonestFaceConfig.from_preset("tiny")
    unet, vae = build_diffusers(config, seed=0)
    torch.manual_seed(0)
    model = HonestFaceModel(config, unet, vae)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.05)
    return model.eval()


class ContentLandmarks:
    """Deterministic 68-point landmarks that depend on the image: a face-like template whose
    eye region is moved and distorted according to the image's colour statistics."""

    name = "test-landmarks"

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        points = torch.rand(68, 2, generator=g) * 0.6 + 0.2
        for start, cx in ((36, 0.375), (42, 0.625)):
            angles = torch.linspace(0, 2 * math.pi, 7)[:6]
            points[start:start + 6, 0] = cx + 0.06 * torch.cos(angles)
            points[start:start + 6, 1] = 0.47 + 0.02 * torch.sin(angles)
        self.template = points
        self.directions = torch.randn(68, 2, generator=g)

    def landmarks(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        stats = images.mean(dim=(2, 3))  # (B, 3)
        scale = torch.tensor([w, h], dtype=torch.float32)
        shift = (stats[:, :2] - 0.5) * 0.1  # an affine part (ignored by A-LD)
        distortion = (stats[:, 2:3] - 0.5).unsqueeze(-1) * 0.05 * self.directions  # a non-affine part
        return (self.template + shift.unsqueeze(1) + distortion) * scale

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        points = self.landmarks(images)
        ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
        d2 = (xs - points[..., 0, None, None]) ** 2 + (ys - points[..., 1, None, None]) ** 2
        return torch.exp(-d2 / 8.0)


class PooledIdentity:
    """A fixed random projection of a 4x4 colour thumbnail: similar faces, similar embeddings."""

    name = "test-identity"
    embedding_dim = 16

    def __init__(self) -> None:
        self.matrix = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ self.matrix
