"""Models as several test files build them: the shipped nano model, and a tiny random one."""

from __future__ import annotations


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
