"""``honestface restore`` end to end on the tiny models folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.cli import main
from honestface.image_io import load_image, save_image
from honestface.testing import make_tiny_models as tiny
from honestface.testing.offline import network_disabled


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tiny.make_tiny_models(root, seed=0)
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory, shared_data):
    """Three 'aligned crops' of two sizes (synthetic, smooth: restored with --aligned) and two
    real aligned references of one person (CelebA)."""
    folder = tmp_path_factory.mktemp("faces")
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i, size in enumerate((64, 96, 64)):
        image = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=size,
                                                mode="bilinear", align_corners=False)[0]
        paths.append(save_image(image, folder / "lq" / f"face{i}.png"))
    person = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[0]
    refs = [save_image(load_image(path), folder / "refs" / f"ref{i}.png")
            for i, path in enumerate(sorted(person.glob("*.jpg"))[:2])]
    return folder, paths, refs


#: The precision of comparisons that must hold to a pixel level (the default "auto" is bf16 on some CPUs).
FLOAT32 = ("--dtype", "float32")


def _honestface_args(models, output, *extra):
    return ["restore", *extra, "--sd", "tiny-sd21-base.safetensors", "--weights", "honestface-tiny.safetensors",
            "--osdface", "osdface-tiny", "--models-dir", str(models), "-o", str(output), "--no-progress"]


def _pixels(path):
    return (load_image(path).numpy() * 255).round().astype(np.int16)


def test_restore_aligned_with_references(models, faces, tmp_path, capsys):
    folder, paths, _ = faces
    out = tmp_path / "out"
    with network_disabled():
        code = main(_honestface_args(models, out, str(folder / "lq"), "--ref", str(folder / "refs"),
                                     "--batch-size", "2", "--aligned", *FLOAT32))
    assert code == 0
    printed = capsys.readouterr().out
    assert "UNet: 208/208 tensors loaded" in printed and "honestface-tiny.safetensors: loaded" in printed
    assert "restored 3 face(s) in 3 input(s)" in printed
    assert "face0.png: aligned crop (--aligned); restored, with references (--ref)" in printed
    for path in paths:
        result = out / f"{path.stem}.png"
        assert load_image(result).shape == load_image(path).shape  # written at the input size

    # batch size does not change results (float32: bf16 kernels round differently per batch);
    # the same seed gives the same files
    again = tmp_path / "again"
    assert main(_honestface_args(models, again, str(folder / "lq"), "--ref", str(folder / "refs"),
                                 "--batch-size", "1", "--aligned", *FLOAT32)) == 0
    for path in paths:
        difference = np.abs(_pixels(out / f"{path.stem}.png") - _pixels(again / f"{path.stem}.png"))
        assert difference.max() <= 1

    # references matter for a HonestFace checkpoint
    no_refs = tmp_path / "no_refs"
    assert main(_honestface_args(models, no_refs, str(paths[0]), "--aligned", *FLOAT32)) == 0
    assert np.abs(_pixels(no_refs / "face0.png") - _pixels(out / "face0.png")).max() > 1


def test_osdface_weights_colour_correction_and_dtype(models, faces, tmp_path, capsys):
    _, paths, refs = faces
    base = ["restore", str(paths[1]), "--sd", "tiny-sd21-base", "--weights", "osdface-tiny",
            "--models-dir", str(models), "--no-progress", "-q", "--aligned"]
    assert main([*base, "-o", str(tmp_path / "plain"), "--ref", str(refs[0])]) == 0
    captured = capsys.readouterr()
    assert "do not use references" in captured.err
    assert main([*base, "-o", str(tmp_path / "adain"), "--color-correction", "adain"]) == 0
    plain, adain = _pixels(tmp_path / "plain" / "face1.png"), _pixels(tmp_path / "adain" / "face1.png")
    assert np.abs(plain - adain).max() > 1
    # AdaIN matches the input's per-channel mean
    source = load_image(paths[1]).mean(dim=(1, 2))
    corrected = load_image(tmp_path / "adain" / "face1.png").mean(dim=(1, 2))
    assert torch.allclose(corrected, source, atol=0.02)
    assert main([*base, "-o", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert load_image(tmp_path / "bf16" / "face1.png").shape == (3, 96, 96)


def test_whole_photo_is_detected_and_pasted_back(models, shared_data, tmp_path, capsys):
    photo = shared_data / "real_lq" / "whole" / "codeformer_01.jpg"  # a group photo
    out = tmp_path / "whole"
    assert main(_honestface_args(models, out, str(photo), "-q", "--face-index", "0")) == 0
    assert "restored 1 face(s) in 1 input(s)" in capsys.readouterr().out
    source, result = _pixels(photo), _pixels(out / "codeformer_01.png")
    assert source.shape == result.shape
    changed = np.abs(source - result).max(axis=0) > 8
    assert 0.005 < changed.mean() < 0.3  # one face region changed, the rest of the photo did not
    corners = [changed[:10, :10], changed[:10, -10:], changed[-10:, :10], changed[-10:, -10:]]
    assert not any(c.any() for c in corners)


def test_restore_with_the_shipped_nano_model_needs_no_other_file(faces, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HONESTFACE_MODELS", raising=False)
    folder, paths, _ = faces
    out = tmp_path / "out"
    with network_disabled():
        code = main(["restore", str(paths[1]), "--ref", str(folder / "refs"), "--weights",
                     "honestface-nano.safetensors", "-o", str(out), "--no-progress", "--aligned"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "honestface-nano.safetensors: loaded" in printed and "UNet:" not in printed
    assert "references --ref: 2 face(s)" in printed
    assert load_image(out / f"{paths[1].stem}.png").shape == load_image(paths[1]).shape


@pytest.mark.parametrize("case", ["missing image", "missing sd", "no sd", "missing weights", "wrong weights",
                                  "missing osdface"])
def test_errors_exit_1_with_a_message(models, faces, tmp_path, capsys, case):
    paths = faces[1]
    args = _honestface_args(models, tmp_path / "out", str(paths[0]))
    if case == "missing image":
        args[1] = str(tmp_path / "nope.png")
        expected = "nope.png"
    elif case == "missing sd":
        args[args.index("--sd") + 1] = "v2-1_512-ema-pruned.safetensors"
        expected = "v2-1_512-ema-pruned.safetensors"
    elif case == "no sd":
        del args[args.index("--sd"):args.index("--sd") + 2]
        expected = "SD 2.1-base"
    elif case == "missing weights":
        args[args.index("--weights") + 1] = "honestface.safetensors"
        expected = str(models / "honestface")
    elif case == "wrong weights":
        args[args.index("--weights") + 1] = str(models / tiny.SD_CHECKPOINT)
        expected = "no HonestFace metadata"
    else:
        args[args.index("--osdface") + 1] = "OSDFace"
        expected = "OSDFace"
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.startswith("honestface restore: error:")
    assert expected in error and "[Errno" not in error and "Traceback" not in error


def test_an_unreadable_image_is_skipped_with_exit_code_3(models, faces, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(_honestface_args(models, out, str(bad), str(faces[1][0]), "--aligned")) == 3
    captured = capsys.readouterr()
    assert "broken.png: skipped, unreadable (cannot identify image file 'broken.png')" in captured.err
    assert "Traceback" not in captured.err
    assert "skipped: 1" in captured.out and (out / "face0.png").exists() and not (out / "broken.png").exists()
