"""``honestface evaluate`` on a small real test set (folders paired by name, references)."""

from __future__ import annotations

import json

import pytest

try:  # the tests folder on sys.path (pytest's default rootdir-relative import)
    from test_cli_score import NAMES, build_test_set
    from test_metrics import write_random_fid_weights, write_random_lpips_weights
except ImportError:  # tests imported as a package
    from tests.test_cli_score import NAMES, build_test_set
    from tests.test_metrics import write_random_fid_weights, write_random_lpips_weights

from honestface.cli import main
from honestface.metrics.iqa import pyiqa_installed
from honestface.metrics.registry import EVALUATE_METRICS, TABLE1_METRICS


@pytest.fixture(scope="module")
def test_set(tmp_path_factory, shared_data) -> dict:
    return build_test_set(tmp_path_factory.mktemp("evaluate"), shared_data)


def test_evaluate_reports_every_table1_column_and_what_is_missing(test_set, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main([
        "evaluate", "--restored", str(test_set["restored"]), "--gt", str(test_set["gt"]),
        "--refs", str(test_set["refs"]), "--json", str(out), "--per-image", "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    metrics = {m["key"]: m for m in report["metrics"]}
    # Every requested metric is either computed or listed with a reason: nothing vanishes.
    assert set(metrics) == set(EVALUATE_METRICS) | {"deg_ref"}
    for key in TABLE1_METRICS:
        entry = metrics[key]
        assert entry["available"] or entry["reason"], key
        if not entry["available"]:
            assert f"{entry['name']}: " in printed.split("Unavailable metrics:")[1]
    for key in ("psnr", "ssim", "msswd", "deg", "deg_ref", "l2ld", "ald_e", "ald_m", "ald"):
        assert metrics[key]["available"], key
    assert report["num_pairs"] == 4 and metrics["l2ld"]["count"] == 3 and metrics["deg"]["count"] == 4
    assert report["missing_landmarks"] == [{"name": "face_d", "images": ["restored"]}]
    assert report["unpaired"] == {"restored only": ["only_restored.png"], "ground truth only": []}
    # Without an ArcFace file, Deg. and Deg.-ref are dlib's angles and every output says so.
    assert metrics["deg"]["backend"] == metrics["deg_ref"]["backend"] == "dlib"
    assert metrics["deg"]["output_key"] == "deg(dlib)" and metrics["l2ld"]["output_key"] == "l2ld(dlib)"
    rows = {row["name"]: row for row in report["images"]}
    assert list(rows) == list(NAMES)
    assert "deg" not in rows["face_a"] and "l2ld" not in rows["face_a"]
    # The colour-cast face is further from its ground truth in colour than the plain blur.
    assert rows["face_c"]["msswd"] > rows["face_a"]["msswd"] > 0
    # The shifted face keeps its layout (small A-LD) but moves every landmark (large L2-LD).
    assert rows["face_b"]["l2ld(dlib)"] > 3 * rows["face_a"]["l2ld(dlib)"]
    assert rows["face_b"]["ald_e(dlib)"] < 3 * max(rows["face_a"]["ald_e(dlib)"], rows["face_c"]["ald_e(dlib)"])
    # Restored faces are closer in identity to their own ground truth than the grey image.
    assert rows["face_a"]["deg_ref(dlib)"] < rows["face_d"]["deg_ref(dlib)"]
    assert "mean (4)" in printed and "ALD-e(dlib)↓" in printed and "Deg.-ref(dlib)↓" in printed


def test_evaluate_needs_folders_with_common_names(test_set, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--restored", str(empty), "--gt", str(test_set["gt"])]) == 1
    assert "no images with the same name" in capsys.readouterr().err
    assert main(["evaluate", "--restored", str(tmp_path / "nope"), "--gt", str(test_set["gt"])]) == 1
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not pyiqa_installed(), reason="pyiqa is not installed")
def test_evaluate_with_local_pyiqa_weights_computes_lpips_and_fid(test_set, tmp_path, monkeypatch, capsys):
    """With weight files (real formats, random values) in <models>/pyiqa, LPIPS and FID are computed offline."""
    models = tmp_path / "models"
    write_random_lpips_weights(models / "pyiqa")
    write_random_fid_weights(models / "pyiqa", monkeypatch)
    out = tmp_path / "report.json"
    code = main([
        "evaluate", "--restored", str(test_set["restored"]), "--gt", str(test_set["gt"]),
        "--metrics", "lpips,fid,psnr", "--models-dir", str(models), "--json", str(out), "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = {m["key"]: m for m in json.loads(out.read_text())["metrics"]}
    assert metrics["lpips"]["available"] and metrics["fid"]["available"], printed
    assert metrics["lpips"]["count"] == 4 and metrics["lpips"]["mean"] > 0
    assert metrics["fid"]["mean"] is not None and metrics["fid"]["mean"] > 0
    assert "LPIPS↓" in printed and "FID↓" in printed and "Unavailable metrics" not in printed


def test_pairing_by_name_with_flat_and_folder_references(tmp_path):
    import torch

    from honestface.image_io import save_image
    from honestface.evaluation.evaluator import pair_folders

    for folder, names in (("restored", ["a.png", "b.png", "c.png"]), ("gt", ["a.jpg", "b.png", "d.png"]), ("refs", ["a.png"])):
        (tmp_path / folder).mkdir()
        for name in names:
            save_image(torch.zeros(3, 8, 8), tmp_path / folder / name)
    (tmp_path / "refs" / "b").mkdir()
    for name in ("r1.png", "r2.png"):
        save_image(torch.zeros(3, 8, 8), tmp_path / "refs" / "b" / name)
    pairs, unpaired = pair_folders(tmp_path / "restored", tmp_path / "gt", tmp_path / "refs")
    assert [(p.name, p.ground_truth.name, [r.name for r in p.references]) for p in pairs] == [
        ("a", "a.jpg", ["a.png"]), ("b", "b.png", ["r1.png", "r2.png"])
    ]
    assert unpaired == {"restored only": ["c.png"], "ground truth only": ["d.png"]}
