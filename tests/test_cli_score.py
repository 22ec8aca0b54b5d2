"""``honestface score`` on real faces, and A-LD vs L2-LD on an affine-shifted face."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import kornia
import pytest
import torch

from honestface.cli import main
from honestface.image_io import load_image, save_image
from honestface.metrics import ALD_EYES, affine_landmark_distance, ald_eyes, l2_landmark_distance

NAMES = ("face_a", "face_b", "face_c", "face_d")


def similarity_about_centre(size: int, degrees: float = 3.0, scale: float = 1.03, shift=(6.0, -4.0)) -> torch.Tensor:
    """(2, 3) pixel affine: rotate and scale about the image centre, then translate."""
    angle = math.radians(degrees)
    linear = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = torch.full((2,), (size - 1) / 2.0)
    offset = torch.tensor(shift) + centre - linear @ centre
    return torch.cat([linear, offset[:, None]], dim=1)


def build_test_set(root: Path, shared_data: Path) -> dict:
    """Real CelebA faces as ground truth and simple "restorations" of them.

    face_a: Gaussian blur; face_b: the face moved by a small similarity transform;
    face_c: blur plus a warm colour cast; face_d: a flat grey image (no face). The
    restored folder has one extra unpaired file; refs/<name>/ holds two other photos of
    each person.
    """
    identities = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3)
    gt_dir, restored_dir, refs_dir = root / "gt", root / "restored", root / "refs"
    for folder in (gt_dir, restored_dir, refs_dir):
        folder.mkdir(parents=True)
    affine = None
    for name, identity in zip(NAMES, identities):
        photos = sorted(identity.glob("*.jpg"))
        face = load_image(photos[0]).unsqueeze(0)
        save_image(face[0], gt_dir / f"{name}.png")
        (refs_dir / name).mkdir()
        for i, photo in enumerate(photos[1:3]):
            save_image(load_image(photo), refs_dir / name / f"ref{i}.png")
        blurred = kornia.filters.gaussian_blur2d(face, (7, 7), (1.5, 1.5))
        if name == "face_a":
            restored = blurred
        elif name == "face_b":
            affine = similarity_about_centre(face.shape[-1])
            restored = kornia.geometry.transform.warp_affine(face, affine[None], face.shape[-2:], padding_mode="reflection")
        elif name == "face_c":
            restored = (blurred + torch.tensor([0.06, 0.0, -0.06]).view(1, 3, 1, 1)).clamp(0, 1)
        else:
            restored = torch.full_like(face, 0.5)
        save_image(restored[0].clamp(0, 1), restored_dir / f"{name}.png")
    save_image(torch.full((3, 64, 64), 0.3), restored_dir / "only_restored.png")
    return {"gt": gt_dir, "restored": restored_dir, "refs": refs_dir, "affine": affine}


@pytest.fixture(scope="module")
def test_set(tmp_path_factory, shared_data) -> dict:
    return build_test_set(tmp_path_factory.mktemp("score"), shared_data)


def test_affine_shift_of_real_landmarks(test_set):
    """Real dlib landmarks: an exact affine copy has A-LD 0; a re-detected warped face stays at detector noise."""
    from honestface.face import load_landmark_backend

    backend = load_landmark_backend("dlib")
    gt = load_image(test_set["gt"] / "face_b.png").unsqueeze(0)
    warped = load_image(test_set["restored"] / "face_b.png").unsqueeze(0)
    gt_points = backend.landmarks(gt).double()[0]
    affine = test_set["affine"].double()
    moved = gt_points @ affine[:, :2].T + affine[:, 2]
    assert float(affine_landmark_distance(moved, gt_points)) < 1e-9
    assert float(l2_landmark_distance(moved, gt_points)) > 4.0

    detected = backend.landmarks(warped).double()[0]
    l2 = float(l2_landmark_distance(detected, gt_points))
    rms_after_fit = math.sqrt(float(ald_eyes(detected, gt_points)) / len(ALD_EYES))
    assert l2 > 4.0  # the global shift dominates L2-LD
    assert rms_after_fit < 1.5  # what is left after the affine fit is landmark-detector noise


def test_score_single_pair_json(test_set, tmp_path, capsys):
    out = tmp_path / "pair.json"
    code = main([
        "score", str(test_set["restored"] / "face_b.png"), str(test_set["gt"] / "face_b.png"),
        "--metrics", "ald_e,ald_m,ald,l2ld,psnr", "--json", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    # the paper names no landmark detector: the one used is always in the column
    for header in ("ALD-e(dlib)↓", "ALD-m(dlib)↓", "A-LD(dlib)↓", "L2-LD(dlib)↓", "PSNR↑", "face_b"):
        assert header in printed
    report = json.loads(out.read_text())
    assert report["num_pairs"] == 1 and report["missing_landmarks"] == []
    row = report["images"][0]
    assert row["l2ld(dlib)"] > 4.0 and math.sqrt(row["ald_e(dlib)"] / len(ALD_EYES)) < 1.5
    metrics = {m["key"]: m for m in report["metrics"]}
    assert metrics["psnr"]["direction"] == "higher is better" and "backend" not in metrics["psnr"]
    assert metrics["l2ld"]["backend"] == "dlib" and metrics["l2ld"]["name"] == "L2-LD(dlib)"
    assert report["settings"]["landmark_backend"] == "dlib"


def test_score_folders_csv_lists_missing_faces_unavailable_metrics_and_unpaired(test_set, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    code = main([
        "score", str(test_set["restored"]), str(test_set["gt"]),
        "--metrics", "psnr,ssim,l2ld,ald_e,deg,lpips", "--csv", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [r["name"] for r in rows] == list(NAMES) + ["mean"]
    by_name = {r["name"]: r for r in rows}
    assert float(by_name["face_a"]["psnr"]) > 25.0 and float(by_name["face_d"]["psnr"]) < 20.0
    assert float(by_name["face_a"]["ssim"]) > float(by_name["face_d"]["ssim"])
    assert by_name["face_d"]["ald_e(dlib)"] == "" and by_name["face_a"]["ald_e(dlib)"] != ""  # grey: no landmarks
    # Landmark means are over the faces that have landmarks; Deg. over all four.
    landmark_values = [float(by_name[n]["l2ld(dlib)"]) for n in NAMES[:3]]
    assert float(by_name["mean"]["l2ld(dlib)"]) == pytest.approx(sum(landmark_values) / 3)
    # no ArcFace file here: Deg. is dlib's angle, and says so
    assert "deg" not in rows[0] and float(by_name["face_d"]["deg(dlib)"]) > float(by_name["face_a"]["deg(dlib)"])
    assert "Deg.(dlib)↓" in printed and "identity backend 'arcface-onnx' not available" in printed
    assert "Faces without landmarks (1" in printed and "face_d: no face found in restored" in printed
    assert "L2-LD(dlib) (3)" in printed  # the table says which means use fewer images
    assert "only_restored.png" in printed
    if "lpips" not in rows[0]:
        assert "LPIPS:" in printed.split("Unavailable metrics:")[1]


def test_score_errors_are_clean(test_set, tmp_path, capsys):
    assert main(["score", str(test_set["restored"]), str(test_set["gt"] / "face_a.png")]) == 1
    assert "both be image files or both be folders" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "missing.png"), str(test_set["gt"] / "face_a.png")]) == 1
    assert main(["score", str(test_set["restored"]), str(test_set["gt"]), "--metrics", "sharpness"]) == 1
    assert "unknown metric 'sharpness'" in capsys.readouterr().err


def test_identical_images_give_infinite_psnr_in_valid_json(test_set, tmp_path):
    out = tmp_path / "same.json"
    face = str(test_set["gt"] / "face_a.png")
    assert main(["score", face, face, "--metrics", "psnr,ssim", "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())  # strict JSON: no Infinity / NaN tokens
    assert report["images"][0]["psnr"] == "inf" and report["images"][0]["ssim"] == pytest.approx(1.0)
    assert {m["key"]: m["mean"] for m in report["metrics"]}["psnr"] == "inf"


def test_deg_is_the_arcface_angle_when_an_arcface_file_is_there(test_set, tmp_path, capsys):
    """With insightface's ArcFace file in the models folder (here a tiny random one in the
    real ONNX format), Deg. is the ArcFace angle (plain "Deg." column, key "deg"); asking
    for dlib names dlib in the column. Checked against onnxruntime run by hand."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime

    from honestface.face.arcface import recognition_crop
    from honestface.testing.make_tiny_models import ARCFACE_ONNX, write_tiny_arcface_onnx

    models = tmp_path / "models"
    onnx_file = write_tiny_arcface_onnx(models / ARCFACE_ONNX, seed=3)
    if onnx_file is None:
        pytest.skip("the onnx package is needed to write the tiny ArcFace file")
    out = tmp_path / "arcface.json"
    assert main(["score", str(test_set["restored"]), str(test_set["gt"]), "--metrics", "deg,l2ld",
                 "--models-dir", str(models), "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Deg.↓" in printed and "Deg.(" not in printed and "L2-LD(dlib)↓" in printed
    report = json.loads(out.read_text())
    metrics = {m["key"]: m for m in report["metrics"]}
    assert metrics["deg"]["backend"] == "arcface-onnx" and metrics["deg"]["output_key"] == "deg"

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def embedding(path):
        crop = recognition_crop(load_image(path)[None], "ffhq", 112) * 2.0 - 1.0
        return session.run(None, {session.get_inputs()[0].name: crop.numpy().astype(np.float32)})[0][0].astype(np.float64)

    for row in report["images"]:
        a, b = embedding(test_set["restored"] / f"{row['name']}.png"), embedding(test_set["gt"] / f"{row['name']}.png")
        expected = math.degrees(math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))
        assert row["deg"] == pytest.approx(expected, abs=1e-3)

    assert main(["score", str(test_set["restored"]), str(test_set["gt"]), "--metrics", "deg", "--identity", "dlib",
                 "--models-dir", str(models), "--no-progress"]) == 0
    assert "Deg.(dlib)↓" in capsys.readouterr().out
