"""The node pack's ComfyUI-facing helpers, imported with the real ComfyUI (no fakes).

Needs the ComfyUI that ``scripts/comfyui_setup.sh`` installs (skips with the reason
otherwise); the end-to-end tests in ``tests/e2e`` run the same nodes inside a server.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("HONESTFACE_COMFYUI", REPO_ROOT / ".comfyui" / "ComfyUI"))


@pytest.fixture(scope="module")
def pack():
    """``nodes/`` imported as ``honestface_nodes`` (ComfyUI has its own top-level ``nodes``)."""
    if not (COMFYUI / "folder_paths.py").is_file():
        pytest.skip(f"ComfyUI not installed at {COMFYUI} (bash scripts/comfyui_setup.sh)")
    if str(COMFYUI) not in sys.path:
        sys.path.append(str(COMFYUI))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()  # ComfyUI's device probe fails without a GPU unless told
    spec = importlib.util.spec_from_file_location("honestface_nodes", REPO_ROOT / "nodes" / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT / "nodes")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["honestface_nodes"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def io(pack):
    return sys.modules["honestface_nodes.comfy_io"]


def test_root_init_imports_without_comfyui():
    """The repository's ``__init__.py`` registers nothing (and does not fail) outside ComfyUI."""
    code = ("import importlib.util, sys; sys.modules.pop('folder_paths', None); "
            f"spec = importlib.util.spec_from_file_location('pack_root', r'{REPO_ROOT / '__init__.py'}'); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(len(m.NODE_CLASS_MAPPINGS))")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_image_layout_round_trip(io):
    comfy = torch.rand(2, 5, 7, 3)
    library = io.comfy_to_images(comfy)
    assert library.shape == (2, 3, 5, 7)
    assert torch.equal(library[1, 2], comfy[1, :, :, 2])
    assert torch.equal(io.images_to_comfy(library), comfy)


def test_gray_and_rgba_conversions(io):
    gray = torch.rand(1, 4, 4, 1)
    assert torch.equal(io.comfy_to_images(gray), gray.permute(0, 3, 1, 2).expand(-1, 3, -1, -1))
    rgba = torch.rand(1, 4, 4, 4)
    expected = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # composited on white
    torch.testing.assert_close(io.comfy_to_images(rgba), expected.permute(0, 3, 1, 2))


def test_bad_images_raise_image_errors(io):
    from honestface.errors import ImageError

    with pytest.raises(ImageError, match="batch, height, width"):
        io.comfy_to_images(torch.rand(4, 4, 5))
    with pytest.raises(ImageError):
        io.comfy_to_images(torch.full((1, 4, 4, 3), float("nan")))
    with pytest.raises(ImageError, match="MASK"):
        io.comfy_to_masks(torch.rand(1, 1, 4, 4))


def test_mask_layout_round_trip(io):
    mask = torch.rand(3, 6, 5)
    library = io.comfy_to_masks(mask)
    assert library.shape == (3, 1, 6, 5)
    assert torch.equal(io.masks_to_comfy(library), mask)
    assert io.comfy_to_masks(torch.rand(6, 5)).shape == (1, 1, 6, 5)


def test_model_folders_are_added_not_replaced(pack, tmp_path):
    import folder_paths

    folders = sys.modules["honestface_nodes.model_folders"]
    user_folder = str(tmp_path / "my-honestface")
    folder_paths.folder_names_and_paths["honestface"] = ([user_folder], set())  # as extra_model_paths.yaml does
    folders.register_model_folders()
    folders.register_model_folders()  # idempotent
    paths, extensions = folder_paths.folder_names_and_paths["honestface"]
    assert paths == [user_folder, os.path.join(folder_paths.models_dir, "honestface")]
    assert extensions == set()  # the user's "every file" stays
    assert os.path.join(folder_paths.models_dir, "insightface") in folder_paths.get_folder_paths("insightface")


def test_models_root_for_finds_the_root_of_an_extra_folder(pack, tmp_path):
    import folder_paths

    from honestface.errors import MissingModelFileError

    folders = sys.modules["honestface_nodes.model_folders"]
    pack_dir = tmp_path / "insightface" / "models" / "buffalo_l"
    pack_dir.mkdir(parents=True)
    (pack_dir / "w600k_r50.onnx").write_bytes(b"")
    folder_paths.add_model_folder_path("insightface", str(tmp_path / "insightface"))
    assert folders.models_root_for("insightface", "buffalo_l/w600k_r50.onnx") == tmp_path
    with pytest.raises(MissingModelFileError, match="antelopev2"):
        folders.models_root_for("insightface", "antelopev2/glintr100.onnx")


def test_face_indices_parsing(pack):
    from honestface.errors import HonestFaceError

    restore = sys.modules["honestface_nodes.restore_nodes"]
    assert restore.parse_indices("all") is None and restore.parse_indices(" ") is None
    assert restore.parse_indices("0, 2;3") == [0, 2, 3]
    for bad in ("first", "-1"):
        with pytest.raises(HonestFaceError):
            restore.parse_indices(bad)


