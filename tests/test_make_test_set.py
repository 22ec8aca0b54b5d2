"""``prepare-dataset --make-test``: a fixed test set, identical to the byte on every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honestface.cli import main
from honestface.evaluation.testset import image_seed, make_test_set, read_manifest, verify_manifest
from honestface.image_io import load_image, save_image


def _link_identities(root: Path, identities: list[Path], photos: int = 3) -> Path:
    for folder in identities:
        (root / folder.name).mkdir(parents=True)
        for photo in sorted(folder.glob("*.jpg"))[:photos]:
            (root / folder.name / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="module")
def celeba_identities(shared_data) -> list[Path]:
    return sorted((p for p in (shared_data / "celeba").iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3),
                  key=lambda p: int(p.name))[:4]


@pytest.fixture(scope="module")
def celebref_like(celeba_identities, tmp_path_factory) -> Path:
    """Four real identities (3 photos each, linked) inside one top folder, like CelebRef-HQ's archive."""
    source = tmp_path_factory.mktemp("source")
    _link_identities(source / "CelebRef-HQ", celeba_identities)
    return source


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(celebref_like, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("made") / "test"
    assert main(["prepare-dataset", str(celebref_like), str(out), "--make-test", "--test-identities", "3",
                 "--size", "64"]) == 0
    return out


def test_make_test_is_identical_to_the_byte_and_its_manifest_verifies(written, celebref_like, celeba_identities,
                                                                      tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # another process layout must not change a byte
    try:
        again = tmp_path / "again"
        assert main(["prepare-dataset", str(celebref_like), str(again), "--make-test", "--test-identities", "3",
                     "--size", "64"]) == 0
    finally:
        torch.set_num_threads(threads)
    first, second = _tree(written), _tree(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []

    manifest = read_manifest(written)
    assert set(manifest["files"]) == set(first) - {"manifest.json"}  # every written file is hashed
    assert verify_manifest(written).ok
    # the paper's selection: the first identities in natural order; per identity one GT and the
    # other photos as its references
    chosen = [p.name for p in celeba_identities[:3]]
    assert manifest["source"]["identities"] == chosen
    assert [face["identity"] for face in manifest["faces"]] == chosen
    for face, identity in zip(manifest["faces"], celeba_identities):
        photos = sorted(identity.glob("*.jpg"))[:3]
        assert face["name"] == f"{identity.name}_{photos[0].stem}"
        assert face["references"] == [f"refs/{face['name']}/{p.stem}.png" for p in photos[1:]]
        assert face["seed"] == image_seed(0, f"{identity.name}/{photos[0].name}")
        lq, gt = load_image(written / face["lq"]), load_image(written / face["gt"])
        assert lq.shape == gt.shape == (3, 64, 64) and not torch.equal(lq, gt)
    assert manifest["parameters"]["degradation"]["gray_probability"] == 0.0
    assert {"torch", "numpy", "pillow", "zlib", "honestface"} <= set(manifest["versions"])


def test_an_images_degradation_does_not_depend_on_the_other_images(celeba_identities, tmp_path):
    everyone = _link_identities(tmp_path / "all" / "Reface-Test", celeba_identities)
    last_two = _link_identities(tmp_path / "some" / "Reface-Test", celeba_identities[2:])
    make_test_set(everyone, tmp_path / "out_all", test_set="reface-test", size=48)
    manifest = make_test_set(last_two, tmp_path / "out_some", test_set="reface-test", size=48)
    assert len(manifest["faces"]) == 2
    for face in manifest["faces"]:
        for key in ("lq", "gt"):
            assert (tmp_path / "out_all" / face[key]).read_bytes() == (tmp_path / "out_some" / face[key]).read_bytes()
    # another seed, another LQ; the same GT
    other = make_test_set(last_two, tmp_path / "out_seed", test_set="reface-test", size=48, seed=1)
    face = other["faces"][0]
    assert (tmp_path / "out_seed" / face["gt"]).read_bytes() == (tmp_path / "out_some" / face["gt"]).read_bytes()
    assert (tmp_path / "out_seed" / face["lq"]).read_bytes() != (tmp_path / "out_some" / face["lq"]).read_bytes()


def test_make_test_refuses_a_non_empty_folder_and_too_few_identities(celebref_like, written, capsys):
    assert main(["prepare-dataset", str(celebref_like), str(written), "--make-test", "--test-identities", "3"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["prepare-dataset", str(celebref_like), str(written.parent / "x"), "--make-test"]) == 1
    assert "first 100 identities" in capsys.readouterr().err


def test_evaluate_reads_the_manifest_and_reports_a_tampered_file(written, tmp_path, capsys):
    manifest = read_manifest(written)
    restored = tmp_path / "restored"
    for face in manifest["faces"]:  # "restorations": the LQ themselves
        save_image(load_image(written / face["lq"]), restored / f"{face['name']}.png")
    report = tmp_path / "report.json"
    assert main(["evaluate", "--restored", str(restored), "--test-set", str(written), "--metrics", "psnr,ssim",
                 "--json", str(report), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Protocol: honestface" in printed and "Test set: celebref-hq (3 faces" in printed
    data = json.loads(report.read_text())
    assert data["num_pairs"] == 3 and data["settings"]["test_set"]["name"] == "celebref-hq"
    assert data["protocol"]["name"] == "honestface"
    assert {Path(row["ground_truth"]).relative_to(written).as_posix() for row in data["images"]} == \
        {face["gt"] for face in manifest["faces"]}

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for relative, content in _tree(written).items():
        (tampered / relative).parent.mkdir(parents=True, exist_ok=True)
        (tampered / relative).write_bytes(content)
    gt = manifest["faces"][1]["gt"]
    image = load_image(tampered / gt)
    image[:, 0, 0] = 1.0 - image[:, 0, 0]  # one pixel
    save_image(image, tampered / gt)
    reference = manifest["faces"][0]["references"][0]
    (tampered / reference).unlink()
    assert not verify_manifest(tampered).ok
    assert main(["evaluate", "--restored", str(restored), "--test-set", str(tampered), "--metrics", "psnr",
                 "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert f"modified (1): {gt}" in error and f"missing (1): {reference}" in error
