"""The node pack's ComfyUI-facing helpers, imported with the real ComfyUI (no fakes).

Needs the ComfyUI that ``scripts/comfyui_setup.sh`` installs (skips with the reason
otherwise); the end-to-end tests in ``tests/e2e`` run the same nodes inside a server.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
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
    """The repository's ``__init__.py`` registers nothing (and does not fail) outside ComfyUI,
    and never defines V1 mappings (ComfyUI's loader would take them instead of the V3 entry point)."""
    code = ("import importlib.util, sys; sys.modules.pop('folder_paths', None); "
            f"spec = importlib.util.spec_from_file_location('pack_root', r'{REPO_ROOT / '__init__.py'}'); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(hasattr(m, 'comfy_entrypoint'), hasattr(m, 'NODE_CLASS_MAPPINGS'), m.__all__)")
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False []"


def test_the_pack_registers_every_node_through_the_v3_entry_point(pack):
    """``comfy_entrypoint`` gives a ComfyExtension listing the 11 nodes, each a V3 ComfyNode
    whose schema is valid, keeps its saved name and has a tooltip on every input and output."""
    import asyncio

    from comfy_api.latest import ComfyExtension, io

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    nodes = asyncio.run(extension.get_node_list())
    saved_names = {"HonestFaceModelLoader", "HonestFaceAnalysisLoader", "HonestFaceIdentityEmbedder",
                   "HonestFaceVisualTokens", "HonestFaceRestoreAligned", "HonestFaceRestorePhoto", "HonestFaceAlignFace",
                   "HonestFaceMFAMask", "HonestFaceALDScore", "HonestFaceReferenceSelector", "HonestFaceUnloadModels"}
    assert {node.GET_SCHEMA().node_id for node in nodes} == saved_names and len(nodes) == 11
    for node in nodes:
        schema = node.GET_SCHEMA()  # validates: unique ids, define_schema and execute present
        assert issubclass(node, io.ComfyNode) and node.__dict__["execute"].__func__  # a classmethod
        assert schema.display_name.startswith("HonestFace ") and schema.description
        assert schema.node_id == node.__name__
        for item in schema.inputs + schema.outputs:
            assert item.tooltip, f"{schema.node_id}.{item.id}"
        for words in [schema.display_name] + [i.display_name or i.id for i in schema.inputs]:
            assert "VRE" not in words and "p_L" not in words, words
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")


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


def test_recognisers_live_with_insightface_and_the_old_folder_still_resolves(pack, tmp_path, caplog):
    """AdaFace / arcface_torch files are listed from models/insightface without widening that
    folder's registered extensions (swapper packs list it), and facerestore_models is neither
    registered nor extended by HonestFace; its files still resolve, with a deprecation note."""
    import logging

    import folder_paths

    folders = sys.modules["honestface_nodes.model_folders"]
    analysis = sys.modules["honestface_nodes.analysis_nodes"]
    root = tmp_path / "insightface"
    (root / "models" / "adaface").mkdir(parents=True)
    (root / "models" / "adaface" / "adaface_ir50_ms1mv2.ckpt").write_bytes(b"x")
    (root / "models" / "buffalo_l").mkdir()
    (root / "models" / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"x")
    folder_paths.add_model_folder_path("insightface", str(root))
    old = tmp_path / "facerestore_models"
    old.mkdir()
    (old / "arcface_old.pth").write_bytes(b"x")
    folder_paths.add_model_folder_path("facerestore_models", str(old))  # as a restore pack registers it
    folders.register_model_folders()
    assert folder_paths.folder_names_and_paths["insightface"][1] == {".onnx"}
    assert "facerestore_models" not in folders.HONESTFACE_FOLDERS
    choices = analysis.identity_model_choices()
    assert {"models/adaface/adaface_ir50_ms1mv2.ckpt", "models/buffalo_l/w600k_r50.onnx", "arcface_old.pth"} <= set(choices)
    assert analysis.resolve_identity_model("models/adaface/adaface_ir50_ms1mv2.ckpt") == \
        str(root / "models" / "adaface" / "adaface_ir50_ms1mv2.ckpt")
    with caplog.at_level(logging.WARNING, logger="honestface.paths"):
        assert analysis.resolve_identity_model("arcface_old.pth") == str(old / "arcface_old.pth")
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    assert folders.models_root_for("face_recognition", "adaface/adaface_ir50_ms1mv2.ckpt") == tmp_path


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


def preview_pixels(temp_folder: Path, ui) -> list[torch.Tensor]:
    """The pictures a node shows (its V3 UI output's ``images``), read back as (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    pictures = []
    for entry in ui.as_dict()["images"]:
        assert entry["type"] == "temp"
        picture = Image.open(temp_folder / entry["subfolder"] / entry["filename"]).convert("RGB")
        pictures.append(torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0))
    return pictures


def test_mfa_mask_node_on_a_real_face(pack, io, shared_data, temp_folder):
    from honestface.image_io import load_image

    face = load_image(sorted((shared_data / "real_lq" / "reference_sets" / "obama" / "refs").iterdir())[0])
    face = torch.nn.functional.interpolate(face[None], size=(128, 128), mode="bilinear", antialias=True)
    (analysis,) = pack.HonestFaceAnalysisLoader.execute("dlib", "dlib", "default", "dlib-hog", "cpu")
    output = pack.HonestFaceMFAMask.execute(analysis, io.images_to_comfy(face), 10.0, 0.6)
    mask, overlay = output.result
    # The node shows the overlay it returns (PNG: 8 bits).
    [shown] = preview_pixels(temp_folder, output.ui)
    torch.testing.assert_close(shown, overlay[0].cpu(), atol=1 / 255 + 1e-6, rtol=0)  # 8 bits, truncated
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
    (analysis,) = pack.HonestFaceAnalysisLoader.execute("dlib", "dlib", "default", "dlib-hog", "cpu")
    output = pack.HonestFaceALDScore.execute(analysis, io.images_to_comfy(faces), io.images_to_comfy(faces[:1]))
    ald_e, ald_m, l2, degrees, overlay, report = output.result
    lines = report.splitlines()
    assert ald_e > 0 and l2 > 0 and len(lines) == 3, report  # one line per image, then how to read them
    # In words, rounded, with the backends named; A-LD also at the paper's 512 px scale ((512/128)^2 = 16x),
    # the identity angle with the recogniser's same-person threshold.
    import re

    eyes = [re.search(r"eye landmark fit ([\d.]+) \(([\d.]+) at 512 px\)", line) for line in lines[:2]]
    assert all(eyes), report
    assert sum(float(m.group(1)) for m in eyes) / 2 == pytest.approx(ald_e, abs=0.05 + 1e-3)
    for match in eyes:
        assert float(match.group(2)) == pytest.approx(16 * float(match.group(1)), abs=16 * 0.05 + 0.05)
    assert "(landmarks: dlib)" in lines[0] and "recogniser: dlib; same person below 22°" in lines[0], report
    assert "A-LD" in lines[2] and "13.4-13.6" in lines[2], report
    assert ald_e == round(ald_e, 4) and degrees == round(degrees, 4)
    shown = preview_pixels(temp_folder, output.ui)
    assert len(shown) == 2
    for i, (picture, returned, face) in enumerate(zip(shown, overlay.cpu(), faces)):
        torch.testing.assert_close(picture, returned, atol=1 / 255 + 1e-6, rtol=0)
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
    device (reduced precision on a GPU and on CPUs with native bf16 with dtype auto), results come back as float32 IMAGEs on the
    intermediate device, runs repeat exactly, and the unload node empties everything."""
    import folder_paths

    import comfy.model_management as model_management
    from honestface.testing.make_tiny_models import make_tiny_models

    pack.HonestFaceUnloadModels.execute()  # start from an empty cache (other tests load backends)
    make_tiny_models(tmp_path)
    for kind in ("checkpoints", "diffusers", "honestface"):
        folder_paths.add_model_folder_path(kind, str(tmp_path / kind), is_default=True)
    lq = torch.rand(2, 96, 80, 3)
    for weights in ("osdface-tiny", "honestface-tiny.safetensors"):
        (model,) = pack.HonestFaceModelLoader.execute("tiny-sd21-base.safetensors", weights, "auto", "auto", "auto")
        (again,) = pack.HonestFaceModelLoader.execute("tiny-sd21-base.safetensors", weights, "auto", "auto", "auto")
        assert again is model  # cached between runs
        restored, _ = pack.HonestFaceRestoreAligned.execute(model, lq, "model default")
        repeat, _ = pack.HonestFaceRestoreAligned.execute(model, lq, "model default")
        weight = next(model.pipeline.model.restorer.vae.decoder.parameters())  # bf16 on CPUs too
        assert weight.device == model_management.get_torch_device()
        if weight.device.type == "cuda":
            assert weight.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        else:  # bf16 on CPUs that compute it natively (AVX512-BF16 / AMX)
            from honestface.cpu_features import cpu_has_native_bf16

            assert weight.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
        assert restored.shape == lq.shape and restored.dtype == torch.float32
        assert restored.device == model_management.intermediate_device()
        assert 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0
        assert torch.equal(restored, repeat)
        assert (restored - lq).abs().mean() > 1e-3
    # The same SD weights as a diffusers folder restore the same faces.
    outputs = {}
    for base in ("tiny-sd21-base.safetensors", "tiny-sd21-base"):
        (model,) = pack.HonestFaceModelLoader.execute(base, "osdface-tiny", "auto", "auto", "auto")
        outputs[base], _ = pack.HonestFaceRestoreAligned.execute(model, lq, "model default")
    tolerance = 1e-5 if weight.device.type == "cpu" else 1e-2
    torch.testing.assert_close(outputs["tiny-sd21-base"], outputs["tiny-sd21-base.safetensors"],
                               atol=tolerance, rtol=0)
    result = pack.HonestFaceUnloadModels.execute()
    # three models, and the dlib face analysis that checked the inputs are aligned crops
    assert result.result == (4,) and result.ui.as_dict() == {"text": ("released 4 HonestFace model(s)",)}
    assert not model_management.current_loaded_models
    (reloaded,) = pack.HonestFaceModelLoader.execute("tiny-sd21-base.safetensors", "osdface-tiny", "auto", "auto", "auto")
    assert reloaded is not model


def test_loader_node_builds_the_library_model(pack, tmp_path):
    """The loader node's model is the library's ``load_model`` of the same files, weight for weight."""
    import folder_paths

    from honestface.pipeline import load_model
    from honestface.testing.make_tiny_models import make_tiny_models

    make_tiny_models(tmp_path)
    for kind in ("checkpoints", "diffusers", "honestface"):
        folder_paths.add_model_folder_path(kind, str(tmp_path / kind), is_default=True)
    build_model = sys.modules["honestface_nodes.restore_nodes"].build_model
    for weights, checkpoint in (("honestface-tiny.safetensors", "honestface-tiny.safetensors"), ("osdface-tiny", None)):
        node = build_model("tiny-sd21-base.safetensors", weights, "osdface-tiny", "float32", "cpu").pipeline.model
        library = load_model(sd21=tmp_path / "checkpoints" / "tiny-sd21-base.safetensors", checkpoint=checkpoint,
                             osdface_dir="osdface-tiny", models_dir=tmp_path)
        assert node.load_report == library.load_report
        node_state, library_state = node.state_dict(), library.state_dict()
        assert sorted(node_state) == sorted(library_state)
        for key, value in node_state.items():
            if checkpoint is not None or not key.startswith("ide."):  # OSDFace runs no IDE (random)
                assert torch.equal(value, library_state[key]), key


def test_model_loader_offers_the_built_in_nano_model(pack, tmp_path):
    """honestface-nano is listed without any models folder, loads with base model "none",
    and a checkpoint that needs SD 2.1-base says so when "none" is chosen."""
    import folder_paths

    from honestface.errors import ConfigError
    from honestface.paths import NANO_WEIGHTS
    from honestface.testing.make_tiny_models import make_tiny_models

    required = pack.HonestFaceModelLoader.INPUT_TYPES()["required"]
    assert NANO_WEIGHTS in required["weights"][1]["options"] and "none" in required["base_model"][1]["options"]
    (model,) = pack.HonestFaceModelLoader.execute("none", NANO_WEIGHTS, "auto", "auto", "auto")
    assert "on none" not in model.description and NANO_WEIGHTS in model.description
    lq = torch.rand(1, 200, 200, 3)
    restored, _ = pack.HonestFaceRestoreAligned.execute(model, lq, "model default")
    assert restored.shape == lq.shape and torch.isfinite(restored).all()

    make_tiny_models(tmp_path)
    folder_paths.add_model_folder_path("honestface", str(tmp_path / "honestface"), is_default=True)
    with pytest.raises(ConfigError, match="SD 2.1-base"):
        pack.HonestFaceModelLoader.execute("none", "honestface-tiny.safetensors", "auto", "auto", "auto")
    pack.HonestFaceUnloadModels.execute()


@pytest.mark.parametrize("landmarks, identity, detector, missing, folder", [
    ("fan", "dlib", "dlib-hog", "", "face_alignment"),
    ("dlib", "arcface-onnx", "dlib-hog", "w600k_r50.onnx", os.path.join("insightface", "models")),
    ("dlib", "adaface", "dlib-hog", "adaface_ir50_ms1mv2.ckpt", os.path.join("insightface", "models")),
    ("dlib", "dlib", "insightface", "det_10g.onnx", os.path.join("insightface", "models")),
])
def test_analysis_loader_names_the_missing_file_and_its_folder(pack, landmarks, identity, detector, missing, folder):
    from honestface.errors import MissingModelFileError

    with pytest.raises(MissingModelFileError) as caught:
        pack.HonestFaceAnalysisLoader.execute(landmarks, identity, "default", detector, "cpu")
    message = caught.value.args[0]
    assert missing in message and folder in message, message


def test_analysis_loader_offers_every_library_backend_with_its_models_folder(pack):
    """The loader's choices are the library's backends; each has a models folder to look in."""
    from honestface.face import IDENTITY_BACKENDS, LANDMARK_BACKENDS
    from honestface.paths import MODEL_FOLDERS

    analysis = sys.modules["honestface_nodes.analysis_nodes"]
    inputs = pack.HonestFaceAnalysisLoader.INPUT_TYPES()["required"]
    assert tuple(inputs["landmark_backend"][1]["options"]) == LANDMARK_BACKENDS
    # "from model" (the default) follows the checkpoint; saved workflows keep the backend they name
    assert inputs["identity_backend"][1]["options"] == ["from model", *IDENTITY_BACKENDS]
    assert inputs["identity_backend"][1]["default"] == "from model"
    assert set(analysis._LANDMARK_KIND) == set(LANDMARK_BACKENDS)
    assert set(analysis._IDENTITY_KIND) == set(IDENTITY_BACKENDS)
    assert set(analysis._LANDMARK_KIND.values()) | set(analysis._IDENTITY_KIND.values()) <= set(MODEL_FOLDERS)


def test_one_mask_or_one_per_image_resized_to_the_images(io):
    from honestface.errors import ImageError

    one = torch.zeros(4, 6)
    one[:2] = 1.0  # top half
    masks = io.masks_for_images(one, count=3, height=8, width=12)
    assert len(masks) == 3 and all(m.shape == (8, 12) for m in masks)
    assert all(torch.equal(m, masks[0]) for m in masks)
    assert float(masks[0][:3].min()) == 1.0 and float(masks[0][-3:].max()) == 0.0  # still the top half
    per_image = torch.rand(3, 8, 12)
    assert all(torch.equal(m, per_image[i]) for i, m in enumerate(io.masks_for_images(per_image, 3, 8, 12)))
    with pytest.raises(ImageError, match="2 masks for 3 images"):
        io.masks_for_images(torch.rand(2, 8, 12), 3, 8, 12)


def test_previews_are_pngs_in_the_temp_folder_listed_like_preview_image(io, tmp_path):
    import folder_paths
    from PIL import Image

    folder_paths.set_temp_directory(str(tmp_path))
    images, eyes = torch.rand(2, 3, 10, 14), torch.rand(1, 3, 4, 8)
    previews = io.preview_on_node(None, images, eyes).as_dict()["images"]  # two batches, one list
    assert [p["type"] for p in previews] == ["temp"] * 3 and len({p["filename"] for p in previews}) == 3
    for picture, preview in zip([*images, *eyes], previews):
        assert set(preview) == {"filename", "subfolder", "type"}
        path = tmp_path / preview["subfolder"] / preview["filename"]
        saved = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255)
        # ComfyUI's PreviewImage truncates to 8 bits
        torch.testing.assert_close(saved.permute(2, 0, 1), picture, atol=1 / 255 + 1e-6, rtol=0)
    assert io.preview_on_node(None, torch.zeros(0, 3, 4, 4)).as_dict() == {"images": []}


