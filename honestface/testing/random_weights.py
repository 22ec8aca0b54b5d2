"""Random values for networks built in tests, so that code paths which depend on them
(BatchNorm folding, normalisation) are actually exercised."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm_statistics(module: nn.Module, mean_std: float | None = 0.2,
                                   var_range: tuple[float, float] = (0.5, 2.0)) -> nn.Module:
    """Draw every BatchNorm ``running_var`` from ``var_range`` and ``running_mean`` from
    N(0, ``mean_std``) (left untouched when ``mean_std`` is None), with torch's global RNG."""
    for name, buffer in module.named_buffers():
        if name.endswith("running_var"):
            buffer.uniform_(*var_range)
        elif name.endswith("running_mean") and mean_std is not None:
            buffer.normal_(0.0, mean_std)
    return module
