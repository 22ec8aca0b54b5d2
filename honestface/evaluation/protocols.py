"""Evaluation protocols: which networks and conventions turn a test set into numbers.

Absolute identity and landmark numbers depend on the recogniser, the landmark network and
their input; two tables are comparable only under the same protocol, so every report
names its protocol (table header, JSON ``protocol``, CSV ``protocol`` column).

- ``honestface`` (default): the paper's own columns. Deg. is the angle of ArcFace
  ``w600k_r50`` embeddings on the 112 px recognition crop (dlib's descriptor when ArcFace
  is missing, then the column says so), L2-LD / A-LD on 68 landmarks, PSNR / SSIM on the
  images as they are, LPIPS with AlexNet.
- ``vqfr``: the field's common scripts, VQFR's ``metric_paper/`` folder (TencentARC/VQFR,
  followed by CodeFormer, DifFace and others):

  - Deg. (``calculate_cos_dist.py``): ArcFace ``resnet_face18`` (``resnet18_110.pth``) on
    the grey 128x128 image, angle in degrees; pairs under 1 degree are left out of the
    mean and counted ("almost identical to original");
  - LMD (``calculate_landmark_distance.py``): mean distance, in pixels of the image, of the
    98 landmarks the AWing network (``alignment_WFLW_4HG.pth``) finds on each whole image;
  - PSNR / SSIM (``calculate_psnr_ssim.py``): after the mean / variance correction of the
    restored image (:func:`honestface.metrics.pixel.correct_mean_var`), on RGB, no border
    crop (SSIM: 11x11 Gaussian window, sigma 1.5, valid region, as here);
  - LPIPS (``calculate_lpips.py``): the VGG variant (v0.1), ``lpips_vgg``.

  The two networks load from ``<models>/metric_weights/`` (the files those projects
  distribute). Not reproduced: VQFR's FID compares the restored set with precomputed FFHQ
  statistics (``inception_FFHQ_512.pth``); the paper computes FID between the restored
  and ground-truth sets, and so does FID here, under both protocols.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..metrics.registry import EVALUATE_METRICS, METRICS


@dataclass(frozen=True)
class EvaluationProtocol:
    """How one protocol computes its metrics.

    Attributes:
        name: ``--protocol`` value.
        description: one line, printed above every table.
        default_metrics: what ``evaluate`` reports when ``--metrics`` is not given.
        excluded_metrics: metric keys that have no meaning under this protocol.
        deg_min_degrees: Deg. values below it are left out of the mean and counted.
        correct_mean_var: PSNR / SSIM after VQFR's mean / variance correction.
    """

    name: str
    description: str
    default_metrics: tuple[str, ...]
    excluded_metrics: tuple[str, ...] = ()
    deg_min_degrees: float | None = None
    correct_mean_var: bool = False

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "deg_min_degrees": self.deg_min_degrees,
                "correct_mean_var": self.correct_mean_var}


HONESTFACE = EvaluationProtocol(
    "honestface",
    "the paper's columns: Deg. = ArcFace w600k_r50 angle on the 112 px crop, 68-point L2-LD / A-LD",
    EVALUATE_METRICS,
    excluded_metrics=("lmd",),
)

VQFR = EvaluationProtocol(
    "vqfr",
    "VQFR's metric_paper scripts: Deg. = ArcFace resnet_face18 on grey 128 px (pairs under 1 degree left out), "
    "LMD = AWing 98 points, PSNR/SSIM after mean/variance correction, LPIPS(vgg)",
    ("psnr", "ssim", "lpips_vgg", "fid", "deg", "lmd"),
    excluded_metrics=("l2ld", "ald_e", "ald_m", "ald"),
    deg_min_degrees=1.0,
    correct_mean_var=True,
)

PROTOCOLS: dict[str, EvaluationProtocol] = {p.name: p for p in (HONESTFACE, VQFR)}


def get_protocol(name: str | EvaluationProtocol) -> EvaluationProtocol:
    """The protocol called ``name`` (a clear error naming the known ones)."""
    if isinstance(name, EvaluationProtocol):
        return name
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol '{name}'; choose one of: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_metrics(protocol: EvaluationProtocol, metrics: tuple[str, ...] | list[str]) -> None:
    """Refuse metrics that the protocol does not define, saying which protocol has them."""
    excluded = [k for k in metrics if k in protocol.excluded_metrics]
    if excluded:
        other = [p.name for p in PROTOCOLS.values() if p is not protocol and not set(excluded) & set(p.excluded_metrics)]
        columns = ", ".join(METRICS[k].column for k in excluded)
        raise ConfigError(f"{columns} are not part of the {protocol.name} protocol; use --protocol "
                          f"{' or '.join(other) or 'honestface'} for them, or leave them out of --metrics")


__all__ = ["EvaluationProtocol", "HONESTFACE", "PROTOCOLS", "VQFR", "check_metrics", "get_protocol"]