def test_new_inputs_are_optional_with_defaults_and_tooltips(pack):
    """Prompts saved before an input existed still validate in ComfyUI (a missing required input
    is refused), so every input added since is optional with a default; each has a tooltip."""
    restore = sys.modules["honestface_nodes.restore_nodes"]
    photo = pack.HonestFaceRestorePhoto.INPUT_TYPES()
    assert set(photo["required"]) == {"model", "face_analysis", "image", "strength", "face_indices",
                                      "color_correction"}
    aligned = pack.HonestFaceRestoreAligned.INPUT_TYPES()
    assert set(aligned["required"]) == {"model", "lq_face", "color_correction"}
    assert aligned["optional"]["strength"][1]["default"] == 1.0
    # automatic fidelity and the detail-keeping paste: on unless a workflow says otherwise
    assert aligned["optional"]["fidelity"][1]["default"] == photo["optional"]["fidelity"][1]["default"] == "automatic"
    assert restore.FIDELITY == {"automatic": None, "off": False}
    assert photo["optional"]["paste"][1]["default"] == "change"
    for node in (pack.HonestFaceRestorePhoto, pack.HonestFaceRestoreAligned, pack.HonestFaceIdentityEmbedder,
                 pack.HonestFaceReferenceSelector):
        for section, inputs in node.INPUT_TYPES().items():
            for name, spec in inputs.items():
                assert spec[1].get("tooltip"), f"{node.__name__}.{name}"
                if section == "optional" and spec[0] in ("COMBO", "INT", "FLOAT", "BOOLEAN", "STRING"):
                    assert "default" in spec[1], f"{node.__name__}.{name}"
    # Outputs are appended, so links of saved workflows keep their slots.
    assert pack.HonestFaceRestorePhoto.RETURN_TYPES[:3] == ["IMAGE", "IMAGE", "STRING"]
    assert pack.HonestFaceRestorePhoto.RETURN_TYPES[3] == "MASK"
    assert pack.HonestFaceIdentityEmbedder.RETURN_TYPES[:3] == ["HONESTFACE_IDENTITY", "IMAGE", "IMAGE"]
    assert pack.HonestFaceRestoreAligned.RETURN_TYPES == ["IMAGE", "STRING"]
    assert restore.ON_NO_FACE["pass through"] == "pass"


