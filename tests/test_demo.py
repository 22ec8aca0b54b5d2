"""The demo command writes a complete report on real faces and on the bundled fallback photo."""

from __future__ import annotations

import json
import re

import pytest

from honestface.cli import main
from honestface.visualize import contact_sheet, draw_points, wrap_text


def test_contact_sheet_layout() -> None:
    import torch

    rows = [[torch.zeros(3, 10, 20), torch.ones(3, 30, 30)], [torch.full((3, 8, 8), 0.5)]]
    sheet = contact_sheet(rows, size=16, gap=2, background=1.0)
    assert sheet.shape == (3, 2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    assert sheet[:, 2:18, 2:18].max() == 0  # first tile black
    assert torch.allclose(sheet[:, 20:36, 2:18], torch.tensor(0.5))
    assert sheet[:, 20:36, 20:36].min() == 1  # missing tile stays background


def test_contact_sheet_captions_and_row_titles() -> None:
    import torch

    rows = [[torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)]]
    plain = contact_sheet(rows, size=64, gap=2)
    labelled = contact_sheet(rows, size=64, gap=2, labels=[["LQ (input)", "restored, refs"]],
                             row_titles=["person 1"], font_size=12)
    line = round(12 * 1.25)
    title, caption = line + 6, 2 * line + 6
    assert plain.shape == (3, 64 + 4, 2 * 64 + 6)
    assert labelled.shape == (3, title + 64 + caption + 4, 2 * 64 + 6)
    assert labelled[:, 2:2 + title, 2:60].min() < 0.5  # the row title is written
    for column in range(2):
        x = 2 + column * 66
        assert labelled[:, 2 + title:2 + title + 64, x:x + 64].max() == 0  # the tile itself
        strip = labelled[:, 2 + title + 64:2 + title + 64 + caption, x:x + 64]
        assert strip.min() < 0.5 and strip.mean() > 0.7  # dark letters on the white caption strip
    from PIL import ImageFont

    font = ImageFont.load_default(size=12)
    text = "landmarks: GT green, restored red"
    lines = wrap_text(text, 130, 12, max_lines=5)
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(font.getlength(line) <= 130 for line in lines)
    shortened = wrap_text(text, 60, 12, max_lines=2)
    assert len(shortened) == 2 and shortened[-1].endswith("…")


def test_draw_points_marks_only_finite_points() -> None:
    import torch

    images = torch.zeros(1, 3, 32, 32)
    points = torch.tensor([[[5.0, 7.0], [float("nan"), 3.0]]])
    out = draw_points(images, points, (1.0, 0.0, 0.0), radius=1)
    assert out[0, 0, 6:9, 4:7].min() == 1 and out[0, 0].sum() == 9
    assert images.sum() == 0  # input untouched


