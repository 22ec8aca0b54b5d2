"""Scoring restored faces against their ground truth: one pair, folders, whole test sets.

:class:`Evaluator` computes the metrics of :mod:`honestface.metrics.registry` for pairs of
(restored, ground-truth) images and returns an :class:`EvaluationReport`:

- every requested metric is either computed or listed as unavailable *with the reason*
  (missing weights, missing backend, too few images), never dropped silently;
- faces where the landmark backend finds no face are counted and named; their landmark
  metrics are left empty and the means are taken over the remaining faces (the count of
  each mean is reported);
- files present in only one of the folders are listed;
- the backends behind backend-dependent metrics are named. The paper's Deg. is the
  ArcFace angle: by default (``"auto"``) ArcFace is used when its ONNX file is in the
  models folder, else dlib's descriptor, and then the column reads ``Deg.(dlib)`` and the
  JSON/CSV key ``deg(dlib)``. The paper names no landmark detector, so L2-LD and A-LD
  always carry theirs (``L2-LD(fan)``, ``ald_e(dlib)``); ``"auto"`` takes FAN when its
  file is there, else dlib.

Every report names its evaluation protocol (:mod:`.protocols`): ``honestface`` (the
above) or ``vqfr`` (VQFR's ``metric_paper`` scripts: Deg. from ``resnet_face18`` on grey
128 px with pairs under 1 degree left out and counted, LMD from AWing's 98 landmarks,
PSNR / SSIM after the mean / variance correction).

Images are (3, H, W) RGB in [0, 1] read with :func:`honestface.image_io.load_image`; a
restored image whose size differs from its ground truth is resized to it (noted).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..distributed import Processes
from ..errors import HonestFaceError, ImageError
from ..image_io import list_images, load_image, resize_to
from ..metrics.color import DEFAULT_SEED, ms_swd
from ..metrics.identity import identity_angle_degrees
from ..metrics.iqa import PyiqaMetric, check_pyiqa_metric
from ..metrics.landmark import ALD_EYES, ALD_MOUTH, affine_landmark_distance, l2_landmark_distance
from ..metrics.pixel import correct_mean_var, psnr, ssim
from ..metrics.registry import EVALUATE_METRICS, METRICS, MetricStatus
from ..progress import ProgressCallback, report
from .protocols import HONESTFACE, EvaluationProtocol, check_metrics, get_protocol


@dataclass
class ImagePair:
    """A restored face, its ground truth, and optional reference photos of the person."""

    name: str
    restored: Path
    ground_truth: Path
    references: list[Path] = field(default_factory=list)


def pair_folders(
    restored_dir: str | Path,
    gt_dir: str | Path,
    refs_dir: str | Path | None = None,
) -> tuple[list[ImagePair], dict[str, list[str]]]:
    """Pair images of two folders by file name without extension.

    References (optional): ``refs_dir/<stem>/`` (a folder of photos of that person) or a
    single file ``refs_dir/<stem>.<ext>``.

    Returns:
        (pairs sorted by name, {"restored only": [...], "ground truth only": [...]}).
    """

    def by_stem(folder: str | Path, what: str) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in list_images(folder):
            if path.stem in files:
                raise ImageError(f"{what} folder {folder} has two images named '{path.stem}': {files[path.stem].name}, {path.name}")
            files[path.stem] = path
        return files

    restored = by_stem(restored_dir, "restored")
    ground_truth = by_stem(gt_dir, "ground-truth")
    names = sorted(set(restored) & set(ground_truth))
    flat_refs: dict[str, list[Path]] = {}
    if refs_dir is not None:
        for path in list_images(refs_dir):
            flat_refs.setdefault(path.stem, []).append(path)
    pairs = []
    for name in names:
        references: list[Path] = []
        if refs_dir is not None:
            folder = Path(refs_dir) / name
            references = list_images(folder) if folder.is_dir() else flat_refs.get(name, [])
        pairs.append(ImagePair(name, restored[name], ground_truth[name], references))
    unpaired = {
        "restored only": sorted(restored[n].name for n in set(restored) - set(ground_truth)),
        "ground truth only": sorted(ground_truth[n].name for n in set(ground_truth) - set(restored)),
    }
    return pairs, unpaired


def pair_test_set(restored_dir: str | Path, test_set_dir: str | Path
                  ) -> tuple[list[ImagePair], dict[str, list[str]], dict[str, Any]]:
    """Pair restored faces with a test set written by ``prepare-dataset --make-test``.

    The manifest is checked first: a file whose SHA-256 differs, or a missing one, raises
    an error listing them. Restored faces are paired by name (``<name>.<ext>``).

    Returns:
        (pairs in manifest order, unpaired names, {"name", "manifest_sha256", "faces"}).
    """
    from .testset import manifest_digest, read_manifest, verify_manifest

    folder = Path(test_set_dir)
    manifest = read_manifest(folder)
    check = verify_manifest(folder, manifest)
    if not check.ok:
        raise HonestFaceError(f"test set {folder} differs from its manifest: {check.describe()}. Its numbers would "
                              "not be comparable: write it again with 'prepare-dataset --make-test' (same source "
                              "and seed) or restore the files")
    restored: dict[str, Path] = {}
    for path in list_images(restored_dir):
        if path.stem in restored:
            raise ImageError(f"restored folder {restored_dir} has two images named '{path.stem}'")
        restored[path.stem] = path
    faces = {face["name"]: face for face in manifest["faces"]}
    pairs = [ImagePair(name, restored[name], folder / face["gt"], [folder / r for r in face["references"]])
             for name, face in faces.items() if name in restored]
    unpaired = {"restored only": sorted(restored[n].name for n in set(restored) - set(faces)),
                "ground truth only": sorted(f"{n} (test set)" for n in set(faces) - set(restored))}
    info = {"name": manifest["test_set"], "manifest_sha256": manifest_digest(folder), "faces": len(faces)}
    return pairs, unpaired, info


def describe_error(error: BaseException) -> str:
    """The message of an error (``str()`` of OSError subclasses shows errno fields instead)."""
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def _format_value(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.3f}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _clean(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass
class EvaluationReport:
    """Scores of a set of image pairs, with everything that could not be scored."""

    metrics: list[str]
    statuses: dict[str, MetricStatus]
    rows: list[dict[str, Any]] = field(default_factory=list)
    set_values: dict[str, Optional[float]] = field(default_factory=dict)
    missing_landmarks: list[dict[str, Any]] = field(default_factory=list)
    missing_identity: list[dict[str, Any]] = field(default_factory=list)
    missing_references: list[str] = field(default_factory=list)
    unpaired: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    protocol: EvaluationProtocol = HONESTFACE

    @property
    def available_metrics(self) -> list[str]:
        return [k for k in self.metrics if self.statuses[k].available]

    @property
    def unavailable(self) -> dict[str, str]:
        return {k: self.statuses[k].reason for k in self.metrics if not self.statuses[k].available}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: mean over the images where it could be computed, and that count.

        Under a protocol with ``deg_min_degrees`` (vqfr: 1 degree), Deg. values below it are
        left out of the mean and their number is ``left_out``.
        """
        result: dict[str, dict[str, Any]] = {}
        for key in self.available_metrics:
            if METRICS[key].set_level:
                result[key] = {"mean": _clean(self.set_values.get(key)), "count": len(self.rows)}
                continue
            values = [row[key] for row in self.rows if row.get(key) is not None]
            left_out = None
            if key == "deg" and self.protocol.deg_min_degrees is not None:
                kept = [v for v in values if v >= self.protocol.deg_min_degrees]
                left_out, values = len(values) - len(kept), kept
            finite = [v for v in values if math.isfinite(v)]
            if values and len(finite) < len(values):
                mean = float("inf")  # e.g. PSNR of identical images
            else:
                mean = float(np.mean(finite)) if finite else None
            result[key] = {"mean": mean, "count": len(values)}
            if left_out is not None:
                result[key]["left_out"] = left_out
        return result

    def output_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A row with metric keys replaced by their output keys (``deg`` -> ``deg(dlib)``)."""
        return {self.statuses[k].output_key if k in self.statuses else k: v for k, v in row.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.to_dict(),
            "metrics": [
                {**self.statuses[k].to_dict(), **self.summary().get(k, {"mean": None, "count": 0})} for k in self.metrics
            ],
            "images": [self.output_row(row) for row in self.rows],
            "num_pairs": len(self.rows),
            "missing_landmarks": self.missing_landmarks,
            "missing_identity": self.missing_identity,
            "missing_references": self.missing_references,
            "unpaired": self.unpaired,
            "notes": self.notes,
            "settings": self.settings,
        }

    def write_json(self, path: str | Path) -> Path:
        """The whole report as JSON (infinite values as the string "inf", NaN as null)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n")
        return path

    def write_csv(self, path: str | Path) -> Path:
        """One row per image, then a ``mean`` row; columns are metric keys, the last one the protocol."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = self.available_metrics
        summary = self.summary()
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            protocol = self.protocol.name
            writer.writerow(["name"] + [self.statuses[k].output_key for k in keys] + ["protocol"])
            for row in self.rows:
                writer.writerow([row["name"]] + ["" if row.get(k) is None else repr(row[k]) for k in keys] + [protocol])
            writer.writerow(["mean"] + ["" if summary[k]["mean"] is None else repr(summary[k]["mean"]) for k in keys]
                            + [protocol])
        return path

    def format_table(self, per_image: bool = True) -> str:
        """The scores as a text table (paper column names), then what is missing and why."""
        keys = self.available_metrics
        summary = self.summary()
        header = ["image"] + [self.statuses[k].header for k in keys]
        body: list[list[str]] = []
        if per_image:
            for row in self.rows:
                body.append([row["name"]] + ["" if METRICS[k].set_level else _format_value(row.get(k)) for k in keys])
        if len(self.rows) != 1 or not per_image or any(METRICS[k].set_level for k in keys):
            body.append([f"mean ({len(self.rows)})"] + [_format_value(summary[k]["mean"]) for k in keys])
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                 for r in [header] + body]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(0, f"Protocol: {self.protocol.name} ({self.protocol.description})")
        test_set = self.settings.get("test_set")
        if test_set:
            lines.insert(1, f"Test set: {test_set['name']} ({test_set['faces']} faces, manifest sha256 "
                            f"{test_set['manifest_sha256'][:16]}..., files verified)")
        partial = [k for k in keys if not METRICS[k].set_level
                   and summary[k]["count"] + summary[k].get("left_out", 0) < len(self.rows)]
        left_out = {k: summary[k]["left_out"] for k in keys if summary[k].get("left_out")}
        for key, count in left_out.items():
            lines.append(f"{self.statuses[key].column}: {count} pair(s) under {self.protocol.deg_min_degrees:g} degree "
                         f"left out of the mean (almost identical to the ground truth)")
        if partial:
            lines.append("means over fewer images: " + ", ".join(f"{self.statuses[k].column} ({summary[k]['count']})"
                                                                for k in partial))
        if self.unavailable:
            lines.append("")
            lines.append("Unavailable metrics:")
            lines.extend(f"  {METRICS[k].column}: {reason}" for k, reason in self.unavailable.items())
        if self.missing_landmarks:
            lines.append("")
            lines.append(f"Faces without landmarks ({len(self.missing_landmarks)}; landmark metrics left out for them):")
            lines.extend(f"  {m['name']}: no face found in {' and '.join(m['images'])}" for m in self.missing_landmarks)
        if self.missing_identity:
            lines.append("")
            lines.append(f"Faces without identity embedding ({len(self.missing_identity)}):")
            lines.extend(f"  {m['name']}: {' and '.join(m['images'])}" for m in self.missing_identity)
        if self.missing_references:
            lines.append("")
            lines.append(f"Pairs without reference photos ({len(self.missing_references)}): {', '.join(self.missing_references)}")
        for label, names in self.unpaired.items():
            if names:
                lines.append(f"Unpaired ({label}, {len(names)}): {', '.join(names)}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class PairScore:
    """The scores of one pair and what was missing for it (what a process hands back)."""

    row: dict[str, Any]
    resized: bool = False
    missing_references: bool = False
    missing_landmarks: list[dict[str, Any]] = field(default_factory=list)
    missing_identity: list[dict[str, Any]] = field(default_factory=list)


class Evaluator:
    """Computes the requested metrics; backends and networks are built once.

    Args:
        metrics: metric keys (see :data:`honestface.metrics.registry.METRICS`).
        landmark_backend: a :class:`LandmarkBackend`, a name for
            :func:`honestface.face.load_landmark_backend` ("dlib", "fan"), or "auto": FAN
            when its file is in the models folder, else dlib.
        identity_backend: an :class:`IdentityBackend`, a name for
            :func:`honestface.face.load_identity_backend` ("dlib", "arcface-onnx", ...), or
            "auto": ArcFace (ONNX, the paper's Deg.) when its file is in the models folder,
            else dlib. Which one ran is named in the report (columns, keys, notes).
        models_dir: models root (``--models-dir``).
        device: torch device for the networks.
        y_channel: PSNR/SSIM on the luma channel instead of RGB.
        msswd_seed: seed of MS-SWD's random projections.
        protocol: ``"honestface"`` or ``"vqfr"`` (:mod:`.protocols`). Under ``vqfr`` Deg. uses
            ``resnet_face18`` and LMD the AWing network (both from
            ``<models>/metric_weights/``), whatever ``identity_backend`` says.
    """

    def __init__(
        self,
        metrics: Sequence[str] = EVALUATE_METRICS,
        landmark_backend: Any = "auto",
        identity_backend: Any = "auto",
        models_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        y_channel: bool = False,
        msswd_seed: int = DEFAULT_SEED,
        protocol: str | EvaluationProtocol = "honestface",
    ) -> None:
        unknown = [k for k in metrics if k not in METRICS]
        if unknown:
            raise HonestFaceError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        self.protocol = get_protocol(protocol)
        check_metrics(self.protocol, metrics)
        self.metrics = list(dict.fromkeys(metrics))
        self.models_dir = models_dir
        self.device = torch.device(device)
        self.y_channel = y_channel
        self.msswd_seed = msswd_seed
        self.statuses: dict[str, MetricStatus] = {}
        self._pyiqa: dict[str, PyiqaMetric] = {}
        self.landmark_backend = None
        self.identity_backend = None
        self.landmark98_backend = None
        self.notes: list[str] = []

        kinds = {METRICS[k].kind for k in self.metrics}
        landmark_error = identity_error = ""
        if "landmark" in kinds:
            self.landmark_backend, landmark_error = self._backend(landmark_backend, "landmark")
        if kinds & {"identity", "reference-identity"}:
            if self.protocol.name == "vqfr":
                self.identity_backend, identity_error = self._metric_network("resnet_face18")
                if identity_backend != "auto":
                    self.notes.append(f"the vqfr protocol computes Deg. with resnet_face18; identity backend "
                                      f"'{getattr(identity_backend, 'name', identity_backend)}' was not used")
            else:
                self.identity_backend, identity_error = self._backend(identity_backend, "identity")
        landmark98_error = ""
        if "landmark98" in kinds:
            self.landmark98_backend, landmark98_error = self._metric_network("awing")
        landmark_name = getattr(self.landmark_backend, "name", "")
        identity_name = getattr(self.identity_backend, "name", "")
        for key in self.metrics:
            kind = METRICS[key].kind
            if kind in ("pixel", "color"):
                self.statuses[key] = MetricStatus(key, True)
            elif kind == "landmark":
                self.statuses[key] = MetricStatus(key, self.landmark_backend is not None, landmark_error, landmark_name)
            elif kind == "landmark98":
                self.statuses[key] = MetricStatus(key, self.landmark98_backend is not None, landmark98_error, "awing")
            elif kind in ("identity", "reference-identity"):
                self.statuses[key] = MetricStatus(key, self.identity_backend is not None, identity_error, identity_name)
            elif kind == "pyiqa":
                self.statuses[key] = self._load_pyiqa(key)
        self.settings = {
            "landmark_backend": getattr(self.landmark_backend, "name", None),
            "identity_backend": getattr(self.identity_backend, "name", None),
            "y_channel": y_channel,
            "msswd": {"seed": msswd_seed, "num_scales": 5, "num_projections": 128, "patch_size": 11},
            "device": str(self.device),
            "protocol": self.protocol.name,
        }
        if self.landmark98_backend is not None:
            self.settings["lmd_backend"] = "awing"

    def _metric_network(self, name: str):
        """(backend, "") or (None, why) for the vqfr protocol's networks."""
        from ..face.awing import load_awing
        from ..face.resnet_face import load_resnet_face18

        loader = load_awing if name == "awing" else load_resnet_face18
        try:
            return loader(models_dir=self.models_dir, device=self.device), ""
        except (HonestFaceError, OSError, RuntimeError) as error:
            return None, f"{name} could not be loaded: {describe_error(error)}"

    def _backend(self, backend: Any, role: str):
        if not isinstance(backend, str):
            return backend, ""
        from .. import face

        factory = face.load_landmark_backend if role == "landmark" else face.load_identity_backend
        if backend == "auto":
            return self._auto_backend(role, factory)
        try:
            return factory(backend, models_dir=self.models_dir, device=str(self.device)), ""
        except (HonestFaceError, ImportError, OSError, RuntimeError) as error:
            return None, f"{role} backend '{backend}' could not be loaded: {describe_error(error)}"

    def _auto_backend(self, role: str, factory):
        """The paper's backend when its file is there (ArcFace; FAN for landmarks), else dlib, with a note."""
        from ..errors import MissingModelFileError

        preferred = "fan" if role == "landmark" else "arcface-onnx"
        what = "L2-LD / A-LD" if role == "landmark" else "Deg."
        try:
            return factory(preferred, models_dir=self.models_dir, device=str(self.device)), ""
        except (MissingModelFileError, ImportError) as error:
            reason = describe_error(error).split(". ")[0]
            self.notes.append(f"{what}: {role} backend '{preferred}' not available ({reason}); dlib was used "
                              f"instead, and the columns say so")
        except (HonestFaceError, OSError, RuntimeError) as error:
            self.notes.append(f"{what}: {role} backend '{preferred}' could not be loaded "
                              f"({describe_error(error)}); dlib was used instead, and the columns say so")
        return self._backend("dlib", role)

    def _load_pyiqa(self, key: str) -> MetricStatus:
        availability = check_pyiqa_metric(key, self.models_dir)
        if not availability.available:
            return MetricStatus(key, False, availability.reason)
        try:
            self._pyiqa[key] = PyiqaMetric(key, self.models_dir, self.device)
        except Exception as error:  # a broken weight file must not abort the other metrics
            return MetricStatus(key, False, f"pyiqa could not build it: {type(error).__name__}: {describe_error(error)}")
        return MetricStatus(key, True)

    def _available(self, key: str) -> bool:
        status = self.statuses.get(key)
        return status is not None and status.available

    @torch.no_grad()
    def score_images(
        self,
        restored: torch.Tensor,
        ground_truth: torch.Tensor,
        references: Optional[Sequence[torch.Tensor]] = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-image metrics of a batch.

        Args:
            restored, ground_truth: (B, 3, H, W) in [0, 1], same shape.
            references: per image a (R_i, 3, h, w) tensor of reference photos (or None).

        Returns:
            ({metric key: (B,) float64, NaN where not computable},
             {"restored_landmarks", "gt_landmarks", "restored_identity", "gt_identity": (B,) bool found}).
        """
        if restored.shape != ground_truth.shape:
            raise ImageError(f"restored {tuple(restored.shape)} and ground truth {tuple(ground_truth.shape)} differ in shape")
        batch = restored.shape[0]
        values: dict[str, np.ndarray] = {}
        found: dict[str, np.ndarray] = {}
        # vqfr: PSNR / SSIM of the restored image after VQFR's mean / variance correction
        fidelity_input = correct_mean_var(restored, ground_truth) if self.protocol.correct_mean_var else restored
        if self._available("psnr"):
            values["psnr"] = psnr(fidelity_input, ground_truth, y_channel=self.y_channel).numpy()
        if self._available("ssim"):
            values["ssim"] = ssim(fidelity_input, ground_truth, y_channel=self.y_channel).numpy()
        if self._available("msswd"):
            values["msswd"] = ms_swd(restored, ground_truth, seed=self.msswd_seed).double().cpu().numpy()
        for key, metric in self._pyiqa.items():
            if not metric.spec.set_level:
                values[key] = metric(restored, ground_truth if metric.spec.full_reference else None).numpy()

        landmark_keys = [k for k in self.metrics if METRICS[k].kind == "landmark" and self._available(k)]
        if landmark_keys:
            restored_points = self.landmark_backend.landmarks(restored).double().cpu().numpy()
            gt_points = self.landmark_backend.landmarks(ground_truth).double().cpu().numpy()
            found["restored_landmarks"] = ~np.isnan(restored_points).any(axis=(1, 2))
            found["gt_landmarks"] = ~np.isnan(gt_points).any(axis=(1, 2))
            subsets = {"ald_e": ALD_EYES, "ald_m": ALD_MOUTH, "ald": None}
            for key in landmark_keys:
                if key == "l2ld":
                    values[key] = np.asarray(l2_landmark_distance(restored_points, gt_points), dtype=np.float64)
                else:
                    values[key] = np.asarray(
                        affine_landmark_distance(restored_points, gt_points, subset=subsets[key]), dtype=np.float64
                    )

        if self._available("lmd"):
            restored_points = self.landmark98_backend.landmarks(restored).double().numpy()
            gt_points = self.landmark98_backend.landmarks(ground_truth).double().numpy()
            values["lmd"] = np.asarray(l2_landmark_distance(restored_points, gt_points), dtype=np.float64)

        if self._available("deg") or self._available("deg_ref"):
            restored_embedding = self.identity_backend.embed(restored).double().cpu()
            found["restored_identity"] = ~torch.isnan(restored_embedding).any(dim=1).numpy()
            if self._available("deg"):
                gt_embedding = self.identity_backend.embed(ground_truth).double().cpu()
                found["gt_identity"] = ~torch.isnan(gt_embedding).any(dim=1).numpy()
                values["deg"] = identity_angle_degrees(restored_embedding, gt_embedding).numpy()
            if self._available("deg_ref"):
                angles = np.full(batch, np.nan)
                for index, refs in enumerate(references or [None] * batch):
                    if refs is None or len(refs) == 0:
                        continue
                    ref_embedding = self.identity_backend.embed(refs).double().cpu()
                    per_ref = identity_angle_degrees(restored_embedding[index : index + 1], ref_embedding).numpy()
                    per_ref = per_ref[~np.isnan(per_ref)]
                    if per_ref.size:
                        angles[index] = float(per_ref.mean())
                values["deg_ref"] = angles
        return values, found

    def evaluate_pairs(
        self,
        pairs: Sequence[ImagePair],
        unpaired: Optional[dict[str, list[str]]] = None,
        progress: Optional[ProgressCallback] = None,
        processes: Optional[Processes] = None,
    ) -> EvaluationReport:
        """Score every pair (one at a time, so sizes may differ between pairs).

        With ``processes`` (a multi-process launch) each process scores its share of the
        pairs and the rows are merged back in the order of ``pairs``, so the report is the
        one a single process writes; set-level metrics (FID) are computed by the main
        process over all pairs (the other processes' reports leave them out).
        """
        processes = processes or Processes()
        statuses = dict(self.statuses)
        result = EvaluationReport(self.metrics, statuses, unpaired=dict(unpaired or {}), settings=dict(self.settings),
                                  notes=list(self.notes), protocol=self.protocol)
        owned = [(index, pair) for index, pair in enumerate(pairs) if processes.owns(index)]
        report(progress, 0, len(owned))
        scored = []
        for done, (index, pair) in enumerate(owned, start=1):
            scored.append((index, self._score_pair(pair)))
            report(progress, done, len(owned))
        merged = sorted((entry for share in processes.gather(scored) for entry in share), key=lambda entry: entry[0])
        resized = []
        for _, pair_score in merged:
            result.rows.append(pair_score.row)
            result.missing_landmarks.extend(pair_score.missing_landmarks)
            result.missing_identity.extend(pair_score.missing_identity)
            if pair_score.missing_references:
                result.missing_references.append(pair_score.row["name"])
            if pair_score.resized:
                resized.append(pair_score.row["name"])

        for key, metric in self._pyiqa.items():
            if metric.spec.set_level and processes.is_main:
                if len(pairs) < 2:
                    statuses[key] = MetricStatus(key, False, "needs a set of at least 2 image pairs (use evaluate on folders)")
                    continue
                try:
                    result.set_values[key] = metric.folders([p.restored for p in pairs], [p.ground_truth for p in pairs])
                except Exception as error:
                    statuses[key] = MetricStatus(key, False, f"failed: {type(error).__name__}: {describe_error(error)}")
        if resized:
            result.notes.append(
                f"{len(resized)} restored image(s) had a different size from the ground truth and were resized to it: "
                + ", ".join(resized[:10]) + (" ..." if len(resized) > 10 else "")
            )
        return result

    def _score_pair(self, pair: ImagePair) -> "PairScore":
        restored = load_image(pair.restored).unsqueeze(0)
        ground_truth = load_image(pair.ground_truth).unsqueeze(0)
        resized = restored.shape != ground_truth.shape
        if resized:
            restored = resize_to(restored, tuple(ground_truth.shape[-2:]))
        references = None
        missing_references = False
        if self._available("deg_ref"):
            if pair.references:
                # Reference photos may have any size: bring them to the restored face's size.
                size = tuple(restored.shape[-2:])
                references = [torch.cat([resize_to(load_image(p).unsqueeze(0), size) for p in pair.references])]
            else:
                missing_references = True
        values, found = self.score_images(restored, ground_truth, references)
        row: dict[str, Any] = {"name": pair.name, "restored": str(pair.restored), "ground_truth": str(pair.ground_truth)}
        for key in self.metrics:
            if key in values:
                row[key] = _clean(values[key][0])
        score = PairScore(row, resized=resized, missing_references=missing_references)
        for label, which in (("landmarks", score.missing_landmarks), ("identity", score.missing_identity)):
            images = [name for name, flag in (("restored", f"restored_{label}"), ("ground truth", f"gt_{label}"))
                      if flag in found and not bool(found[flag][0])]
            if images:
                which.append({"name": pair.name, "images": images})
        return score

    def evaluate_folders(
        self,
        restored_dir: str | Path,
        gt_dir: str | Path,
        refs_dir: str | Path | None = None,
        progress: Optional[ProgressCallback] = None,
    ) -> EvaluationReport:
        """Pair the folders by file name and score every pair."""
        pairs, unpaired = pair_folders(restored_dir, gt_dir, refs_dir)
        if not pairs:
            raise ImageError(f"no images with the same name in {restored_dir} and {gt_dir}")
        return self.evaluate_pairs(pairs, unpaired, progress)


__all__ = ["EvaluationReport", "Evaluator", "ImagePair", "PairScore", "pair_folders", "pair_test_set"]