class _Counting:
    """A face-analysis backend that counts the images it is given (and otherwise is the backend)."""

    def __init__(self, backend, method: str) -> None:
        self._backend, self._method, self.images = backend, method, 0

    def __getattr__(self, name):
        attribute = getattr(self._backend, name)
        if name != self._method:
            return attribute

        def counted(images, *args, **kwargs):
            self.images += int(images.shape[0]) if images.dim() == 4 else 1
            return attribute(images, *args, **kwargs)

        return counted


@pytest.fixture(scope="module")
def nano(pack):
    """The shipped nano model and the face analysis it was trained with (dlib, dlib-torch)."""
    from honestface.paths import NANO_WEIGHTS

    (model,) = pack.HonestFaceModelLoader.execute("none", NANO_WEIGHTS, "auto", "float32", "cpu")
    (analysis,) = pack.HonestFaceAnalysisLoader.execute("dlib", "dlib-torch", "default", "dlib-hog", "cpu")
    return model, analysis


@pytest.mark.slow
def test_identity_from_raw_photos_is_encoded_once_and_restores_like_the_library(pack, io, nano, shared_data,
                                                                                  tmp_path, monkeypatch):
    """Raw LFW photos as references: the embedder aligns and encodes them once; the restore
    node reuses that for every face (no recogniser run, landmarks only for the LQ faces) and
    gives what the library gives for the same aligned references as a tensor."""
    import dataclasses

    import folder_paths

    from honestface.image_io import load_image
    from honestface.pipeline import HonestFacePipeline

    folder_paths.set_temp_directory(str(tmp_path))
    model, analysis = nano
    photos = torch.stack([load_image(p) for p in sorted((shared_data / "lfw" / "Al_Gore").iterdir())[:3]])
    lq = torch.stack([load_image(p) for p in sorted((shared_data / "real_lq" / "reference_sets" / "obama" /
                                                      "lq_crop").iterdir())[:2]])
    lq = torch.nn.functional.interpolate(lq, size=(128, 128), mode="bilinear", antialias=True)
    out = pack.HonestFaceIdentityEmbedder.execute(model, analysis, io.images_to_comfy(photos), io.images_to_comfy(lq))
    identity, chosen, eyes, report = out.result
    refs = identity.references
    assert refs.images.shape == (3, 3, 128, 128), report
    assert refs.embeddings.shape == (3, 128) and torch.isfinite(refs.landmarks).all()
    assert chosen.shape == (2, 128, 128, 3) and eyes.shape[2] == 2 * eyes.shape[1]
    assert report.startswith("3 of 3 reference image(s) used") and "low-quality face 1: uses reference" in report
    previews = out.ui.as_dict()["images"]
    assert len(previews) == 4 and all((tmp_path / p["subfolder"] / p["filename"]).is_file() for p in previews)

    counting = dataclasses.replace(analysis, landmarks=_Counting(analysis.landmarks, "landmarks"),
                                   identity=_Counting(analysis.identity, "embed"))
    ffe = model.pipeline.model.ide.feature_extractor
    ffe_calls = []
    monkeypatch.setattr(ffe, "forward", lambda *a, _f=ffe.forward: ffe_calls.append(1) or _f(*a))
    restored, _ = pack.HonestFaceRestoreAligned.execute(model, io.images_to_comfy(lq), "model default",
                                                         identity, counting)
    monkeypatch.undo()
    assert counting.identity.images == 0  # the references' embeddings come from the embedder
    assert not ffe_calls  # and their IDE tokens
    assert counting.landmarks.images == lq.shape[0]  # the LQ faces only, not B x N references
    library = HonestFacePipeline(model.pipeline.model, analysis.landmarks, analysis.identity, device="cpu",
                                 dtype=torch.float32)
    expected = library.restore(lq, references=[refs.images] * lq.shape[0])
    torch.testing.assert_close(io.comfy_to_images(restored), expected, atol=1e-5, rtol=0)

    # strength blends with the input: 0.5 is half way.
    half, _ = pack.HonestFaceRestoreAligned.execute(model, io.images_to_comfy(lq), "model default",
                                                     identity, analysis, strength=0.5)
    torch.testing.assert_close(io.comfy_to_images(half), (lq + expected) / 2, atol=1e-5, rtol=0)

    # The reference selector reuses the encoded references and shows its choice on the node.
    selected = pack.HonestFaceReferenceSelector.execute(analysis, io.images_to_comfy(lq), "eyes", identity=identity)
    best, index, _ = selected.result
    torch.testing.assert_close(io.comfy_to_images(best)[0], refs.images[index])
    assert len(selected.ui.as_dict()["images"]) == 2


