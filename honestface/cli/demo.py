"""``honestface demo``: the whole method on a few faces, as an HTML page and a contact sheet.

For each demo face: the ground truth is degraded with the project's degradation at its
moderate fixed level, the best reference is chosen by A-LD (Eq. 6), the MFA mask is
computed from the LQ input (Eq. 10-11), and the face is restored without and with
references. The report lists PSNR/SSIM, the honesty metrics (ALD-e, ALD-m, L2-LD) and the
identity distance (dlib descriptor) of every column against the ground truth.

Model: ``honestface-nano.safetensors``, the small demonstration model shipped with the
package (128 px, trained from scratch on a CPU; not the paper's model), unless real
weights are given (``--weights`` with ``--sd`` for checkpoints on SD 2.1-base).

Data: ``--data`` (a folder with ``celeba/<identity>/*.jpg``, like the project's test data)
or ``HONESTFACE_DEMO_DATA``. Faces come from the people the model's training held out
(recorded in the checkpoint). A real low-quality photo with real references
(``real_lq/reference_sets/obama``) is restored too, scored against its references and its
own input (there is no ground truth). Without a data folder: scikit-image's ``astronaut``
photo with augmented copies as references, which the report states.
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
#: Side of the contact-sheet tiles, and of the faces when no model is loaded.
TILE = 256
REAL_SET = Path("real_lq") / "reference_sets" / "obama"


@dataclass
class DemoFace:
    """One demo case: ground truth, references and where they came from."""

    name: str
    gt: torch.Tensor | None  # (3, S, S) in [0, 1], aligned; None for a real LQ photo
    references: torch.Tensor  # (N, 3, S, S) in [0, 1], aligned
    source: str
    lq: torch.Tensor | None = None  # (3, S, S): a real LQ photo (else made from gt)
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
    parser.add_argument("--sd", default=None,
                        help="SD 2.1-base: diffusers folder or checkpoint file (for weights trained on it)")
    parser.add_argument("--weights", default=None,
                        help="HonestFace .safetensors or OSDFace release folder (default: the shipped "
                             "honestface-nano.safetensors demonstration model)")
    parser.add_argument("--no-restore", action="store_true",
                        help="only the analysis half: degradation, reference choice, MFA mask, metrics")
    parser.add_argument("--osdface", default=None,
                        help="OSDFace release folder for the VRE encoder of a HonestFace checkpoint "
                             "(default: <models>/honestface/OSDFace)")
    parser.add_argument("--models-dir", default=None, help="models folder (ComfyUI layout)")
    parser.add_argument("--harm-faces", type=int, default=12,
                        help="held-out faces for the do-no-harm curve: what the model does to faces from clean "
                             "to heavily degraded (0 skips it; default: %(default)s)")
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


def _celeba_faces(data: Path, identities: int, references: int, size: int,
                  heldout: list[str] | None) -> list[DemoFace]:
    """Faces of ``heldout`` people (``celeba/<identity>`` names) or, without that list,
    of the last identities in name order."""
    from ..image_io import list_images, load_image, resize_to

    root = data / "celeba"
    if heldout:
        folders = [data / name for name in heldout if name.startswith("celeba/")]
    else:
        folders = list(reversed(sorted(p for p in root.iterdir() if p.is_dir()))) if root.is_dir() else []
    faces = []
    for folder in folders:
        files = list_images(folder) if folder.is_dir() else []
        if len(files) < references + 1:
            continue
        images = [resize_to(load_image(f).unsqueeze(0), size)[0] for f in files[: references + 1]]
        faces.append(DemoFace(folder.name, images[0], torch.stack(images[1:]),
                              f"{root.name}/{folder.name}/{files[0].name}"
                              + (" (held out from training)" if heldout else "")))
        if len(faces) == identities:
            break
    return faces


def _real_face(data: Path, size: int) -> DemoFace | None:
    """The first real LQ crop of the reference set, with the set's high-quality references."""
    from ..image_io import list_images, load_image, resize_to

    root = data / REAL_SET
    if not (root / "lq_crop").is_dir() or not (root / "refs").is_dir():
        return None
    crops, refs = list_images(root / "lq_crop"), list_images(root / "refs")
    if not crops or not refs:
        return None
    lq = resize_to(load_image(crops[0]).unsqueeze(0), size)[0]
    references = torch.stack([resize_to(load_image(f).unsqueeze(0), size)[0] for f in refs])
    return DemoFace(f"real-{root.name}", None, references,
                    f"{REAL_SET.as_posix()}/lq_crop/{crops[0].name}: a real low-quality photo, "
                    f"{len(refs)} real references", lq=lq)


