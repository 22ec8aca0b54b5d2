"""``honestface demo``: the whole method on a few faces, as an HTML page and a contact sheet.

For each demo face: the ground truth is degraded with the project's degradation at a
moderate fixed strength, the best reference is chosen by A-LD (Eq. 6), the MFA mask is
computed from the LQ input (Eq. 10-11), and, when restoration weights are configured
(``--sd`` + ``--weights``), the face is restored without and with references. The report
lists PSNR/SSIM, the honesty metrics (ALD-e, ALD-m, L2-LD) and the identity distance
(dlib descriptor) of every column against the ground truth.

Data: ``--data`` (a folder with ``celeba/<identity>/*.jpg``, like the project's test data)
or ``HONESTFACE_DEMO_DATA``; without one, scikit-image's ``astronaut`` photo with
augmented copies as references, which the report states.
"""

from __future__ import annotations

import argparse
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

DEMO_DATA_ENV = "HONESTFACE_DEMO_DATA"
#: Moderate fixed degradation of the demo (blur sigma, down-sampling, noise, JPEG).
DEMO_DEGRADATION = dict(blur_sigma=2.5, downsample_scale=4.0, noise_sigma=5.0, jpeg_quality=60)
TILE = 256


@dataclass
class DemoFace:
    """One demo case: ground truth, references and where they came from."""

    name: str
    gt: torch.Tensor  # (3, S, S) in [0, 1], aligned
    references: torch.Tensor  # (N, 3, S, S) in [0, 1], aligned
    source: str
    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="degrade, analyse and (with weights) restore a few faces; writes an HTML report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="outputs/demo", help="report folder (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help=f"data folder with celeba/<identity>/ images (default: ${DEMO_DATA_ENV}, "
                             "or ../shared/data beside the repository when present)")
    parser.add_argument("--identities", type=int, default=3, help="how many identities (default: %(default)s)")
    parser.add_argument("--references", type=int, default=3, help="references per face (default: %(default)s)")
    parser.add_argument("--sd", default=None, help="SD 2.1-base: diffusers folder or checkpoint file")
    parser.add_argument("--weights", default=None, help="HonestFace .safetensors or OSDFace release folder")
    parser.add_argument("--osdface", default=None,
                        help="OSDFace release folder for the VRE encoder of a HonestFace checkpoint "
                             "(default: <models>/honestface/OSDFace)")
    parser.add_argument("--models-dir", default=None, help="models folder (ComfyUI layout)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def default_data_dir() -> Path | None:
    """``HONESTFACE_DEMO_DATA``, else ``../shared/data`` beside a source checkout."""
    value = os.environ.get(DEMO_DATA_ENV)
    if value:
        return Path(value).expanduser()
    beside = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside if beside.is_dir() else None


def _celeba_faces(data: Path, identities: int, references: int) -> list[DemoFace]:
    from ..image_io import list_images, load_image, resize_to

    root = data / "celeba"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    faces = []
    # The last identities: the training split keeps the first ones for training.
    for folder in reversed(folders):
        files = list_images(folder)
        if len(files) < references + 1:
            continue
        images = [resize_to(load_image(f).unsqueeze(0), TILE)[0] for f in files[: references + 1]]
        faces.append(DemoFace(folder.name, images[0], torch.stack(images[1:]),
                              f"{root.name}/{folder.name}/{files[0].name}"))
        if len(faces) == identities:
            break
    return faces


def _astronaut_face(references: int, seed: int) -> DemoFace:
    """scikit-image's astronaut photo, aligned, with augmented copies as references."""
    import numpy as np
    from skimage import data as skdata

    from ..errors import NoFaceError
    from ..face import align_face, load_face_detector

    photo = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1).float() / 255.0
    faces = load_face_detector("dlib").detect(photo)
    if not faces or faces[0].landmarks is None:
        raise NoFaceError("no face found in scikit-image's astronaut photo")
    landmarks = torch.as_tensor(faces[0].landmarks, dtype=torch.float32)
    gt, _ = align_face(photo, landmarks, TILE)
    generator = torch.Generator().manual_seed(seed)
    refs = []
    for _ in range(references):
        # A slightly different crop of the same photo: jittered landmarks, flip, exposure.
        jitter = landmarks + torch.randn(landmarks.shape, generator=generator) * 2.0
        crop, _ = align_face(photo, jitter, TILE)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        gain = 0.85 + 0.3 * torch.rand((), generator=generator)
        refs.append((crop * gain).clamp(0, 1))
    return DemoFace("astronaut", gt, torch.stack(refs), "scikit-image astronaut (references: augmented copies)")