def test_identity_embedder_drops_references_without_a_face(pack, io, nano):
    from honestface.errors import NoFaceError

    model, analysis = nano
    blank = torch.full((2, 3, 200, 200), 0.5)
    with pytest.raises(NoFaceError, match="no face found in any of the 2 reference image"):
        pack.HonestFaceIdentityEmbedder.execute(model, analysis, io.images_to_comfy(blank))


def test_photo_node_options_become_the_library_settings(pack):
    from honestface.errors import HonestFaceError
    from honestface.face.photo import FaceSelection, PasteMask

    restore = sys.modules["honestface_nodes.restore_nodes"]
    assert restore.face_selection("left-to-right", 40, 2, "1, 3", True) == FaceSelection(
        order="left-to-right", min_face_size=40, max_faces=2, indices=[1, 3], center_only=True)
    assert restore.face_selection("size", 0, 0, "all", False) == FaceSelection()
    assert restore.paste_mask("ellipse", 0.1, 0.2) == PasteMask(shape="ellipse", dilate=0.1, feather=0.2)
    optional = pack.HonestFaceRestorePhoto.INPUT_TYPES()["optional"]
    defaults = PasteMask()
    assert (optional["mask_shape"][1]["default"], optional["mask_dilate"][1]["default"],
            optional["mask_feather"][1]["default"]) == (defaults.shape, defaults.dilate, defaults.feather)
    assert optional["face_order"][1]["default"] == FaceSelection().order
    for bad in (("sideways", 0, 0, "all", False), ("size", -1, 0, "all", False), ("size", 0, 0, "first", False)):
        with pytest.raises(HonestFaceError):
            restore.face_selection(*bad)
    with pytest.raises(HonestFaceError, match="shape"):
        restore.paste_mask("star", 0.0, 0.1)


