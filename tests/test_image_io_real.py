"""Reading images as people have them: EXIF orientation in every mode, the minimum size,
and an EXIF-rotated phone-style photo restored upright."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from honestface.errors import ImageError, ImageTooSmallError
from honestface.image_io import MIN_IMAGE_SIDE, check_image_size, load_image

from nano_helpers import nano_pipeline

torch.set_num_threads(1)

#: EXIF orientation 6: the stored pixels are the upright picture turned 90 degrees
#: counter-clockwise; a viewer turns them clockwise.
ORIENTATION_TAG, ROTATE_CW = 0x0112, 6


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif


def _write_rotated(upright: Image.Image, path, **save) -> None:
    """Store ``upright`` as a camera does: pixels turned, an orientation tag to undo it."""
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=_exif(ROTATE_CW), **save)


def _lfw_photo(shared_data, person_index=0):
    people = sorted(p for p in (shared_data / "lfw").iterdir() if p.is_dir())
    return sorted(people[person_index].glob("*.jpg"))[0]


@pytest.mark.parametrize("mode, suffix", [("RGB", ".jpg"), ("L", ".png"), ("P", ".png"), ("RGBA", ".png"),
                                          ("CMYK", ".jpg"), ("I;16", ".png"), ("LA", ".png")])
def test_exif_orientation_applies_in_every_mode(shared_data, tmp_path, mode, suffix):
    # A non-square crop of a real photo, so a missed rotation also shows in the shape.
    photo = Image.open(_lfw_photo(shared_data)).convert("RGB").crop((20, 40, 230, 190))  # 210 x 150
    if mode == "I;16":
        upright = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 256 + 77)  # off the 8-bit steps
    elif mode == "P":
        upright = photo.quantize(64)
    else:
        upright = photo.convert(mode)
    plain, rotated = tmp_path / f"plain{suffix}", tmp_path / f"rotated{suffix}"
    save = {"quality": 98, "subsampling": 0} if suffix == ".jpg" else {}
    upright.save(plain, **save)
    _write_rotated(upright, rotated, **save)
    expected, loaded = load_image(plain), load_image(rotated)
    assert tuple(loaded.shape) == (3, 150, 210)
    tolerance = 0.03 if suffix == ".jpg" else 1e-6  # JPEG re-encodes the turned blocks
    assert (loaded - expected).abs().mean() < tolerance
    if mode == "I;16":  # 16-bit precision survives: values between the 8-bit steps
        assert not torch.allclose(loaded * 255, (loaded * 255).round(), atol=1e-3)


def test_minimum_image_size_is_stated_and_checked():
    assert MIN_IMAGE_SIDE == 32
    assert check_image_size(torch.rand(3, 32, 500)) is not None
    with pytest.raises(ImageTooSmallError, match="at least 32 px") as raised:
        check_image_size(torch.rand(3, 1, 1), "tiny.png")
    assert "tiny.png" in str(raised.value) and isinstance(raised.value, ImageError)
    with pytest.raises(ImageTooSmallError):
        check_image_size(torch.rand(1, 3, 31, 200))


@pytest.mark.slow
def test_exif_rotated_photo_restores_upright(shared_data, tmp_path, detector):
    """A phone-style JPEG stored sideways with orientation 6 restores like the upright file."""
    from honestface.whole_photo import restore_whole_photos

    upright = Image.open(_lfw_photo(shared_data)).convert("RGB").crop((0, 20, 250, 230))  # 250 x 210
    plain, rotated = tmp_path / "upright.jpg", tmp_path / "phone.jpg"
    upright.save(plain, quality=98, subsampling=0)
    _write_rotated(upright, rotated, quality=98, subsampling=0)
    pipeline = nano_pipeline(identity=False)
    sideways = torch.from_numpy(np.asarray(Image.open(rotated).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    reference, result, ignored = restore_whole_photos(
        pipeline, [load_image(plain), load_image(rotated), sideways], detector)
    assert reference.status == result.status == "restored" and len(result.faces) == 1
    assert result.image.shape == reference.image.shape == (3, 210, 250)
    assert (result.image - reference.image).abs().mean() < 0.02
    # Without the orientation the same pixels lie on their side: the face is not upright
    # there and the detector finds no face (or a different result of another shape).
    assert ignored.image.shape == (3, 250, 210)