def _load_pipeline(args: argparse.Namespace):
    """The restoration pipeline from ``--sd``/``--weights``, or None when not configured."""
    if not (args.sd and args.weights):
        return None
    from .restore import build_pipeline

    return build_pipeline(args.sd, args.weights, osdface=args.osdface, models_dir=args.models_dir,
                          device=args.device)


def _landmark_metrics(landmarks: torch.Tensor, gt_landmarks: torch.Tensor) -> dict[str, float]:
    from ..errors import HonestFaceError
    from ..metrics import ald_eyes, ald_mouth, l2_landmark_distance

    if not (torch.isfinite(landmarks).all() and torch.isfinite(gt_landmarks).all()):
        return {"ALD-e": float("nan"), "ALD-m": float("nan"), "L2-LD": float("nan")}
    a, b = landmarks.double(), gt_landmarks.double()
    try:
        return {"ALD-e": float(ald_eyes(a, b)), "ALD-m": float(ald_mouth(a, b)),
                "L2-LD": float(l2_landmark_distance(a, b))}
    except HonestFaceError:
        return {"ALD-e": float("nan"), "ALD-m": float("nan"), "L2-LD": float("nan")}


def analyse(face: DemoFace, lq: torch.Tensor, landmark_backend, identity_backend, pipeline) -> None:
    """Fill ``face.columns`` and ``face.metrics`` for one demo case."""
    from ..image_io import resize_to
    from ..metrics import psnr, ssim
    from ..mfa import mask_to_image, mfa_mask_from_images
    from ..models.ide import select_reference
    from ..visualize import GREEN, RED, draw_points

    gt = face.gt.unsqueeze(0)
    lq = lq.unsqueeze(0)
    everything = torch.cat([gt, lq, face.references])
    landmarks = landmark_backend.landmarks(everything)  # (2 + N, 68, 2)
    gt_lm, lq_lm, ref_lm = landmarks[0], landmarks[1], landmarks[2:]
    mask = torch.ones(1, face.references.shape[0], dtype=torch.bool)
    chosen = int(select_reference(lq_lm.unsqueeze(0), ref_lm.unsqueeze(0), mask)[0])

    face.columns["LQ (input)"] = lq[0]
    if pipeline is not None:
        size = pipeline.image_size
        face.columns["restored, no refs"] = pipeline.restore(resize_to(lq, size))[0]
        face.columns["restored, refs"] = pipeline.restore(
            resize_to(lq, size), [resize_to(face.references, size)])[0]
    else:
        face.notes.append("restoration skipped: no weights configured (--sd and --weights)")
    face.columns["ground truth"] = face.gt
    face.columns[f"chosen reference (#{chosen + 1} of {face.references.shape[0]})"] = face.references[chosen]
    mfa = mfa_mask_from_images(lq, landmark_backend)
    face.columns["MFA mask (from LQ)"] = mask_to_image(mfa)[0]
    overlay = draw_points(gt, gt_lm.unsqueeze(0), GREEN)
    face.columns["landmarks: GT green, LQ red"] = draw_points(overlay, lq_lm.unsqueeze(0), RED)[0]

    gt_embedding = identity_backend.embed(gt)
    for name in [n for n in face.columns if n.startswith(("LQ", "restored"))]:
        image = resize_to(face.columns[name].unsqueeze(0), gt.shape[-1])
        row = {"PSNR": float(psnr(image, gt)), "SSIM": float(ssim(image, gt))}
        row.update(_landmark_metrics(landmark_backend.landmarks(image)[0], gt_lm))
        row["ID dist"] = float((identity_backend.embed(image) - gt_embedding).norm())
        face.metrics[name] = row


