"""``honestface restore`` on real photos with the shipped nano model: a batch loses nothing,
raw photos as references, per-input references, video with audio, EXIF orientation."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from honestface.cli import main
from honestface.cli.restore import check_output_folder, collect_inputs, resolve_device
from honestface.errors import HonestFaceError
from honestface.image_io import load_image, save_image
from honestface.testing.offline import network_disabled

PERSON = "Alvaro_Uribe"  # LFW: input photo 0001, reference photos 0002 and 0003
CROP = "gfpgan_Adele_crop.png"  # a real low-quality aligned crop


def _restore(*args: str) -> list[str]:
    # the full restoration (no automatic fidelity): these tests look for where faces changed
    return ["restore", *args, "--weights", "honestface-nano.safetensors", "--no-progress", "--fidelity", "off"]


def _pixels(path) -> np.ndarray:
    return (load_image(path).numpy() * 255).round().astype(np.int16)


def _exif_rotated_copy(source, target) -> None:
    """Store the photo's pixels turned 90 degrees with an EXIF tag saying how to turn them back,
    as a phone does."""
    with Image.open(source) as image:
        turned = image.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        turned.save(target, exif=exif, quality=95)


def _no_face_picture(shared_data, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) real photo texture without a face: the curtain and flag beside an LFW face."""
    side = load_image(shared_data / "lfw" / PERSON / f"{PERSON}_0001.jpg")[:, 20:180, :55]
    return torch.nn.functional.interpolate(side[None], size=size, mode="bilinear", antialias=True)[0].clamp(0, 1)


