"""Fixed test sets: the same LQ, ground truth and references for every run and every lab.

``honestface prepare-dataset SRC OUT --make-test`` writes one of the paper's test sets
(Sec. 4.1: "we evaluate our method on Reface-Test and the first 100 identities from the
CelebRef-HQ dataset"):

- ``celebref-hq``: SRC is CelebRef-HQ (one folder per person); its first ``test_identities``
  (100) identities in natural order of the folder names, as ``--split celebref-hq`` puts
  them in its test part;
- ``reface-test``: SRC is Reface-Test (Reface-HQ's 380 held-out identities, one folder per
  person); every identity.

The paper does not say which photo of a person is degraded. Here, per identity, the first
``gt_per_identity`` (1) photos in natural order of their names are ground truths; the
references of a ground truth are all other photos of the same person (reference-based
restoration: other high-quality photos of the person). Identities with a single photo
have no reference and are listed as skipped.

Layout of OUT (the layout ``evaluate --gt OUT/gt --refs OUT/refs`` reads as well)::

    gt/<name>.png            ground truth, resized to ``size`` (bicubic, antialiased)
    lq/<name>.png            its degradation
    refs/<name>/<photo>.png  the references, resized to ``size``
    manifest.json

with ``<name> = <identity>_<photo stem>``. Each LQ is degraded with VQFR's ranges
(:class:`~honestface.degradation.DegradationConfig`, grayscale off) and its own seed, the
first 8 bytes of SHA-256 of ``"<seed>:<identity>/<photo file name>"``: an image's LQ
depends neither on the order nor on the number of processes that write the set. PNGs are
written by Pillow without metadata (same input, same bytes).

``manifest.json`` holds the generator's parameters and versions, every face (its
identity, source file, degradation parameters, LQ, GT and reference files) and the
SHA-256 of every written file. :func:`verify_manifest` checks a folder against it;
``evaluate --test-set OUT`` does so before scoring and refuses a set whose files changed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..degradation import DegradationConfig, apply_degradation, sample_degradation_params
from ..errors import ConfigError, HonestFaceError
from ..image_io import load_image, resize_to, save_image
from ..progress import ProgressCallback, report

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "honestface-test-set/1"
TEST_SETS = ("celebref-hq", "reface-test")
#: The paper's CelebRef-HQ test part: the first 100 identities.
CELEBREF_TEST_IDENTITIES = 100


def testset_degradation() -> DegradationConfig:
    """VQFR's degradation ranges without grayscale (VQFR's test configs set no ``gray_prob``)."""
    return DegradationConfig(gray_probability=0.0)


def image_seed(seed: int, relative_name: str) -> int:
    """The degradation seed of one image: SHA-256 of ``"<seed>:<relative name>"``, 63 bits."""
    digest = hashlib.sha256(f"{int(seed)}:{relative_name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sha256_file(path: str | Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _versions() -> dict[str, str]:
    import PIL

    from .. import __version__

    return {"honestface": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "pillow": PIL.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION, "python": platform.python_version()}


def _select_identities(source: Path, test_set: str, test_identities: int) -> list[tuple[str, list[Path]]]:
    from ..cli.prepare_dataset import identity_sources, natural_key

    if test_set not in TEST_SETS:
        raise ConfigError(f"unknown test set '{test_set}'; choose one of: {', '.join(TEST_SETS)}")
    groups = identity_sources(source)
    if test_set == "celebref-hq":
        if len(groups) < test_identities:
            raise ConfigError(f"the celebref-hq test set takes the first {test_identities} identities, but "
                              f"{source} has only {len(groups)}; pass the whole CelebRef-HQ folder "
                              "(or a smaller --test-identities)")
        groups = groups[:test_identities]
    return [(identity, sorted(files, key=lambda p: natural_key(p.name))) for identity, files in groups]


def _read_face(path: Path, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1] on 8-bit levels (what the PNG will hold)."""
    image = resize_to(load_image(path).unsqueeze(0).float(), size)
    return (image.clamp(0, 1) * 255.0).round() / 255.0