def test_group_photo_references_go_to_the_matching_face_only(pack, io, nano, shared_data):
    """Four people; the references are a raw cut of the rightmost one. With ref_match
    "identity" only that face gets them; the report gives every face's identity distance and
    the MASK output covers the four pasted faces."""
    from honestface.image_io import load_image

    model, analysis = nano
    photo = load_image(shared_data / "real_lq" / "whole" / "codeformer_00.jpg")  # (3, 310, 491)
    reference = photo[:, :, -130:]  # the rightmost person, as an ordinary photo
    image, faces, report, mask = pack.HonestFaceRestorePhoto.execute(
        model, analysis, io.images_to_comfy(photo), 1.0, "all", "model default",
        references=io.images_to_comfy(reference), face_order="left-to-right")
    assert "4 face(s) found, restored [0, 1, 2, 3]" in report, report
    assert "face 3 with references" in report and report.count("with references") == 1, report
    distances = {int(part.split()[1]): float(part.split("identity distance ")[1].split()[0])
                 for part in report.split("; ") if "identity distance" in part}
    assert set(distances) == {0, 1, 2, 3} and distances[3] < 10 < min(distances[i] for i in (0, 1, 2)), distances
    # the report says what the distance is and where the same person ends (dlib's threshold)
    assert report.splitlines()[-1].endswith("below 22 deg counts as the references' person"), report
    assert faces.shape == (4, 128, 128, 3) and mask.shape == (1, 310, 491)
    restored = io.comfy_to_images(image)[0]
    changed = (restored - photo).abs().amax(0) > 1e-6
    assert not changed[mask[0] == 0].any() and changed[mask[0] > 0.5].float().mean() > 0.5


