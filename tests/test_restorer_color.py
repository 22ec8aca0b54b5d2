"""Colour correction (AdaIN and wavelet) of the restored face towards the LQ input."""

from __future__ import annotations

import pytest
import torch

from honestface.errors import ConfigError
from honestface.models.color import adain_color_fix, color_correct, wavelet_color_fix, wavelet_decompose


def test_adain_matches_channel_statistics():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=g)
    reference = torch.rand(2, 3, 16, 16, generator=g) * 0.3 + 0.5
    fixed = adain_color_fix(image, reference)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), reference.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std(dim=(2, 3), unbiased=False), reference.std(dim=(2, 3), unbiased=False),
                               atol=1e-3, rtol=1e-3)
    # Normalised structure is unchanged.
    z = lambda x: (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(z(fixed), z(image), atol=1e-3, rtol=1e-3)


def test_wavelet_keeps_detail_and_takes_colour():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 64, 64, generator=g)
    h, l = wavelet_decompose(image)
    torch.testing.assert_close(h + l, image)
    # A constant-colour reference: the result is the image's detail on that colour.
    reference = torch.full((1, 3, 64, 64), 0.25)
    fixed = wavelet_color_fix(image, reference)
    torch.testing.assert_close(fixed, h + 0.25)
    torch.testing.assert_close(fixed.mean(), torch.tensor(0.25) + h.mean(), atol=1e-6, rtol=0)
    # Correcting an image towards itself changes nothing.
    torch.testing.assert_close(wavelet_color_fix(image, image), image, atol=1e-6, rtol=0)


def test_dispatch():
    x = torch.rand(1, 3, 8, 8)
    assert color_correct(x, x, "none") is x
    with pytest.raises(ConfigError):
        color_correct(x, x, "histogram")