def make_test_set(source: str | Path, output: str | Path, test_set: str = "celebref-hq", size: int = 512,
                  seed: int = 0, test_identities: int = CELEBREF_TEST_IDENTITIES, gt_per_identity: int = 1,
                  progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Write a test set (see the module doc) and return its manifest.

    Args:
        source: CelebRef-HQ or Reface-Test (identity folders of aligned faces).
        output: an empty or missing folder.
        test_set: ``"celebref-hq"`` or ``"reface-test"``.
        size: side of the written faces.
        seed: base of every image's degradation seed.
        test_identities: identities of the celebref-hq set.
        gt_per_identity: photos per identity that become ground truths.
    """
    from ..cli.prepare_dataset import dataset_root

    if size < 16:
        raise ConfigError(f"size must be at least 16, got {size}")
    if gt_per_identity < 1:
        raise ConfigError(f"gt_per_identity must be at least 1, got {gt_per_identity}")
    source, output = Path(source), Path(output)
    groups = _select_identities(source, test_set, test_identities)
    root = dataset_root(source)
    if output.exists() and any(output.iterdir()):
        raise HonestFaceError(f"{output} is not empty: write a test set into a new folder (or delete this one)")
    config = testset_degradation()
    faces: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    total = sum(min(gt_per_identity, len(photos)) for _, photos in groups)
    done = 0
    report(progress, 0, total)

    def write(image: torch.Tensor, relative: str) -> str:
        path = save_image(image, output / relative)
        files[relative] = sha256_file(path)
        return relative

    for identity, photos in groups:
        if len(photos) < 2:
            skipped.append({"identity": identity, "reason": "a single photo: no reference"})
            continue
        for gt_path in photos[:gt_per_identity]:
            name = f"{identity}_{gt_path.stem}"
            relative_source = gt_path.relative_to(root).as_posix()
            gt = _read_face(gt_path, size)
            params = sample_degradation_params(1, config, image_seed(seed, relative_source))
            lq = apply_degradation(gt, params, config)
            references = []
            for ref_path in photos:
                if ref_path != gt_path:
                    references.append(write(_read_face(ref_path, size), f"refs/{name}/{ref_path.stem}.png"))
            faces.append({"name": name, "identity": identity, "source": relative_source,
                          "gt": write(gt, f"gt/{name}.png"), "lq": write(lq, f"lq/{name}.png"),
                          "references": references, "degradation": params.item(0),
                          "seed": image_seed(seed, relative_source)})
            done += 1
            report(progress, done, total)
    names = [face["name"] for face in faces]
    if len(set(names)) != len(names):
        raise HonestFaceError("two faces got the same name (<identity>_<photo stem>); rename the duplicate photos")
    if not faces:
        raise HonestFaceError(f"no identity of {source} has two or more photos: a test face needs references")
    manifest = {
        "format": MANIFEST_FORMAT,
        "test_set": test_set,
        "source": {"folder": root.name, "identities": [identity for identity, _ in groups]},
        "parameters": {"size": size, "seed": seed, "test_identities": test_identities if test_set == "celebref-hq"
                       else None, "gt_per_identity": gt_per_identity, "degradation": config.to_dict(),
                       "resize": "bicubic, antialiased (torch), rounded to 8 bits",
                       "image_seed": "first 8 bytes of sha256('<seed>:<identity>/<file>'), little-endian, 63 bits"},
        "versions": _versions(),
        "faces": faces,
        "skipped": skipped,
        "files": dict(sorted(files.items())),
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


@dataclass
class ManifestCheck:
    """What differs between a test-set folder and its manifest."""

    modified: list[str]
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not self.modified and not self.missing

    def describe(self) -> str:
        parts = []
        if self.modified:
            parts.append(f"modified ({len(self.modified)}): {', '.join(self.modified[:10])}")
        if self.missing:
            parts.append(f"missing ({len(self.missing)}): {', '.join(self.missing[:10])}")
        return "; ".join(parts)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a test-set folder (a clear error when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise HonestFaceError(f"{folder} has no {MANIFEST}: write the test set with "
                              "'honestface prepare-dataset SRC OUT --make-test'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HonestFaceError(f"{path} is not valid JSON ({error}); re-create the test set") from error
    if manifest.get("format") != MANIFEST_FORMAT:
        raise HonestFaceError(f"{path} is not a HonestFace test-set manifest ({MANIFEST_FORMAT})")
    return manifest


def verify_manifest(folder: str | Path, manifest: dict[str, Any] | None = None) -> ManifestCheck:
    """Compare every file of the manifest with its SHA-256."""
    folder = Path(folder)
    manifest = manifest or read_manifest(folder)
    modified, missing = [], []
    for relative, digest in manifest["files"].items():
        path = folder / relative
        if not path.is_file():
            missing.append(relative)
        elif sha256_file(path) != digest:
            modified.append(relative)
    return ManifestCheck(modified, missing)


def manifest_digest(folder: str | Path) -> str:
    """SHA-256 of a test set's manifest: one value that names the whole set."""
    return sha256_file(Path(folder) / MANIFEST)


__all__ = [
    "CELEBREF_TEST_IDENTITIES",
    "MANIFEST",
    "ManifestCheck",
    "TEST_SETS",
    "image_seed",
    "make_test_set",
    "manifest_digest",
    "read_manifest",
    "sha256_file",
    "testset_degradation",
    "verify_manifest",
]
