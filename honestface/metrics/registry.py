"""The metrics HonestFace reports: names, table columns, directions, what they need."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric.

    ``kind`` says what computing it needs: ``"pixel"`` / ``"color"`` (the two images),
    ``"pyiqa"`` (pyiqa and its weights), ``"landmark"`` (a landmark backend on both
    images), ``"landmark98"`` (the AWing 98-point network of the vqfr protocol), ``"identity"`` (an identity backend), ``"reference-identity"`` (an identity
    backend and reference photos). ``set_level`` metrics (FID) need a whole test set.
    """

    key: str
    column: str
    lower_is_better: bool
    kind: str
    description: str
    set_level: bool = False
    #: Backends that compute the metric the way the paper does; with any other backend its
    #: name is added to the column ("Deg.(dlib)") and to the JSON/CSV keys ("deg(dlib)").
    #: Empty for backend-dependent metrics whose backend the paper does not name (landmarks):
    #: then the backend is always named. ``resnet_face18`` and ``awing`` are the networks of
    #: the vqfr protocol (:mod:`honestface.evaluation.protocols`), which every table names.
    paper_backends: tuple[str, ...] = ()

    @property
    def needs_backend(self) -> bool:
        return self.kind in ("landmark", "landmark98", "identity", "reference-identity")

    def qualifier(self, backend: str | None) -> str:
        """``"(dlib)"`` when ``backend`` must be named next to this metric, else ``""``."""
        if not self.needs_backend or not backend or backend in self.paper_backends:
            return ""
        return f"({backend})"

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"

    @property
    def header(self) -> str:
        return f"{self.column}{self.arrow}"

    @property
    def direction(self) -> str:
        return "lower is better" if self.lower_is_better else "higher is better"


METRICS: dict[str, MetricSpec] = {
    spec.key: spec
    for spec in (
        MetricSpec("psnr", "PSNR", False, "pixel", "peak signal-to-noise ratio in dB"),
        MetricSpec("ssim", "SSIM", False, "pixel", "structural similarity"),
        MetricSpec("lpips", "LPIPS", True, "pyiqa", "LPIPS (AlexNet, v0.1) perceptual distance"),
        MetricSpec("lpips_vgg", "LPIPS(vgg)", True, "pyiqa", "LPIPS (VGG16, v0.1) perceptual distance, VQFR's LPIPS"),
        MetricSpec("dists", "DISTS", True, "pyiqa", "DISTS structure and texture distance"),
        MetricSpec("clipiqa", "C-IQA", False, "pyiqa", "CLIP-IQA no-reference quality of the restored image"),
        MetricSpec("maniqa", "M-IQA", False, "pyiqa", "MANIQA no-reference quality of the restored image"),
        MetricSpec("musiq", "MUSIQ", False, "pyiqa", "MUSIQ (KonIQ) no-reference quality of the restored image"),
        MetricSpec("fid", "FID", True, "pyiqa", "Frechet inception distance, restored set vs ground-truth set", True),
        MetricSpec("msswd", "MS-SWD", True, "color", "multiscale sliced Wasserstein colour distance"),
        MetricSpec("deg", "Deg.", True, "identity", "angle in degrees between identity embeddings (the paper: ArcFace)",
                   paper_backends=("arcface-onnx", "arcface-torch", "resnet_face18")),
        MetricSpec("deg_ref", "Deg.-ref", True, "reference-identity", "mean identity angle to the reference photos",
                   paper_backends=("arcface-onnx", "arcface-torch", "resnet_face18")),
        MetricSpec("l2ld", "L2-LD", True, "landmark", "mean Euclidean distance of 68 landmarks (pixels)"),
        MetricSpec("ald_e", "ALD-e", True, "landmark", "A-LD on eyes and brows (17-26, 36-47)"),
        MetricSpec("ald_m", "ALD-m", True, "landmark", "A-LD on the outer lip contour (48-59)"),
        MetricSpec("ald", "A-LD", True, "landmark", "A-LD on all 68 landmarks"),
        MetricSpec("lmd", "LMD", True, "landmark98", "mean distance of AWing's 98 landmarks (pixels), VQFR's LMD",
                   paper_backends=("awing",)),
    )
}

#: The columns of the paper's Table 1 (reference-based comparison).
TABLE1_METRICS: tuple[str, ...] = ("lpips", "dists", "clipiqa", "maniqa", "musiq", "fid", "deg", "l2ld", "ald_e", "ald_m")
#: Everything ``evaluate`` reports by default (Table 1, Table 2's PSNR/SSIM, Table 3d's
#: MS-SWD, A-LD on all points); ``deg_ref`` is added when reference photos are given.
EVALUATE_METRICS: tuple[str, ...] = ("psnr", "ssim") + TABLE1_METRICS + ("msswd", "ald")
#: What ``score`` reports by default for single pairs (no set-level metrics).
SCORE_METRICS: tuple[str, ...] = tuple(k for k in EVALUATE_METRICS if not METRICS[k].set_level)


@dataclass
class MetricStatus:
    """Whether a metric could be computed in this run, and why not."""

    key: str
    available: bool
    reason: str = ""
    backend: str = ""  # the landmark / identity backend that computed it

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.key]

    @property
    def column(self) -> str:
        """Table column: the paper's name, plus the backend where it is not the paper's."""
        return self.spec.column + self.spec.qualifier(self.backend)

    @property
    def header(self) -> str:
        return f"{self.column}{self.spec.arrow}"

    @property
    def output_key(self) -> str:
        """Key in JSON rows and CSV columns: ``deg``, or ``deg(dlib)`` with another recogniser."""
        return self.key + self.spec.qualifier(self.backend)

    def to_dict(self) -> dict:
        spec = self.spec
        data = {
            "key": self.key,
            "output_key": self.output_key,
            "name": self.column,
            "direction": spec.direction,
            "available": self.available,
            "reason": self.reason,
        }
        if spec.needs_backend:
            data["backend"] = self.backend or None
        return data


def parse_metric_list(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``"psnr,ald_e,table1"`` -> metric keys (``table1`` and ``all`` expand); None -> default."""
    from ..errors import ConfigError

    if text is None or not text.strip():
        return default
    keys: list[str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        if item == "table1":
            expanded = TABLE1_METRICS
        elif item == "all":
            expanded = tuple(METRICS)
        else:
            by_column = {spec.column.lower(): key for key, spec in METRICS.items()}
            key = item if item in METRICS else by_column.get(item)
            if key is None:
                raise ConfigError(f"unknown metric '{item}'; choose from {', '.join(METRICS)}, table1, all")
            expanded = (key,)
        keys.extend(k for k in expanded if k not in keys)
    return tuple(keys)


__all__ = [
    "EVALUATE_METRICS",
    "METRICS",
    "MetricSpec",
    "MetricStatus",
    "SCORE_METRICS",
    "TABLE1_METRICS",
    "parse_metric_list",
]