def astronaut_face(references: int, seed: int, size: int) -> DemoFace:
    """scikit-image's astronaut photo (NASA, public domain), aligned, with augmented copies as references
    (the demo without data, and the template thumbnails: pictures anyone may redistribute)."""
    import numpy as np
    from skimage import data as skdata

    from ..errors import NoFaceError
    from ..face import align_face, load_face_detector

    photo = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1).float() / 255.0
    faces = load_face_detector("dlib").detect(photo)
    if not faces or faces[0].landmarks is None:
        raise NoFaceError("no face found in scikit-image's astronaut photo")
    landmarks = torch.as_tensor(faces[0].landmarks, dtype=torch.float32)
    gt, _ = align_face(photo, landmarks, size)
    generator = torch.Generator().manual_seed(seed)
    refs = []
    for _ in range(references):
        # A slightly different crop of the same photo: jittered landmarks, flip, exposure.
        jitter = landmarks + torch.randn(landmarks.shape, generator=generator) * 2.0
        crop, _ = align_face(photo, jitter, size)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        gain = 0.85 + 0.3 * torch.rand((), generator=generator)
        refs.append((crop * gain).clamp(0, 1))
    return DemoFace("astronaut", gt, torch.stack(refs), "scikit-image astronaut (references: augmented copies)")