def test_face_analysis_from_model_follows_the_checkpoint(pack, io, nano, shared_data):
    """'from model' loads no recogniser until a node has the model too, then the one the
    checkpoint names (nano: dlib-torch): the same embeddings as choosing it by hand."""
    from honestface.image_io import load_images

    model, explicit = nano
    (analysis,) = pack.HonestFaceAnalysisLoader.execute("dlib", "from model", "default", "dlib-hog", "cpu")
    assert analysis.identity is None  # loaded before the model: nothing to decide yet
    refs = load_images(sorted((shared_data / "real_lq" / "reference_sets" / "obama" / "refs").iterdir())[:2],
                       size=128)
    identity, _, _, report = pack.HonestFaceIdentityEmbedder.execute(model, analysis, io.images_to_comfy(refs))
    assert model.pipeline.model.config.identity_backend == "dlib-torch"
    assert "identity=dlib-torch (the model's)" in identity.analysis and "recogniser: dlib-torch" in report
    by_hand = pack.HonestFaceIdentityEmbedder.execute(model, explicit, io.images_to_comfy(refs))[0]
    torch.testing.assert_close(identity.references.embeddings, by_hand.references.embeddings)
    assert analysis.for_model(None).identity.name == "dlib"  # no model at hand (scoring): dlib