@pytest.fixture
def temp_folder(pack, tmp_path):
    """ComfyUI's temp folder (where previews go) in the test's own folder."""
    import folder_paths

    previous = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    yield tmp_path / "temp"
    folder_paths.set_temp_directory(previous)


def preview_pixels(temp_folder: Path, ui: dict) -> list[torch.Tensor]:
    """The pictures a node shows (``ui.images``), read back as (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    pictures = []
    for entry in ui["images"]:
        assert entry["type"] == "temp"
        picture = Image.open(temp_folder / entry["subfolder"] / entry["filename"]).convert("RGB")
        pictures.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0))
    return pictures


def test_mfa_mask_node_on_a_real_face(pack, io, shared_data, temp_folder):
    from honestface.image_io import load_image

    face = load_image(sorted((shared_data / "real_lq" / "reference_sets" / "obama" / "refs").iterdir())[0])
    face = torch.nn.functional.interpolate(face[None], size=(128, 128), mode="bilinear", antialias=True)
    (analysis,) = pack.HonestFaceAnalysisLoader().load("dlib", "dlib", "default", "dlib-hog", "cpu")
    output = pack.HonestFaceMFAMask().mask(analysis, io.images_to_comfy(face), 10.0, 0.6)
    mask, overlay = output["result"]
    # The node shows the overlay it returns (PNG: 8 bits).
    [shown] = preview_pixels(temp_folder, output["ui"])
    torch.testing.assert_close(shown, overlay[0].cpu(), atol=0.5 / 255 + 1e-6, rtol=0)
    assert mask.shape == (1, 128, 128) and overlay.shape == (1, 128, 128, 3)
    assert float(mask.min()) == pytest.approx(0.0, abs=1e-4) and float(mask.max()) == pytest.approx(1.0, abs=1e-3)
    # Overlay: unchanged where the mask is 0, tinted where it is high.
    untouched = mask[0] < 1e-3
    torch.testing.assert_close(overlay[0][untouched], io.images_to_comfy(face)[0][untouched], atol=1e-3, rtol=0)
    assert (overlay[0] - io.images_to_comfy(face)[0]).abs().sum(-1)[mask[0] > 0.9].min() > 0.01


def test_ald_score_node_shows_the_landmarks(pack, io, shared_data, temp_folder):
    from honestface.image_io import load_images

    refs = sorted((shared_data / "real_lq" / "reference_sets" / "obama" / "refs").iterdir())
    faces = load_images(refs[:2], size=128)
    (analysis,) = pack.HonestFaceAnalysisLoader().load("dlib", "dlib", "default", "dlib-hog", "cpu")
    output = pack.HonestFaceALDScore().score(analysis, io.images_to_comfy(faces), io.images_to_comfy(faces[:1]))
    ald_e, ald_m, l2, degrees, overlay, report = output["result"]
    assert ald_e > 0 and l2 > 0 and len(report.splitlines()) == 2
    shown = preview_pixels(temp_folder, output["ui"])
    assert len(shown) == 2
    for i, (picture, returned, face) in enumerate(zip(shown, overlay.cpu(), faces)):
        torch.testing.assert_close(picture, returned, atol=0.5 / 255 + 1e-6, rtol=0)
        changed = (returned - face.permute(1, 2, 0)).abs().sum(-1) > 0.1
        # 68 restored points in green over the reference's in red; face 0 is its own reference,
        # so its green points hide the red ones.
        green = changed & (returned[..., 1] > 0.6) & (returned[..., 0] < 0.4)
        red = changed & (returned[..., 0] > 0.6) & (returned[..., 1] < 0.4)
        assert green.sum() >= 68, int(green.sum())
        assert (red.sum() == 0) if i == 0 else (red.sum() >= 20), int(red.sum())


@pytest.mark.slow
def test_model_loader_and_restore_through_comfyui_model_management(pack, tmp_path):
    """Tiny models through the loader node: ComfyUI's memory manager puts the weights on its
    device (float16 on a GPU with dtype auto), results come back as float32 IMAGEs on the
    intermediate device, runs repeat exactly, and the unload node empties everything."""
    import folder_paths

    import comfy.model_management as model_management
    from honestface.testing.make_tiny_models import make_tiny_models

    pack.HonestFaceUnloadModels().unload()  # start from an empty cache (other tests load backends)
    make_tiny_models(tmp_path)
    for kind in ("checkpoints", "diffusers", "honestface"):
        folder_paths.add_model_folder_path(kind, str(tmp_path / kind), is_default=True)
    lq = torch.rand(2, 96, 80, 3)
    for weights in ("osdface-tiny", "honestface-tiny.safetensors"):
        (model,) = pack.HonestFaceModelLoader().load("tiny-sd21-base.safetensors", weights, "auto", "auto", "auto")
        (again,) = pack.HonestFaceModelLoader().load("tiny-sd21-base.safetensors", weights, "auto", "auto", "auto")
        assert again is model  # cached between runs
        (restored,) = pack.HonestFaceRestoreAligned().restore(model, lq, "model default")
        (repeat,) = pack.HonestFaceRestoreAligned().restore(model, lq, "model default")
        weight = next(model.pipeline.model.parameters())
        assert weight.device == model_management.get_torch_device()
        assert weight.dtype == (torch.float16 if weight.device.type == "cuda" else torch.float32)
        assert restored.shape == lq.shape and restored.dtype == torch.float32
        assert restored.device == model_management.intermediate_device()
        assert 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0
        assert torch.equal(restored, repeat)
        assert (restored - lq).abs().mean() > 1e-3
    # The same SD weights as a diffusers folder restore the same faces.
    outputs = {}
    for base in ("tiny-sd21-base.safetensors", "tiny-sd21-base"):
        (model,) = pack.HonestFaceModelLoader().load(base, "osdface-tiny", "auto", "auto", "auto")
        (outputs[base],) = pack.HonestFaceRestoreAligned().restore(model, lq, "model default")
    tolerance = 1e-5 if weight.device.type == "cpu" else 1e-2
    torch.testing.assert_close(outputs["tiny-sd21-base"], outputs["tiny-sd21-base.safetensors"],
                               atol=tolerance, rtol=0)
    result = pack.HonestFaceUnloadModels().unload()
    assert result["result"] == (3,) and result["ui"]["text"] == ["released 3 HonestFace model(s)"]
    assert not model_management.current_loaded_models
    (reloaded,) = pack.HonestFaceModelLoader().load("tiny-sd21-base.safetensors", "osdface-tiny", "auto", "auto", "auto")
    assert reloaded is not model


def test_model_loader_offers_the_built_in_nano_model(pack, tmp_path):
    """honestface-nano is listed without any models folder, loads with base model "none",
    and a checkpoint that needs SD 2.1-base says so when "none" is chosen."""
    import folder_paths

    from honestface.errors import ConfigError
    from honestface.paths import NANO_WEIGHTS
    from honestface.testing.make_tiny_models import make_tiny_models

    required = pack.HonestFaceModelLoader.INPUT_TYPES()["required"]
    assert NANO_WEIGHTS in required["weights"][0] and "none" in required["base_model"][0]
    (model,) = pack.HonestFaceModelLoader().load("none", NANO_WEIGHTS, "auto", "auto", "auto")
    assert "on none" not in model.description and NANO_WEIGHTS in model.description
    lq = torch.rand(1, 200, 200, 3)
    (restored,) = pack.HonestFaceRestoreAligned().restore(model, lq, "model default")
    assert restored.shape == lq.shape and torch.isfinite(restored).all()

    make_tiny_models(tmp_path)
    folder_paths.add_model_folder_path("honestface", str(tmp_path / "honestface"), is_default=True)
    with pytest.raises(ConfigError, match="SD 2.1-base"):
        pack.HonestFaceModelLoader().load("none", "honestface-tiny.safetensors", "auto", "auto", "auto")
    pack.HonestFaceUnloadModels().unload()


@pytest.mark.parametrize("landmarks, identity, detector, missing, folder", [
    ("fan", "dlib", "dlib-hog", "", "face_alignment"),
    ("dlib", "arcface-onnx", "dlib-hog", "w600k_r50.onnx", os.path.join("insightface", "models")),
    ("dlib", "adaface", "dlib-hog", "", "facerestore_models"),
    ("dlib", "dlib", "insightface", "det_10g.onnx", os.path.join("insightface", "models")),
])
def test_analysis_loader_names_the_missing_file_and_its_folder(pack, landmarks, identity, detector, missing, folder):
    from honestface.errors import MissingModelFileError

    with pytest.raises(MissingModelFileError) as caught:
        pack.HonestFaceAnalysisLoader().load(landmarks, identity, "default", detector, "cpu")
    message = caught.value.args[0]
    assert missing in message and folder in message, message


def test_analysis_loader_offers_every_library_backend_with_its_models_folder(pack):
    """The loader's choices are the library's backends; each has a models folder to look in."""
    from honestface.face import IDENTITY_BACKENDS, LANDMARK_BACKENDS
    from honestface.paths import MODEL_FOLDERS

    analysis = sys.modules["honestface_nodes.analysis_nodes"]
    inputs = pack.HonestFaceAnalysisLoader.INPUT_TYPES()["required"]
    assert tuple(inputs["landmark_backend"][0]) == LANDMARK_BACKENDS
    assert tuple(inputs["identity_backend"][0]) == IDENTITY_BACKENDS
    assert set(analysis._LANDMARK_KIND) == set(LANDMARK_BACKENDS)
    assert set(analysis._IDENTITY_KIND) == set(IDENTITY_BACKENDS)
    assert set(analysis._LANDMARK_KIND.values()) | set(analysis._IDENTITY_KIND.values()) <= set(MODEL_FOLDERS)
