"""``honestface prepare-dataset``: real photos -> aligned identity folders and a report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from honestface.cli import main as cli_main
from honestface.cli.prepare_dataset import prepare_dataset
from honestface.image_io import list_images, load_image, save_image

torch.set_num_threads(1)


def linked_source(tmp_path: Path, folders: list[Path], name: str = "src") -> Path:
    """A source folder of links to real identity folders (nothing is copied)."""
    source = tmp_path / name
    source.mkdir()
    for folder in folders:
        (source / folder.name).symlink_to(folder, target_is_directory=True)
    return source


def read_report(output: Path) -> list[dict[str, str]]:
    with open(output / "prepare_report.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lfw_people(shared_data) -> list[Path]:
    return [shared_data / "lfw" / name for name in ("Salma_Hayek", "Pervez_Musharraf")]


def test_lfw_photos_become_aligned_identity_folders(tmp_path, lfw_people):
    from honestface.face import load_landmark_backend

    source = linked_source(tmp_path, lfw_people)
    output = tmp_path / "out"
    totals = prepare_dataset(source, output, size=128, max_per_identity=3)
    assert totals["faces"] == 6 and totals["identities"] == 2 and totals["counts"] == {"ok": 6}
    for person in lfw_people:
        files = list_images(output / person.name)
        assert len(files) == 3
        crops = torch.stack([load_image(f) for f in files])
        assert crops.shape == (3, 3, 128, 128)
        # FFHQ alignment puts the eyes at fixed places of the crop
        points = load_landmark_backend("dlib", aligned_fallback=True).landmarks(crops)
        left, right = points[:, 36:42].mean(1) / 128, points[:, 42:48].mean(1) / 128
        assert torch.allclose(left, torch.tensor([0.375, 0.47]).expand_as(left), atol=0.05)
        assert torch.allclose(right, torch.tensor([0.625, 0.47]).expand_as(right), atol=0.05)
    rows = read_report(output)
    assert len(rows) == 6 and all(r["status"] == "ok" and float(r["face_px"]) > 64 for r in rows)
    assert json.loads((output / "prepare_report.json").read_text())["faces"] == 6


def test_aligned_celeba_faces_stay_where_they_are(tmp_path, shared_data):
    """CelebA is already FFHQ-aligned at 256: aligning again gives (almost) the same crop."""
    folder = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[0]
    source = linked_source(tmp_path, [folder])
    output = tmp_path / "out"
    totals = prepare_dataset(source, output, size=256, max_per_identity=2)
    assert totals["faces"] >= 1
    for row in read_report(output):
        if row["status"] != "ok":
            continue
        original = load_image(source / row["file"])[None]
        again = load_image(output / row["output"])[None]
        assert 150 < float(row["face_px"]) < 350
        error = F.l1_loss(again, original).item()
        assert error < 0.08, row


def test_bad_files_small_faces_and_small_identities_are_reported(tmp_path, lfw_people):
    source = tmp_path / "src"
    person = source / "someone"
    person.mkdir(parents=True)
    for photo in list_images(lfw_people[0])[:2]:
        (person / photo.name).symlink_to(photo)
    (person / "broken.jpg").write_bytes(b"not an image")
    save_image(torch.full((3, 96, 96), 0.5), person / "blank.png")
    lonely = source / "lonely"
    lonely.mkdir()
    (lonely / "one.jpg").symlink_to(list_images(lfw_people[1])[0])

    output = tmp_path / "out"
    totals = prepare_dataset(source, output, size=64, min_images=2)
    statuses = {Path(r["file"]).name: r["status"] for r in read_report(output)}
    assert statuses["broken.jpg"] == "unreadable"
    assert statuses["blank.png"] == "noface"
    assert statuses["one.jpg"] == "few_images" and not (output / "lonely").exists()
    assert totals["faces"] == 2 and len(list_images(output / "someone")) == 2

    strict = tmp_path / "strict"
    totals = prepare_dataset(source, strict, size=64, min_face=10_000)
    assert totals["faces"] == 0 and totals["counts"]["small"] == 3


def test_command_line(tmp_path, lfw_people, capsys):
    source = linked_source(tmp_path, lfw_people[:1])
    output = tmp_path / "out"
    code = cli_main(["prepare-dataset", str(source), str(output), "--size", "64", "--max-per-identity", "2",
                     "--format", "jpg"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["faces"] == 2
    assert len(list(output.glob("*/*.jpg"))) == 2
    assert cli_main(["prepare-dataset", str(tmp_path / "missing"), str(output)]) == 1


def test_celebref_hq_layout_and_the_papers_split(tmp_path, capsys):
    """A synthetic CelebRef-HQ tree (one top folder, 105 numbered identity folders of
    already aligned faces): identities 1-100 in natural order go to test, 101-105 to train."""
    from honestface.cli.prepare_dataset import CELEBREF_TEST_IDENTITIES, natural_key

    top = tmp_path / "unpacked" / "CelebRef-HQ"
    generator = torch.Generator().manual_seed(0)
    for identity in range(1, 106):
        for index in range(2):
            image = F.interpolate(torch.rand(1, 3, 4, 4, generator=generator), size=40, mode="bilinear")[0]
            save_image(image, top / str(identity) / f"{identity}_{index}.png")
    output = tmp_path / "prepared"
    assert cli_main(["prepare-dataset", str(tmp_path / "unpacked"), str(output), "--split", "celebref-hq",
                     "--aligned", "--size", "32"]) == 0
    capsys.readouterr()
    test_ids = sorted((p.name for p in (output / "test").iterdir()), key=natural_key)
    train_ids = sorted((p.name for p in (output / "train").iterdir()), key=natural_key)
    assert CELEBREF_TEST_IDENTITIES == 100
    assert test_ids == [str(i) for i in range(1, 101)]  # natural order: "10" after "9", "100" in test
    assert train_ids == [str(i) for i in range(101, 106)]
    split = json.loads((output / "split.json").read_text())
    assert split["test"] == test_ids and split["train"] == train_ids
    faces = list_images(output / "test" / "7")
    assert len(faces) == 2 and load_image(faces[0]).shape == (3, 32, 32)  # resized, not re-aligned
    rows = read_report(output)
    assert {r["split"] for r in rows if r["identity"] == "100"} == {"test"}
    assert {r["split"] for r in rows if r["identity"] == "101"} == {"train"}
    totals = json.loads((output / "prepare_report.json").read_text())
    assert totals["split"] == {"train": {"identities": 5, "faces": 10}, "test": {"identities": 100, "faces": 200}}

    # fewer identities than the test part needs: a clear error, nothing written
    small = tmp_path / "small"
    save_image(torch.rand(3, 8, 8), small / "a" / "x.png")
    assert cli_main(["prepare-dataset", str(small), str(tmp_path / "out_small"), "--split", "celebref-hq",
                     "--aligned"]) == 1
    assert "only 1" in capsys.readouterr().err and not (tmp_path / "out_small").exists()
