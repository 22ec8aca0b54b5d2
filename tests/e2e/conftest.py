"""Fixtures of the end-to-end tests: tiny models, input images and one real ComfyUI server.

ComfyUI itself comes from ``scripts/comfyui_setup.sh`` (``.comfyui/ComfyUI`` at the
repository root, or ``HONESTFACE_COMFYUI``). The server gets this repository as a custom
node (a symlink in its private ``custom_nodes``), finds the tiny models through an
``extra_model_paths.yaml`` (the way users add their own model folders) and is stopped by
its process group at the end of the session.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from comfyui_server import (API_WORKFLOWS, HONESTFACE_NODES, REPO_ROOT, TIMINGS, ComfyUIServer, comfyui_dir,
                            load_workflow)


@pytest.fixture(scope="session")
def comfyui_install() -> Path:
    path = comfyui_dir()
    if not (path / "main.py").is_file():
        pytest.fail(f"ComfyUI is not installed at {path}: run `bash scripts/comfyui_setup.sh` first "
                    "(or deselect these tests with -m 'not e2e')", pytrace=False)
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder of tiny random models in the real file formats."""
    path = tmp_path_factory.mktemp("tiny-models")
    result = subprocess.run([sys.executable, "-m", "honestface.testing.make_tiny_models", str(path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"make_tiny_models failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def comfyui_server(comfyui_install, tiny_models_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "HonestFace").symlink_to(REPO_ROOT, target_is_directory=True)
    extra = base / "extra_model_paths.yaml"
    folders = "\n".join(f"    {kind}: {kind}" for kind in (
        "checkpoints", "diffusers", "honestface", "insightface", "face_alignment", "facerestore_models"))
    extra.write_text(f"honestface_tests:\n    base_path: {tiny_models_dir}\n{folders}\n")
    server = ComfyUIServer(comfyui_dir=comfyui_install, base_dir=base, extra_model_paths=extra)
    server.start()
    try:
        expected = set(HONESTFACE_NODES)
        for path in API_WORKFLOWS.glob("*.json"):
            expected |= {node["class_type"] for node in load_workflow(path).values()}
        server.object_info = server.wait_for_nodes(expected)
        yield server
    finally:
        server.stop()


def to_png(source: Path, target: Path, max_side: int | None = None) -> None:
    image = Image.open(source).convert("RGB")
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    image.save(target)


@pytest.fixture(scope="session")
def inputs(comfyui_server, shared_data) -> dict[str, Path]:
    """The input images the workflows name, in the server's input folder."""
    obama = shared_data / "real_lq" / "reference_sets" / "obama"
    pairs = shared_data / "real_lq" / "pairs"
    first_pair = sorted((pairs / "lq").iterdir())[0].name
    sources = {
        "honestface_lq_face.png": sorted((obama / "lq_crop").iterdir())[0],
        "honestface_reference_1.png": sorted((obama / "refs").iterdir())[0],
        "honestface_reference_2.png": sorted((obama / "refs").iterdir())[1],
        "honestface_reference_3.png": sorted((obama / "refs").iterdir())[2],
        "honestface_photo.png": shared_data / "real_lq" / "whole" / "Blake_Lively.jpg",
        "honestface_restored.png": pairs / "lq" / first_pair,
        "honestface_ground_truth.png": pairs / "pseudo_hq" / first_pair,
    }
    written = {}
    for name, source in sources.items():
        to_png(source, comfyui_server.input_dir / name, max_side=512)
        written[name] = comfyui_server.input_dir / name
    Image.new("RGB", (256, 256), (128, 128, 128)).save(comfyui_server.input_dir / "honestface_blank.png")
    written["honestface_blank.png"] = comfyui_server.input_dir / "honestface_blank.png"
    return written


@pytest.fixture(scope="session")
def tiny_choices(comfyui_server) -> dict[str, str]:
    """The tiny models' names as the loader nodes list them."""
    status, info = comfyui_server.request("/object_info/HonestFaceModelLoader")
    assert status == 200
    required = info["HonestFaceModelLoader"]["input"]["required"]
    bases, weights = required["base_model"][0], required["weights"][0]
    checkpoints = [w for w in weights if w.endswith(".safetensors")]
    folders = [w for w in weights if not w.endswith(".safetensors")]
    single_files = [b for b in bases if b.endswith((".safetensors", ".ckpt"))]
    assert single_files and checkpoints and folders, (bases, weights)
    from honestface.testing.make_tiny_models import TINY_IDENTITY_BACKEND

    return {"base_model": single_files[0], "honestface": checkpoints[0], "osdface": folders[0],
            "identity_backend": TINY_IDENTITY_BACKEND}


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "prompt timings in ComfyUI (queue to finish, CPU, tiny models)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"  {name:55s} {seconds:7.2f} s")