def _write_report(faces: list[DemoFace], output: Path, header: list[str]) -> tuple[Path, Path]:
    from ..image_io import save_image
    from ..visualize import contact_sheet

    output.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet([list(face.columns.values()) for face in faces], TILE)
    sheet_path = save_image(sheet, output / "contact_sheet.png")
    parts = ["<!doctype html><meta charset='utf-8'><title>HonestFace demo</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;text-align:right}"
             "th:first-child,td:first-child{text-align:left}img{width:192px}</style>",
             "<h1>HonestFace demo</h1>"] + [f"<p>{html.escape(line)}</p>" for line in header]
    for face in faces:
        parts.append(f"<h2>{html.escape(face.name)}</h2><p>source: {html.escape(face.source)}</p>")
        parts.append("<table><tr>")
        for index, (name, image) in enumerate(face.columns.items()):
            file = f"{face.name}_{index}.png"
            save_image(image, output / file)
            parts.append(f"<td><figure><img src='{file}'><figcaption>{html.escape(name)}</figcaption></figure></td>")
        parts.append("</tr></table>")
        parts.extend(f"<p><em>{html.escape(note)}</em></p>" for note in face.notes)
        columns = list(next(iter(face.metrics.values())).keys()) if face.metrics else []
        parts.append("<table><tr><th>vs ground truth</th>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>")
        for name, row in face.metrics.items():
            parts.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{row[c]:.4g}</td>" for c in columns) + "</tr>")
        parts.append("</table>")
    parts.append("<p>PSNR/SSIM: higher is better. ALD-e/ALD-m (affine landmark distance, eyes/mouth), "
                 "L2-LD and ID dist (dlib descriptor distance): lower is better.</p>")
    page = output / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page, sheet_path


def run(args: argparse.Namespace) -> int:
    from ..degradation import DegradationConfig, degrade
    from ..face import load_identity_backend, load_landmark_backend

    data = Path(args.data).expanduser() if args.data else default_data_dir()
    header = []
    faces = _celeba_faces(data, args.identities, args.references) if data and data.is_dir() else []
    if not faces:
        header.append("No demo data folder found" + (f" at {data}" if data else "")
                      + ": using scikit-image's astronaut photo with augmented copies as references.")
        faces = [_astronaut_face(args.references, args.seed)]
    landmark_backend = load_landmark_backend("dlib")
    identity_backend = load_identity_backend("dlib")
    pipeline = _load_pipeline(args)
    if pipeline is None:
        header.append("Restoration weights are not configured (--sd and --weights): the report shows the "
                      "analysis half of HonestFace (degradation, reference choice, MFA mask, metrics).")
    config = DegradationConfig.fixed(**DEMO_DEGRADATION)
    header.append("Degradation: " + ", ".join(f"{k}={v}" for k, v in DEMO_DEGRADATION.items()))
    lqs = degrade(torch.stack([face.gt for face in faces]), config, generator=args.seed)
    for index, (face, lq) in enumerate(zip(faces, lqs)):
        print(f"[{index + 1}/{len(faces)}] {face.name}")
        analyse(face, lq, landmark_backend, identity_backend, pipeline)
    output = Path(args.output)
    page, sheet = _write_report(faces, output, header)
    (output / "metrics.json").write_text(json.dumps({f.name: f.metrics for f in faces}, indent=2))
    for line in header:
        print(line)
    for face in faces:
        for name, row in face.metrics.items():
            print(f"{face.name:>12}  {name:<20} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print(f"report: {page}\ncontact sheet: {sheet}")
    return 0