def test_demo_analysis_only_on_real_faces(shared_data, tmp_path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(shared_data), "--identities", "1", "--references", "2",
                 "--no-restore", "-o", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "restoration skipped" in page and "ALD-e" in page
    metrics = json.loads((out / "metrics.json").read_text())
    celeba = [rows for name, rows in metrics.items() if not name.startswith("real-")]
    (row,) = [rows["LQ (input)"] for rows in celeba]
    assert 15 < row["PSNR"] < 40 and 0 < row["SSIM"] < 1
    assert row["ALD-e"] >= 0 and row["L2-LD"] >= 0 and row["ID dist"] > 0
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    # Every picture of the report has its caption in the same grid cell, in a page that fits
    # a 1400 px window (no fixed width above it).
    import re

    figures = re.findall(r"<figure><img src='([^']+)'[^>]*><figcaption>([^<]+)</figcaption></figure>", page)
    assert len(figures) == page.count("<img src=") and len(figures) >= 2 * 5
    assert all((out / file).is_file() for file, _ in figures)
    assert {"LQ (input)", "ground truth", "MFA mask (from LQ)"} <= {caption for _, caption in figures}
    assert all(int(width) <= 1400 for width in re.findall(r"width:(\d+)px", page))


def test_demo_with_the_shipped_model(shared_data, tmp_path) -> None:
    from honestface.loaders.checkpoint import read_checkpoint_metadata
    from honestface.paths import NANO_WEIGHTS, PACKAGED_WEIGHTS_DIR

    out = tmp_path / "demo"
    assert main(["demo", "--data", str(shared_data), "--identities", "2", "-o", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert NANO_WEIGHTS in page and "not the paper" in page and "held out from training" in page
    metrics = json.loads((out / "metrics.json").read_text())
    heldout = json.loads(read_checkpoint_metadata(PACKAGED_WEIGHTS_DIR / NANO_WEIGHTS)["heldout_identities"])
    people = [name for name in metrics if not name.startswith("real-")]
    assert len(people) == 2 and all(f"celeba/{name}" in heldout for name in people)
    for name in people:
        assert {"LQ (input)", "restored, no refs", "restored, refs"} == set(metrics[name])
        assert metrics[name]["restored, refs"]["PSNR"] > metrics[name]["LQ (input)"]["PSNR"]
    real = metrics["real-obama"]
    assert set(real["restored, refs"]) == {"ALD-e vs LQ", "ALD-m vs LQ", "L2-LD vs LQ", "ID dist to refs"}
    # 3 people x (LQ, 2 restorations, GT or placeholder, reference, MFA mask, landmarks)
    assert len(list(out.glob("*_6.png"))) == 3


def test_demo_without_data_uses_bundled_photo(tmp_path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(tmp_path / "absent"), "--references", "2", "-o", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "astronaut" in page
    assert "astronaut" in json.loads((out / "metrics.json").read_text())


def test_demo_restores_with_configured_weights(shared_data, tmp_path) -> None:
    from honestface.testing.make_tiny_models import main as make_tiny_models

    models = tmp_path / "models"
    make_tiny_models([str(models)])
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(shared_data), "--identities", "1", "--references", "2",
                 "--sd", str(models / "checkpoints" / "tiny-sd21-base.safetensors"),
                 "--weights", "honestface-tiny.safetensors", "--osdface", "osdface-tiny",
                 "--models-dir", str(models), "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (rows,) = [rows for name, rows in metrics.items() if not name.startswith("real-")]
    assert {"LQ (input)", "restored, no refs", "restored, refs"} <= set(rows)
    assert "restoration skipped" not in (out / "report.html").read_text()


#: The demo's own lines on stdout (it writes nothing to stderr): progress, header, metric rows, paths.
DEMO_LINE = re.compile(r"\[\d+/\d+\] \S+|Model: .+|Degradation of the ground truth .+|No demo data folder .+"
                       r"|Restoration skipped .+|\s*\S+  (LQ \(input\)|restored, (no )?refs)\s+.+"
                       r"|report: .+|contact sheet: .+"
                       # the do-no-harm curve
                       r"|do no harm.+|\s+(clean|mild|moderate|heavy)\s+(no refs|refs)\s+.+|do-no-harm curve: .+")


@pytest.mark.slow
def test_demo_prints_only_its_own_lines(shared_data, tmp_path) -> None:
    """A first run as a user starts it (a fresh interpreter, so diffusers and whatever it pulls
    in are imported for the first time, default warning filters): stderr is empty and every
    stdout line is one the demo writes. Guards against third-party import-time noise such as
    bitsandbytes' "Failed to load CPU gemm_4bit_forward ... trust_remote_code" line."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "HONESTFACE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, "-m", "honestface", "demo", "--data", str(shared_data),
                             "--identities", "1", "--references", "2", "-o", str(tmp_path / "demo")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", f"lines from other packages on stderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert any(line.startswith("Model: honestface-nano") for line in lines), result.stdout  # it restored
    foreign = [line for line in lines if line.strip() and not DEMO_LINE.fullmatch(line)]
    assert not foreign, f"lines the demo does not write:\n" + "\n".join(foreign)