def test_restore_aligned_warns_when_an_input_is_no_aligned_crop(pack, io, nano, shared_data, caplog):
    """An LFW news photo (square, but not FFHQ-aligned) fed to Restore (aligned face): the
    CLI's input-kind test flags it in the node's report, its UI text and the log; an aligned
    crop gets no warning."""
    import logging

    from honestface.face.input_kind import classify_input
    from honestface.image_io import load_image

    model, analysis = nano
    photo = load_image(sorted((shared_data / "lfw" / "Al_Gore").iterdir())[0])  # (3, 250, 250)
    crop = load_image(sorted((shared_data / "real_lq" / "reference_sets" / "obama" / "refs").iterdir())[0])
    assert classify_input(photo, analysis.detector, analysis.landmarks).kind == "photo"
    assert classify_input(crop, analysis.detector, analysis.landmarks).kind == "aligned"
    with caplog.at_level(logging.WARNING, logger="honestface.comfyui"):
        output = pack.HonestFaceRestoreAligned.execute(model, io.images_to_comfy(photo), "model default",
                                                       face_analysis=analysis)
    restored, report = output.result
    assert restored.shape == (1, 250, 250, 3)
    assert report.startswith("input 0 does not look like an aligned face crop (landmarks off the FFHQ template")
    assert "HonestFace Restore (whole photo)" in report and "HonestFace Align Face" in report
    assert output.ui.as_dict() == {"text": (report,)}
    assert any("does not look like an aligned face crop" in r.getMessage() for r in caplog.records)
    output = pack.HonestFaceRestoreAligned.execute(model, io.images_to_comfy(crop), "model default")  # dlib checks
    assert "does not look like" not in output.result[1] and output.ui is None
    # the shipped nano model reports how much of its restoration the face got
    assert output.result[1].startswith("automatic fidelity (0 = left as it was, 1 = fully restored): face 0: ")