def _load_pipeline(args: argparse.Namespace, landmark_backend):
    """(pipeline, weights path) from ``--weights`` (default: the shipped nano model), or
    (None, None) with ``--no-restore``."""
    from ..paths import NANO_WEIGHTS
    from .restore import build_pipeline, resolve_weights

    if args.no_restore:
        return None, None
    weights = resolve_weights(args.weights or NANO_WEIGHTS, args.models_dir)
    pipeline = build_pipeline(args.sd, weights, osdface=args.osdface, models_dir=args.models_dir,
                              device=args.device)
    if pipeline.landmark_backend is not None:
        pipeline.landmark_backend = landmark_backend  # the demo's faces are aligned: same backend
    return pipeline, weights


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
    """Fill ``face.columns`` and ``face.metrics`` for one demo case.

    ``lq`` (3, S, S). Landmarks for the reference choice are found at the faces' size (as
    the pipeline does); metrics use images brought to at least :data:`TILE` px, the size
    dlib's models expect.
    """
    from ..image_io import resize_to
    from ..metrics import psnr, ssim
    from ..mfa import mask_to_image, mfa_mask_from_images
    from ..models.ide import select_reference
    from ..visualize import GREEN, RED, draw_points

    size = lq.shape[-1]
    lq = lq.unsqueeze(0)
    scale = max(TILE, size) / size

    def big(images: torch.Tensor) -> torch.Tensor:
        return resize_to(images, max(TILE, size))

    found = landmark_backend.landmarks(torch.cat([lq, face.references]))
    lq_lm, ref_lm = found[0], found[1:]
    mask = torch.ones(1, face.references.shape[0], dtype=torch.bool)
    chosen = int(select_reference(lq_lm.unsqueeze(0), ref_lm.unsqueeze(0), mask)[0])

    face.columns["LQ (input)"] = lq[0]
    if pipeline is not None:
        face.columns["restored, no refs"] = pipeline.restore(lq)[0]
        face.columns["restored, refs"] = pipeline.restore(lq, [face.references])[0]
    else:
        face.notes.append("restoration skipped (--no-restore)")
    outputs = [n for n in face.columns if n.startswith(("LQ", "restored"))]
    face.columns["ground truth" if face.gt is not None else "no ground truth (real photo)"] = (
        face.gt if face.gt is not None else torch.full_like(lq[0], 0.5))
    face.columns[f"chosen reference (#{chosen + 1} of {face.references.shape[0]}, A-LD)"] = face.references[chosen]
    face.columns["MFA mask (from LQ)"] = mask_to_image(mfa_mask_from_images(lq, landmark_backend))[0]

    # geometry target: the ground truth, or for a real photo its own LQ input
    target = face.gt.unsqueeze(0) if face.gt is not None else lq
    target_lm = landmark_backend.landmarks(big(target))[0]
    last = face.columns[outputs[-1]].unsqueeze(0)
    last_lm = landmark_backend.landmarks(big(last))[0]
    overlay = draw_points(draw_points(big(last), target_lm.unsqueeze(0), GREEN), last_lm.unsqueeze(0), RED)
    face.columns[f"landmarks: {'GT' if face.gt is not None else 'LQ'} green, "
                 f"{outputs[-1].split(',')[0]} red"] = overlay[0]

    if face.gt is not None:
        gt_embedding = identity_backend.embed(big(target))
    else:
        ref_embeddings = identity_backend.embed(big(face.references))
    for name in outputs:
        image = face.columns[name].unsqueeze(0)
        points = landmark_backend.landmarks(big(image))[0]
        embedding = identity_backend.embed(big(image))
        if face.gt is not None:
            row = {"PSNR": float(psnr(image, target)), "SSIM": float(ssim(image, target))}
            row.update(_landmark_metrics(points / scale, target_lm / scale))
            row["ID dist"] = float((embedding - gt_embedding).norm())
        else:
            row = {f"{k} vs LQ": v for k, v in _landmark_metrics(points / scale, target_lm / scale).items()}
            row["ID dist to refs"] = float((ref_embeddings - embedding).norm(dim=-1).mean())
        face.metrics[name] = row


#: The report fits a 1400 px wide window: one grid row of equal columns per face, each image
#: scaled to its column with its caption centred under it.
REPORT_STYLE = (
    "body{font-family:sans-serif;max-width:1360px;margin:16px auto;padding:0 12px;box-sizing:border-box}"
    ".faces{display:grid;gap:10px;margin:8px 0 12px}"
    "figure{margin:0;min-width:0}"
    "figure img{display:block;width:100%;height:auto}"
    "figcaption{font-size:13px;line-height:1.3;text-align:center;margin-top:4px;overflow-wrap:anywhere}"
    "table.metrics{border-collapse:collapse;margin-bottom:8px}"
    ".metrics td,.metrics th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}"
    ".metrics th:first-child,.metrics td:first-child{text-align:left}"
    "img.sheet{max-width:100%;height:auto}"
)


def _number(value: float) -> str:
    """A metric for the report: 4 significant digits, and 0 for round-off (an image against itself)."""
    return "0" if abs(value) < 1e-9 else f"{value:.4g}"


