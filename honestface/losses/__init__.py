"""Training losses of HonestFace (paper Sec. 3.1 and 3.3).

- :mod:`.perceptual`: DISTS, edge-aware DISTS (Eq. 9) and LPIPS on a shared VGG16;
- :mod:`.identity`: the identity loss over a recogniser ensemble (Eq. 8);
- :mod:`.objective`: all losses with their weights (:class:`LossConfig`) and the latent
  GAN terms (Eq. 5, discriminator in :mod:`honestface.models.discriminator`); MFA
  (Eq. 13) comes from :mod:`honestface.mfa`.
"""

from .identity import IdentityLoss
from .objective import LOSS_NAMES, LossConfig, TrainingObjective
from .perceptual import DISTS, LPIPS, EdgeAwareDISTS, build_dists, build_lpips, build_vgg16, sobel_edges

__all__ = [
    "DISTS", "LOSS_NAMES", "LPIPS", "EdgeAwareDISTS", "IdentityLoss", "LossConfig", "TrainingObjective",
    "build_dists", "build_lpips", "build_vgg16", "sobel_edges",
]
