"""``honestface mask``: the MFA mask and overlay of a real face."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from honestface.cli import main
from honestface.image_io import load_image, save_image


def test_mask_of_a_real_face_is_bright_at_the_features(shared_data, tmp_path, capsys):
    from honestface.face import load_landmark_backend

    photo = sorted((shared_data / "celeba").glob("*/*.jpg"))[0]
    out = tmp_path / "mask.png"
    assert main(["mask", str(photo), "-o", str(out)]) == 0
    overlay = tmp_path / "mask_overlay.png"
    assert out.is_file() and overlay.is_file()
    mask = np.asarray(Image.open(out).convert("L"), dtype=np.float64) / 255.0
    face = load_image(photo)
    assert mask.shape == tuple(face.shape[-2:]) and mask.max() > 0.99 and mask.min() < 0.01
    points = load_landmark_backend("dlib").landmarks(face[None])[0].round().long()
    at_points = mask[points[:, 1].clamp(0, 255).numpy(), points[:, 0].clamp(0, 255).numpy()]
    assert at_points.mean() > 0.3 and mask[:8, :8].mean() < 0.01
    preview = np.asarray(Image.open(overlay).convert("RGB"), dtype=np.float64) / 255.0
    original = face.permute(1, 2, 0).numpy()
    assert np.abs(preview[:8, :8] - original[:8, :8]).max() < 0.02  # untouched where the mask is 0
    eye = points[36]
    assert preview[eye[1], eye[0], 0] >= original[eye[1], eye[0], 0] - 0.02  # tinted red at the eye


def test_mask_folder_mode_and_no_face(tmp_path, shared_data, capsys):
    photos = sorted((shared_data / "celeba").glob("*/*.jpg"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, photo in enumerate(photos):
        save_image(load_image(photo), folder / f"face{i}.png")
    save_image(torch.full((3, 128, 128), 0.5), folder / "grey.png")
    out = tmp_path / "masks"
    assert main(["mask", str(folder), "-o", str(out)]) == 1  # one image has no face
    assert sorted(p.name for p in out.iterdir()) == ["face0_mask.png", "face0_overlay.png", "face1_mask.png", "face1_overlay.png"]
    assert "grey.png" in capsys.readouterr().err
    assert main(["mask", str(folder / "grey.png"), "-o", str(tmp_path / "g.png")]) == 1
    assert "no face landmarks found" in capsys.readouterr().err