def _do_no_harm(pipeline, data: Path, identities: list[str], count: int, identity_backend,
                output: Path) -> tuple[list[str], list[str]]:
    """The do-no-harm curve of ``count`` held-out faces: (HTML parts, printed lines)."""
    from ..evaluation.do_no_harm import LEVELS, evaluate_do_no_harm, plot_do_no_harm
    from ..evaluation.heldout import load_heldout_faces
    from ..image_io import save_image

    cases = load_heldout_faces(data, identities, pipeline.image_size, count, 3)
    result = evaluate_do_no_harm(lambda lq, refs: pipeline.restore(lq, refs), torch.stack([c.gt for c in cases]),
                                 [c.references for c in cases], identity_backend, [c.name for c in cases])
    output.mkdir(parents=True, exist_ok=True)
    plot = save_image(plot_do_no_harm(result), output / "do_no_harm.png")
    levels = "; ".join(f"{level.name}: " + (f"blur {level.blur_sigma:g} px, {level.downsample:g}x smaller, "
                                             f"noise {level.noise_sigma:g}, " if level.blur_sigma else "")
                       + f"JPEG {level.jpeg_quality}" for level in LEVELS)
    table = result.table()
    rows = "".join(f"<tr><td>{level}</td><td>{condition}</td><td>{row['PSNR change']:+.2f} dB</td>"
                   f"<td>{row['ID change']:+.3f}</td><td>{row['worse']}/{len(cases)}</td></tr>"
                   for level, conditions in table.items() for condition, row in conditions.items())
    parts = ["<h2>Do no harm: from clean to heavily degraded faces</h2>",
             f"<p>{len(cases)} faces of people the model never saw, degraded at four levels ({html.escape(levels)}; "
             "at 128 px), restored without and with 3 other photos of the person. Above zero on the left and "
             "below zero on the right, the restoration made the faces better than they came in.</p>",
             f"<p><img class='sheet' src='{plot.name}' alt='PSNR change and identity change against the "
             "degradation level'></p>",
             "<table class='metrics'><tr><th>level</th><th>references</th><th>PSNR change</th>"
             "<th>identity change</th><th>clearly worse</th></tr>" + rows + "</table>"]
    return parts, ["do no harm (PSNR change / identity change per level):"] + [
        f"  {level:<9} {condition:<8} {row['PSNR change']:+6.2f} dB  {row['ID change']:+.3f}  "
        f"worse {row['worse']}/{len(cases)}" for level, conditions in table.items()
        for condition, row in conditions.items()] + [f"do-no-harm curve: {plot}"]


def _write_report(faces: list[DemoFace], output: Path, header: list[str],
                  sections: list[str] | None = None) -> tuple[Path, Path]:
    from ..image_io import save_image
    from ..visualize import contact_sheet

    output.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet([list(face.columns.values()) for face in faces], TILE,
                          labels=[list(face.columns) for face in faces],
                          row_titles=[f"{face.name}: {face.source}" for face in faces])
    sheet_path = save_image(sheet, output / "contact_sheet.png")
    parts = ["<!doctype html><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'><title>HonestFace demo</title>",
             f"<style>{REPORT_STYLE}</style>",
             "<h1>HonestFace demo</h1>"] + [f"<p>{html.escape(line)}</p>" for line in header]
    for face in faces:
        parts.append(f"<h2>{html.escape(face.name)}</h2><p>source: {html.escape(face.source)}</p>")
        parts.append(f"<div class='faces' style='grid-template-columns:repeat({len(face.columns)},minmax(0,1fr))'>")
        for index, (name, image) in enumerate(face.columns.items()):
            file = f"{face.name}_{index}.png"
            save_image(image, output / file)
            caption = html.escape(name).replace("-", "&#8209;")  # "A-LD" stays on one line
            parts.append(f"<figure><img src='{file}' alt='{html.escape(name, quote=True)}'>"
                         f"<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
        parts.extend(f"<p><em>{html.escape(note)}</em></p>" for note in face.notes)
        columns = list(next(iter(face.metrics.values())).keys()) if face.metrics else []
        reference = "vs ground truth" if face.gt is not None else "no ground truth"
        parts.append(f"<table class='metrics'><tr><th>{reference}</th>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        for name, row in face.metrics.items():
            parts.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_number(row[c])}</td>" for c in columns)
                         + "</tr>")
        parts.append("</table>")
    parts.append("<p>PSNR/SSIM: higher is better. ALD-e/ALD-m (affine landmark distance, eyes/mouth), "
                 "L2-LD and ID dist (dlib descriptor distance): lower is better.</p>")
    parts.extend(sections or [])
    parts.append(f"<h2>Contact sheet</h2><p><a href='{sheet_path.name}'><img class='sheet' src='{sheet_path.name}' "
                 "alt='all faces and columns in one picture'></a></p>")
    page = output / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page, sheet_path


