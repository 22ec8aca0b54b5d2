"""Nothing lost, bounded memory: the pixel limit of image reading, and whole photos kept
8-bit (faces cut and pasted in their regions) giving what the float path gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface.errors import ImageError, ImageTooLargeError
from honestface.face import align_face, detect_photo_faces
from honestface.face.align import paste_faces
from honestface.face.photo import paste_mask
from honestface.image_io import load_image, save_image

torch.set_num_threads(1)

PHOTO = ("Alvaro_Uribe", "Alvaro_Uribe_0001.jpg")  # LFW, 250 x 250


@pytest.fixture(scope="module")
def photo_path(shared_data):
    return shared_data / "lfw" / PHOTO[0] / PHOTO[1]


def test_pixel_limit_is_checked_before_decoding(photo_path):
    with pytest.raises(ImageTooLargeError, match=r"250x250 = 0.1 megapixels, above the limit") as caught:
        load_image(photo_path, max_pixels=250 * 250 - 1)
    assert caught.value.pixels == 62500 and caught.value.limit == 62499
    assert load_image(photo_path, max_pixels=250 * 250).shape == (3, 250, 250)


def test_eight_bit_reading_is_the_float_reading(photo_path, tmp_path):
    eight, real = load_image(photo_path, dtype=torch.uint8), load_image(photo_path)
    assert eight.dtype == torch.uint8 and eight.is_contiguous()
    assert torch.equal(eight.float() / 255.0, real)
    save_image(eight, tmp_path / "copy.png")  # uint8 written as it is
    assert torch.equal(load_image(tmp_path / "copy.png", dtype=torch.uint8), eight)
    with pytest.raises(ImageError, match="float32 or uint8"):
        load_image(photo_path, dtype=torch.float16)


def test_truncated_jpeg_is_an_image_error(photo_path, tmp_path):
    data = photo_path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("size", [128, 512])
def test_eight_bit_photo_aligns_and_pastes_as_float_does(photo_path, detector, size):
    """Region-wise alignment and paste-back (uint8 photo) against the same steps on the
    float photo: crops within one 8-bit level, pasted photos within one level, identical
    outside the face's region."""
    eight = load_image(photo_path, dtype=torch.uint8)
    real = eight.float() / 255.0
    faces = detect_photo_faces(eight, detector)
    assert faces and np.allclose(faces[0].landmarks, detect_photo_faces(real, detector)[0].landmarks)
    points = torch.from_numpy(faces[0].landmarks)
    crop8, affine8 = align_face(eight, points, size)
    crop, affine = align_face(real, points, size)
    assert torch.equal(affine8, affine)
    assert (crop8 - crop).abs().max() < 1e-5
    # the old whole-photo warp (the crop read from the float photo, no region) agrees too
    from honestface.face.align import warp

    whole = warp(real[None], affine[None], (size, size), "reflection")[0]
    assert (whole - crop).abs().max() < 1e-4
    restored = (1.0 - crop).clamp(0, 1)  # any change, so the paste shows
    mask = paste_mask(None, size)
    pasted8, alpha8 = paste_faces(eight, restored[None], affine[None], mask)
    pasted, alpha = paste_faces(real, restored[None], affine[None], mask)
    assert pasted8.dtype == torch.uint8 and pasted.dtype == torch.float32
    assert torch.allclose(alpha8, alpha, atol=1e-6)
    assert ((pasted8.float() - pasted * 255).abs() <= 0.5 + 1e-3).all()
    untouched = alpha == 0
    assert torch.equal(pasted8[:, untouched], eight[:, untouched]) and 0.1 < (~untouched).float().mean() < 0.9
