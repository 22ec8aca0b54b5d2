"""The aligned-crop classifier: its file format, its input, the shipped weights on people it
never saw, and its training program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from honestface.errors import CheckpointError, ImageError
from honestface.face.crop_classifier import (
    AlignedCropClassifier,
    AlignedCropClassifierConfig,
    crop_thumbnails,
    load_crop_classifier,
    save_crop_classifier,
    shipped_crop_classifier,
)
from honestface.face.input_kind import CROP_PROBABILITY
from honestface.image_io import load_image

REPO = Path(__file__).resolve().parents[1]


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = AlignedCropClassifier(AlignedCropClassifierConfig(input_size=16, channels=(4, 8), hidden=8)).eval()
    path = save_crop_classifier(tmp_path / "c.safetensors", model, {"kept_apart": {"crops": 3}})
    loaded = load_crop_classifier(path)
    assert loaded.model.config == model.config and loaded.record == {"kept_apart": {"crops": 3}}
    images = torch.rand(5, 3, 40, 40)
    torch.testing.assert_close(loaded.probability(images), model.probability(images))
    assert loaded.probability(images[0]).shape == ()


def test_colour_classifier_round_trip_and_older_grey_files(tmp_path):
    """A colour classifier sees 3-channel thumbnails (a grey input is repeated); a file whose
    stored config predates the colour field loads as the grey classifier it is."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = AlignedCropClassifier(AlignedCropClassifierConfig(16, (4, 8), 8, color=True)).eval()
    assert model.features[0].in_channels == 3
    path = save_crop_classifier(tmp_path / "colour.safetensors", model)
    loaded = load_crop_classifier(path)
    assert loaded.model.config.color
    images = torch.rand(2, 3, 40, 40)
    torch.testing.assert_close(loaded.probability(images), model.probability(images))
    grey = torch.rand(2, 1, 40, 40)
    torch.testing.assert_close(loaded.probability(grey), model.probability(grey.expand(-1, 3, -1, -1)))
    thumbs = crop_thumbnails(images, 16, color=True)
    assert thumbs.shape == (2, 3, 16, 16)
    torch.testing.assert_close(thumbs.flatten(1).mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    grey_model = AlignedCropClassifier(AlignedCropClassifierConfig(16, (4, 8), 8))
    path = save_crop_classifier(tmp_path / "grey.safetensors", grey_model)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    metadata["config"] = json.dumps({"input_size": 16, "channels": [4, 8], "hidden": 8})
    save_file(dict(grey_model.state_dict()), str(tmp_path / "older.safetensors"), metadata)
    assert not load_crop_classifier(tmp_path / "older.safetensors").model.config.color


def test_training_augmentation_keeps_range_and_is_seeded():
    """The training program's photometric changes (exposure, gamma, a covering band) stay
    in [0, 1], change some images and leave others, and repeat with the same seed."""
    sys.path.insert(0, str(REPO / "training"))
    try:
        from train_crop_classifier import photometric
    finally:
        sys.path.remove(str(REPO / "training"))
    images = torch.rand(64, 3, 32, 32)
    first = photometric(images, torch.Generator().manual_seed(1))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    changed = (first != images).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64
    torch.testing.assert_close(photometric(images, torch.Generator().manual_seed(1)), first)


def test_missing_and_foreign_files_are_named(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match=r"aligned-crop-classifier\.safetensors belongs in"):
        load_crop_classifier(tmp_path / "aligned-crop-classifier.safetensors")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_crop_classifier(tmp_path / "text.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"), {"format": "something-else"})
    with pytest.raises(CheckpointError, match="not an aligned-crop classifier"):
        load_crop_classifier(tmp_path / "other.safetensors")
    model = AlignedCropClassifier(AlignedCropClassifierConfig(input_size=16, channels=(4, 8), hidden=8))
    path = save_crop_classifier(tmp_path / "c.safetensors", model)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    metadata["config"] = json.dumps({"input_size": 16, "channels": [4, 16], "hidden": 8})
    save_file(dict(model.state_dict()), str(tmp_path / "mismatch.safetensors"), metadata)
    with pytest.raises(CheckpointError, match="do not fit the stored config"):
        load_crop_classifier(tmp_path / "mismatch.safetensors")
    metadata["config"] = json.dumps({"input_size": 18, "channels": [4, 8], "hidden": 8})  # two halvings need 4k
    save_file(dict(model.state_dict()), str(tmp_path / "odd.safetensors"), metadata)
    with pytest.raises(CheckpointError, match="stored config is not a crop classifier's.*not divisible"):
        load_crop_classifier(tmp_path / "odd.safetensors")


