"""The shipped nano model as the real-photo tests build it."""

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