def run(args: argparse.Namespace) -> int:
    from ..degradation import MODERATE_DEGRADATION, DegradationConfig, degrade
    from ..errors import HonestFaceError
    from ..face import load_identity_backend, load_landmark_backend

    # the demo's faces are aligned: fit landmarks in the aligned box when detection fails
    landmark_backend = load_landmark_backend("dlib", aligned_fallback=True)
    identity_backend = load_identity_backend("dlib", aligned_fallback=True)
    header = []
    try:
        pipeline, weights = _load_pipeline(args, landmark_backend)
    except HonestFaceError as error:
        print(f"honestface demo: error: {error}")
        return 1
    size = pipeline.image_size if pipeline is not None else TILE
    heldout = None
    if pipeline is None:
        header.append("Restoration skipped (--no-restore): the report shows the analysis half of HonestFace "
                      "(degradation, reference choice, MFA mask, metrics).")
    else:
        from ..loaders.checkpoint import read_checkpoint_metadata
        from ..paths import PACKAGED_WEIGHTS_DIR

        metadata = read_checkpoint_metadata(weights) if weights.is_file() else {}
        heldout = json.loads(metadata["heldout_identities"]) if metadata.get("heldout_identities") else None
        built_in = weights.parent == PACKAGED_WEIGHTS_DIR
        header.append(f"Model: {weights.name}, {size} px"
                      + (" - the small demonstration model shipped with the package, trained from scratch on "
                         "a CPU; not the paper's model (see its model card)." if built_in else "."))

    data = Path(args.data).expanduser() if args.data else default_data_dir()
    faces = _celeba_faces(data, args.identities, args.references, size, heldout) if data and data.is_dir() else []
    if not faces:
        header.append("No demo data folder found" + (f" at {data}" if data else "")
                      + ": using scikit-image's astronaut photo with augmented copies as references.")
        faces = [astronaut_face(args.references, args.seed, size)]
    config = DegradationConfig.moderate()
    header.append(f"Degradation of the ground truth at {size} px: "
                  + ", ".join(f"{k}={v}" for k, v in MODERATE_DEGRADATION.items()))
    lqs = list(degrade(torch.stack([face.gt for face in faces]), config, generator=args.seed))
    real = _real_face(data, size) if data and data.is_dir() else None
    if real is not None:
        faces.append(real)
        lqs.append(real.lq)
    for index, (face, lq) in enumerate(zip(faces, lqs)):
        print(f"[{index + 1}/{len(faces)}] {face.name}")
        analyse(face, lq, landmark_backend, identity_backend, pipeline)
    output = Path(args.output)
    sections, harm_lines = [], []
    if pipeline is not None and heldout and data and data.is_dir() and args.harm_faces > 0:
        print(f"do no harm: {args.harm_faces} held-out faces at four degradation levels")
        try:
            sections, harm_lines = _do_no_harm(pipeline, data, heldout, args.harm_faces, identity_backend, output)
        except HonestFaceError as error:
            header.append(f"Do-no-harm curve skipped: {error}")
    page, sheet = _write_report(faces, output, header, sections)
    (output / "metrics.json").write_text(json.dumps({f.name: f.metrics for f in faces}, indent=2))
    for line in header:
        print(line)
    for face in faces:
        for name, row in face.metrics.items():
            print(f"{face.name:>12}  {name:<20} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    for line in harm_lines:
        print(line)
    print(f"report: {page}\ncontact sheet: {sheet}")
    return 0
