"""``HonestFaceModel.forward`` is the composition of its public parts, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from honestface.models.color import color_correct

from nano_helpers import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _faces(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(int(torch.tensor(shape[:-3]).prod()), 3, 8, 8, generator=generator)
    return F.interpolate(small, size=shape[-2:], mode="bilinear", align_corners=False).reshape(shape)


@pytest.mark.parametrize("method", ["none", "adain", "wavelet"])
def test_forward_is_prompt_then_restorer_then_colour_correction(model, method):
    lq = _faces((2, 3, 64, 64), 0)
    references = _faces((2, 3, 3, 64, 64), 1)
    mask = torch.tensor([[True, True, False], [False, False, False]])  # the second face has none
    embeddings = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = model(lq, references, mask, None, None, embeddings, color_correction=method)
        prompt, index, valid = model.prompt(lq, references, mask, None, None, embeddings)
        restored = model.restorer(lq * 2.0 - 1.0, prompt)
        image = restored.image
        if method != "none":
            image = color_correct(image, lq * 2.0 - 1.0, method).clamp(-1.0, 1.0)
    assert torch.equal(output.image, (image + 1.0) / 2.0)
    assert torch.equal(output.prompt, prompt) and torch.equal(output.reference_index, index)
    assert index.tolist()[1] == -1 and index.tolist()[0] in (0, 1)
    assert torch.equal(output.vre_valid, valid) and torch.equal(output.latent_lq, restored.latent_lq)