def _png_bomb(path, side: int = 20000) -> None:
    """A ``side`` x ``side`` 1-bit PNG of zeros: a few tens of kB on disk, 400 megapixels
    once decoded (a decompression bomb). Written row by row, never held whole."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def mixed_folder(shared_data, tmp_path_factory):
    """A folder as users have them: good photos, an aligned crop, an EXIF-rotated phone
    picture, a photo without a face, a JPEG cut after its header, a JPEG cut mid-scan, a
    decompression bomb, a text file and a tiny image."""
    folder = tmp_path_factory.mktemp("mixed")
    lfw = shared_data / "lfw" / PERSON
    shutil.copy(lfw / f"{PERSON}_0001.jpg", folder / "uribe.jpg")
    shutil.copy(shared_data / "real_lq" / "cropped" / CROP, folder / "crop.png")
    _exif_rotated_copy(lfw / f"{PERSON}_0007.jpg", folder / "phone.jpg")
    save_image(_no_face_picture(shared_data, (120, 180)), folder / "empty.png")
    (folder / "broken.jpg").write_bytes((lfw / f"{PERSON}_0008.jpg").read_bytes()[:300])
    whole = (lfw / f"{PERSON}_0011.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # header intact, scan truncated
    _png_bomb(folder / "bomb.png")
    (folder / "notes.txt").write_text("not a picture\n")
    Image.new("RGB", (12, 12), (90, 90, 90)).save(folder / "tiny.png")
    return folder


@pytest.fixture(scope="module")
def mixed_run(mixed_folder, shared_data, tmp_path_factory):
    """One run over the folder with raw LFW photos as --ref, faces and comparisons saved."""
    out = tmp_path_factory.mktemp("out") / "restored"
    lfw = shared_data / "lfw" / PERSON
    stdout, stderr = io.StringIO(), io.StringIO()
    with network_disabled(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(_restore(str(mixed_folder), "-o", str(out), "--ref", str(lfw / f"{PERSON}_0002.jpg"),
                             "--ref", str(lfw / f"{PERSON}_0003.jpg"), "--save-faces", "--save-comparison"))
    return code, out, stdout.getvalue(), stderr.getvalue()


def test_a_folder_with_bad_files_writes_every_good_output(mixed_run, mixed_folder):
    code, out, printed, errors = mixed_run
    assert code == 3, errors  # some inputs skipped, everything else written
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert written == ["crop.png", "empty.png", "phone.png", "uribe.png"]
    # one line per file says what auto decided
    lines = {line.split(":", 1)[0]: line for line in printed.splitlines() if ": " in line}
    assert "aligned crop (square, landmarks fit the FFHQ template" in lines["crop.png"]
    assert "photo (landmarks off the FFHQ template" in lines["uribe.jpg"]  # square 250x250, not aligned
    assert "1 face(s) restored (1 with references" in lines["uribe.jpg"]
    assert "restored, with references (--ref)" in lines["crop.png"]
    assert "no face found, written unchanged" in lines["empty.png"]
    # raw reference photos were aligned, none dropped
    assert f"reference {PERSON}_0002.jpg: photo, face aligned" in printed
    assert "references --ref: 2 face(s)" in printed
    # every skip has its one-line reason, and the summary lists them
    for name, reason in (("broken.jpg", "unreadable"), ("cut.jpg", "unreadable (image file is truncated"),
                         ("bomb.png", "too large (400.0 megapixels, above --max-pixels 200000000; not read"),
                         ("notes.txt", "not an image"),
                         ("tiny.png", "too small to hold a face (12x12 px; each side must be at least 32 px)")):
        assert f"{name}: skipped, {reason}" in errors
        assert f"  {name}: {reason}" in printed
    assert "restored 3 face(s) in 3 input(s)" in printed
    assert "passed through unchanged (no face): 1: empty.png" in printed
    assert "square among them" not in printed  # 180 x 120: no aligned crop
    assert "skipped: 5" in printed


def test_the_summary_points_square_inputs_without_a_face_to_aligned_mode(tmp_path):
    """A square image in which auto mode found no face may be a crop too degraded to be
    recognised as one: the summary says how to restore it as a crop."""
    from honestface.cli.restore import Outcome, summarize

    lines, code = summarize([Outcome("scan.png", "passed", "no face", square=True), Outcome("wide.png", "passed", "no face"),
                             Outcome("crop.png", "restored", faces=1)], 1.0, tmp_path)
    assert code == 0
    assert "passed through unchanged (no face): 2: scan.png, wide.png" in lines
    assert "  square among them: 1; an aligned face crop too degraded to be recognised as one is restored with " \
           "--aligned" in lines


def test_outputs_are_what_they_should_be(mixed_run, mixed_folder):
    _, out, _, _ = mixed_run
    # the photo without a face is written unchanged, bit for bit
    assert np.array_equal(_pixels(out / "empty.png"), _pixels(mixed_folder / "empty.png"))
    # the whole photo: the face changed, the corners did not
    source, result = _pixels(mixed_folder / "uribe.jpg"), _pixels(out / "uribe.png")
    changed = np.abs(source - result).max(axis=0) > 8
    assert 0.03 < changed.mean() < 0.5
    assert not changed[:25, :25].any() and not changed[-25:, -25:].any()
    # the aligned crop keeps its size
    assert load_image(out / "crop.png").shape == load_image(mixed_folder / "crop.png").shape
    # the phone picture comes out upright (EXIF applied): it matches the upright LFW photo's shape,
    # and its restored face is where the upright photo's face is (the centre band, not the side)
    phone = load_image(out / "phone.png")
    with Image.open(mixed_folder / "phone.jpg") as stored:
        assert stored.size[::-1] == (250, 250) and phone.shape == (3, 250, 250)
    upright = load_image(mixed_folder / "phone.jpg")
    changed = (phone - upright).abs().amax(dim=0) > 0.03
    rows, cols = changed.nonzero(as_tuple=True)
    assert changed.float().mean() > 0.03
    assert 60 < rows.float().mean() < 190 and 80 < cols.float().mean() < 170
    # --save-faces: the aligned input and the restored crop of every face, at the model size
    for name in ("crop_00.png", "uribe_00.png", "phone_00.png"):
        assert load_image(out / "cropped_faces" / name).shape == (3, 128, 128)
        assert load_image(out / "restored_faces" / name).shape == (3, 128, 128)
    # --save-comparison: input | output side by side
    sheet = load_image(out / "cmp" / "uribe.png")
    assert sheet.shape == (3, 250, 500)
    assert torch.allclose(sheet[:, :, 250:], load_image(out / "uribe.png"), atol=1 / 255)
    assert (sheet[:, :, :250] - load_image(mixed_folder / "uribe.jpg")).abs().max() <= 1 / 255 + 1e-6


def test_skip_existing_resumes_and_quiet_silences_the_lines(mixed_run, mixed_folder, shared_data, capsys):
    _, out, _, _ = mixed_run
    lfw = shared_data / "lfw" / PERSON
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    (out / "uribe.png").unlink()  # as if the run had been interrupted before it
    code = main(_restore(str(mixed_folder), "-o", str(out), "--skip-existing", "-q",
                         "--ref", str(lfw / f"{PERSON}_0002.jpg"), "--ref", str(lfw / f"{PERSON}_0003.jpg")))
    printed = capsys.readouterr().out
    assert code == 3  # the bad files are still skipped
    assert "already there (--skip-existing): 3" in printed
    assert "restored 1 face(s) in 1 input(s)" in printed
    assert "uribe.jpg:" not in printed.split("restored 1 face")[0]  # -q: no per-file line
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert (out / "uribe.png").exists()
    for name in ("crop.png", "empty.png", "phone.png"):
        assert after[name] == before[name]  # not written again


def test_per_input_references_from_ref_dir(mixed_run, shared_data, tmp_path, capsys):
    _, first, _, _ = mixed_run
    lfw = shared_data / "lfw" / PERSON
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(lfw / f"{PERSON}_0001.jpg", inputs / "uribe.jpg")
    shutil.copy(shared_data / "real_lq" / "cropped" / CROP, inputs / "crop.png")
    refs = tmp_path / "refs" / "uribe"  # DIR/<input stem>/, raw photos; nothing for crop.png
    refs.mkdir(parents=True)
    for i in (2, 3):
        (refs / f"{PERSON}_000{i}.jpg").symlink_to(lfw / f"{PERSON}_000{i}.jpg")
    out = tmp_path / "out"
    assert main(_restore(str(inputs), "-o", str(out), "--ref-dir", str(tmp_path / "refs"))) == 0
    printed = capsys.readouterr().out
    assert "references " + str(refs) + ": 2 face(s)" in printed
    lines = {line.split(":", 1)[0]: line for line in printed.splitlines() if ": " in line}
    assert "with references" in lines["uribe.jpg"]
    assert "with references" not in lines["crop.png"]
    # same references as the --ref run: same face; the crop without references differs from it with them
    assert np.abs(_pixels(out / "uribe.png") - _pixels(first / "uribe.png")).max() <= 1
    # the references change the restored crop (the small model's references change little)
    assert np.abs(_pixels(out / "crop.png") - _pixels(first / "crop.png")).max() > 1


def test_output_folder_that_would_overwrite_inputs_is_refused(mixed_folder, tmp_path, capsys):
    before = sorted(p.name for p in mixed_folder.iterdir())
    assert main(_restore(str(mixed_folder), "-o", str(mixed_folder))) == 1
    assert "is the input folder" in capsys.readouterr().err
    photo = tmp_path / "face.png"
    shutil.copy(mixed_folder / "crop.png", photo)
    assert main(_restore(str(photo), "-o", str(tmp_path))) == 1
    assert "would overwrite the input file" in capsys.readouterr().err
    assert sorted(p.name for p in mixed_folder.iterdir()) == before
    # the rules themselves, without a model
    items, _ = collect_inputs([photo, tmp_path / "a.jpg"], tmp_path / "elsewhere")
    check_output_folder(tmp_path / "elsewhere", [photo], items)
    items, _ = collect_inputs([photo], tmp_path / "refs")
    with pytest.raises(HonestFaceError, match="reference"):
        check_output_folder(tmp_path / "refs", [photo], items, [tmp_path / "refs" / "face.png"])


def test_inputs_names_and_missing_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "clip.MP4").write_bytes(b"x")
    (tmp_path / ".hidden").write_bytes(b"x")
    items, missing = collect_inputs([tmp_path, tmp_path / "gone.png"], tmp_path / "out")
    assert [(i.path.name, i.output.name, i.kind) for i in items] == [
        ("a.jpg", "a.png", "image"), ("a.png", "a_1.png", "image"), ("clip.MP4", "clip.mp4", "video")]
    assert [(m.name.endswith("gone.png"), m.reason) for m in missing] == [(True, "not found")]


def test_device_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"


def test_prepare_dataset_reads_exif_rotated_photos_upright(shared_data, tmp_path):
    from honestface.cli.prepare_dataset import prepare_dataset

    person = tmp_path / "src" / PERSON
    person.mkdir(parents=True)
    _exif_rotated_copy(shared_data / "lfw" / PERSON / f"{PERSON}_0001.jpg", person / "phone.jpg")
    upright = tmp_path / "upright" / PERSON
    upright.mkdir(parents=True)
    shutil.copy(shared_data / "lfw" / PERSON / f"{PERSON}_0001.jpg", upright / "phone.jpg")
    totals = prepare_dataset(tmp_path / "src", tmp_path / "out", size=128)
    assert totals["counts"] == {"ok": 1}, json.dumps(totals)  # the face is found: the photo was turned upright
    prepare_dataset(tmp_path / "upright", tmp_path / "out_upright", size=128)
    crop = load_image(tmp_path / "out" / PERSON / "phone.png")
    reference = load_image(tmp_path / "out_upright" / PERSON / "phone.png")
    assert (crop - reference).abs().mean() < 0.03  # the same aligned face (JPEG re-encoding aside)


# ----------------------------------------------------------------------------- video
def _shifted(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    return torch.roll(image, shifts=(dy, dx), dims=(1, 2))


def test_video_with_an_empty_frame_keeps_its_audio(shared_data, tmp_path, capsys):
    pytest.importorskip("av", reason="PyAV (the 'video' extra) is not installed")
    from test_video import read_audio, tone, write_test_clip

    from honestface.video import VideoReader

    face = load_image(shared_data / "lfw" / PERSON / f"{PERSON}_0001.jpg")  # 250 x 250
    empty = _no_face_picture(shared_data, (250, 250))
    frames = [_shifted(face, 0, 0), _shifted(face, 2, 1), empty, _shifted(face, 4, 2), _shifted(face, 5, 2)]
    clip = tmp_path / "clip.mp4"
    write_test_clip(clip, frames, fps=5, audio=tone(1.0))
    out = tmp_path / "out"
    assert main(_restore(str(clip), "-o", str(out), "--smooth", "1", "--save-comparison")) == 0
    printed = capsys.readouterr().out
    assert ("clip.mp4: video, 5 frames; 4 face(s) restored, 1 frame(s) without a face written unchanged; "
            "audio copied; landmarks smoothed over +-1 frames") in printed
    with VideoReader(clip) as reader:
        source_info, source = reader.info, list(reader)
    with VideoReader(out / "clip.mp4") as reader:
        info, result = reader.info, list(reader)
    assert (info.width, info.height, info.fps, info.has_audio) == (250, 250, source_info.fps, True)
    assert len(result) == 5
    assert [f.pts * info.time_base for f in result] == [f.pts * source_info.time_base for f in source]
    # the empty frame passes through (up to the codec), the others have a restored face
    differences = [float((a.image - b.image).abs().mean()) for a, b in zip(source, result)]
    assert differences[2] < 0.01
    for i in (0, 1, 3, 4):
        assert differences[i] > 1.4 * differences[2]
        centre = (source[i].image - result[i].image)[:, 90:170, 85:165].abs().mean()
        corner = (source[i].image - result[i].image)[:, :40, :40].abs().mean()
        assert centre > 3 * corner
    # the audio track is the source's, packet for packet
    codec, samples = read_audio(out / "clip.mp4")
    _, original = read_audio(clip)
    assert codec == "aac" and np.array_equal(samples, original)
    # the comparison video: input | output
    with VideoReader(out / "cmp" / "clip.mp4") as reader:
        assert (reader.info.width, reader.info.height) == (500, 250)
        sides = list(reader)
    assert len(sides) == 5 and (sides[3].image[:, :, 250:] - result[3].image).abs().mean() < 0.02
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no partial file left


def test_video_without_pyav_names_the_extra(tmp_path, capsys, monkeypatch):
    from honestface import video

    def missing():
        raise HonestFaceError("reading and writing video needs PyAV: pip install 'honestface[video]' (or pip install av)")

    monkeypatch.setattr(video, "require_av", missing)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    # checked before the model is loaded: the weights named here do not exist
    assert main(["restore", str(clip), "-o", str(tmp_path / "out"), "--weights", "missing.safetensors"]) == 1
    assert "pip install 'honestface[video]'" in capsys.readouterr().err


def test_on_no_face_error_skips_the_photo_and_selection_options_reach_the_library(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(_restore(str(mixed_folder / "empty.png"), str(mixed_folder / "uribe.jpg"), "-o", str(out),
                         "--on-no-face", "error", "--center-face", "--max-faces", "1", "--mask", "ellipse",
                         "--mask-feather", "0.1", "--face-order", "left-to-right"))
    captured = capsys.readouterr()
    assert code == 3
    assert "empty.png: skipped, photo (not square (180x120)): no face found (--on-no-face error)" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["uribe.png"]
    assert "restored 1 face(s) in 1 input(s)" in captured.out


def test_first_run_needs_no_weights_and_takes_several_references_after_one_ref(shared_data, tmp_path, capsys):
    """As a first install is used: no --weights (the shipped model, said on stderr), the
    references given as a shell glob expands them (several paths after one --ref)."""
    lfw = shared_data / "lfw" / PERSON
    out = tmp_path / "out"
    code = main(["restore", str(lfw / f"{PERSON}_0001.jpg"), "-o", str(out), "--no-progress",
                 "--ref", str(lfw / f"{PERSON}_0002.jpg"), str(lfw / f"{PERSON}_0003.jpg")])
    captured = capsys.readouterr()
    assert code == 0
    assert "no --weights: using honestface-nano.safetensors" in captured.err
    assert "references --ref: 2 face(s)" in captured.out
    assert (out / f"{PERSON}_0001.png").is_file()