def test_thumbnails_ignore_exposure_contrast_and_bit_depth():
    y, x = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64), indexing="ij")
    pattern = 0.5 + 0.3 * torch.sin(x) * torch.cos(y)  # a spread far above the floor
    images = torch.stack([pattern.expand(3, 64, 64), pattern.T.expand(3, 64, 64)])
    thumbs = crop_thumbnails(images, 16)
    assert thumbs.shape == (2, 1, 16, 16)
    torch.testing.assert_close(thumbs.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    # brighter and lower in contrast: the same thumbnail up to the small floor on the spread
    torch.testing.assert_close(crop_thumbnails(images * 0.8 + 0.1, 16), thumbs, atol=0.03, rtol=0.03)
    eight_bit = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(crop_thumbnails(eight_bit, 16), crop_thumbnails(eight_bit.float() / 255, 16))
    assert crop_thumbnails(torch.full((1, 3, 32, 32), 0.7), 16).abs().max() < 1e-5  # flat stays flat
    with pytest.raises(ImageError, match="square"):
        crop_thumbnails(torch.rand(1, 3, 32, 48), 16)


def _heavy(face: torch.Tensor, seed: int) -> torch.Tensor:
    """(3, S, S) -> shrunk to S / 8 (area), noisy, enlarged back (bicubic): about 16 px of
    face left at 128 px, as the benchmark's heavy level."""
    side = face.shape[-1]
    small = F.interpolate(face[None], size=(side // 8, side // 8), mode="area")
    small = small + torch.randn(small.shape, generator=torch.Generator().manual_seed(seed)) * 8 / 255
    return F.interpolate(small.clamp(0, 1), size=(side, side), mode="bicubic").clamp(0, 1)[0]


def test_shipped_classifier_on_people_it_never_saw(shared_data):
    """CelebA identities and LFW people of the crop benchmark's tune and report splits (the
    first 80 of each; training leaves out at least these): heavily degraded aligned crops at
    128 and 256 px are taken, their whole photos (clean and degraded), photo corners and
    flat squares are not."""
    classifier = shipped_crop_classifier()
    assert classifier.record["bank"]["celeba_identities_skipped"] >= 80
    identities = sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[1:80:8]
    people = sorted(p for p in (shared_data / "lfw").iterdir() if p.is_dir())[1:80:8]
    crops = []
    for index, folder in enumerate(identities):
        face = load_image(sorted(folder.glob("*.jpg"))[0])
        side = (128, 256)[index % 2]
        crops.append(_heavy(F.interpolate(face[None], size=(side, side), mode="area")[0], index))
    others = []
    for index, folder in enumerate(people):
        photo = load_image(sorted(folder.glob("*.jpg"))[0])
        others += [photo, _heavy(photo[:, :248, :248], index), photo[:, :100, :100], photo[:, 150:, 150:]]
    others.append(torch.full((3, 128, 128), 0.4))
    crop_scores = [float(classifier.probability(c)) for c in crops]
    other_scores = [float(classifier.probability(o)) for o in others]
    print("crops", [round(s, 3) for s in crop_scores], "highest other", round(max(other_scores), 3))
    assert sum(s >= CROP_PROBABILITY for s in crop_scores) >= len(crops) - 1, crop_scores
    assert all(s < CROP_PROBABILITY for s in other_scores), other_scores


def test_training_program_writes_a_loadable_classifier(tmp_path, shared_data):
    """One short epoch on three identities and three people (linked from the real data):
    the file loads and records what it was trained on and the kept-apart results."""
    data = tmp_path / "data"
    for kind, count in (("celeba", 3), ("lfw", 3)):
        (data / kind).mkdir(parents=True)
        for folder in sorted(p for p in (shared_data / kind).iterdir() if p.is_dir())[200:200 + count]:
            (data / kind / folder.name).symlink_to(folder)
    output = tmp_path / "run"
    command = [sys.executable, str(REPO / "training" / "train_crop_classifier.py"), "--data", str(data),
               "--output", str(output), "--skip-people", "0", "--epochs", "1", "--photos-per-person", "1",
               "--val-fraction", "0.3", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = load_crop_classifier(output / "aligned-crop-classifier.safetensors")
    assert loaded.record["training"]["epochs"] == 1 and loaded.record["bank"]["lfw_people_skipped"] == 0
    kept = loaded.record["kept_apart"]
    assert kept["crops"] + kept["others"] > 0 and set(kept["by_threshold"]) == {"0.5", "0.8", "0.9", "0.95",
                                                                                   "0.98", "0.99"}
    assert "kept apart" in (output / "train.log").read_text()
    # the bank is cached: a second run reads it instead of detecting faces again
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "LFW:" not in again.stdout and "CelebA:" not in again.stdout
