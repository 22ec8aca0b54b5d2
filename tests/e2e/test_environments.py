"""The node pack as ComfyUI users install it, in the fresh environments of scripts/comfyui_envs.sh.

Each environment is a virtual environment with ComfyUI's requirements and our
``requirements.txt`` only (torch comes from a torch-only folder): what ComfyUI-Manager gives
a user. Its Python runs a ComfyUI server whose ``custom_nodes/HonestFace`` is the archive
``comfy node pack`` makes for the registry, unpacked, and every API workflow must run there.

- ``manager``: requirements.txt alone.
- ``opencv-python``: the GUI OpenCV build installed first (another pack brought it).
- ``opencv-headless``: opencv-python-headless the only package providing ``cv2``.
- ``frontend-latest``: the newest ComfyUI frontend on PyPI; its web UI also converts every
  UI workflow there.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import headless_web_ui
from comfyui_server import (API_WORKFLOWS, REPO_ROOT, TIMINGS, WORKFLOWS, ComfyUIServer, execution_error,
                            load_workflow, start_node_pack_server, tiny_model_choices, with_tiny_models,
                            write_workflow_inputs)
from node_archive import comfy_executable, extract_node_archive, pack_node_archive
from workflow_format import FRONTEND_WIDGETS

pytestmark = pytest.mark.e2e

ALL_ENVIRONMENTS = ("manager", "opencv-python", "opencv-headless", "frontend-latest")
#: HONESTFACE_COMFYUI_ENV_NAMES (space-separated) narrows the set, for the tests and for
#: scripts/comfyui_envs.sh alike.
ENVIRONMENTS = tuple(os.environ.get("HONESTFACE_COMFYUI_ENV_NAMES", " ".join(ALL_ENVIRONMENTS)).split())
API_NAMES = sorted(path.name for path in API_WORKFLOWS.glob("*.json"))
CV2_PACKAGES = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def environments_dir() -> Path:
    return Path(os.environ.get("HONESTFACE_COMFYUI_ENVS", REPO_ROOT / ".comfyui" / "envs"))


def environment_python(name: str) -> str:
    python = environments_dir() / name / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"ComfyUI environment '{name}' not found at {python.parent.parent}: run "
                    f"`bash scripts/comfyui_envs.sh` (or deselect with -k 'not test_environments')", pytrace=False)
    return str(python)


def run_in(python: str, code: str) -> str:
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def node_pack_folder(tmp_path_factory):
    """The node pack as the registry ships it (``comfy node pack``, unpacked)."""
    if not (REPO_ROOT / ".git").exists() or comfy_executable() is None:
        return REPO_ROOT  # no git checkout or no comfy-cli: the working tree itself
    workdir = tmp_path_factory.mktemp("pack")
    archive, _ = pack_node_archive(workdir)
    return extract_node_archive(archive, workdir / "HonestFace")


@pytest.fixture(scope="module", params=ENVIRONMENTS)
def environment(request):
    return request.param, environment_python(request.param)


@pytest.fixture(scope="module")
def env_server(environment, comfyui_install, tiny_models_dir, node_pack_folder, shared_data, tmp_path_factory):
    name, python = environment
    server = start_node_pack_server(comfyui_install, tmp_path_factory.mktemp(f"comfyui-{name}"), node_pack_folder,
                                    tiny_models_dir, python=python)
    try:
        write_workflow_inputs(server.input_dir, shared_data)
        server.tiny_choices = tiny_model_choices(server)
        yield name, server
    finally:
        server.stop()


def test_environment_holds_only_comfyui_and_our_requirements(environment):
    """torch comes from the torch-only folder; everything the pack imports is installed in
    the environment itself; cv2 comes from the packages each environment is about."""
    name, python = environment
    report = json.loads(run_in(python, (
        "import importlib.metadata as m, json, sys, torch, cv2, diffusers, onnxruntime, insightface, dlib; "
        f"cv2_packages = sorted(d for d in {list(CV2_PACKAGES)!r} if any(True for _ in m.distributions(name=d))); "
        "print(json.dumps({'prefix': sys.prefix, 'torch': torch.__file__, 'cv2_packages': cv2_packages, "
        "'cv2': cv2.__version__, 'own': [mod.__file__ for mod in (cv2, diffusers, onnxruntime, insightface, dlib)], "
        "'frontend': m.version('comfyui-frontend-package')}))")))
    assert not report["torch"].startswith(report["prefix"]) and "/torch/" in report["torch"], report
    assert all(path.startswith(report["prefix"]) for path in report["own"]), report
    if name == "opencv-headless":
        assert report["cv2_packages"] == ["opencv-python-headless"], report
    if name == "opencv-python":
        assert "opencv-python" in report["cv2_packages"], report
    pinned = next(line.split("==")[1] for line in (comfyui_requirements()).splitlines()
                  if line.startswith("comfyui-frontend-package=="))
    version = lambda text: tuple(int(part) for part in text.split(".")[:3])  # noqa: E731
    if name == "frontend-latest":
        assert version(report["frontend"]) > version(pinned), report
    else:
        assert report["frontend"] == pinned, report


def comfyui_requirements() -> str:
    from comfyui_server import comfyui_dir

    return (comfyui_dir() / "requirements.txt").read_text()


def saved_outputs(server: ComfyUIServer, entry: dict) -> list[np.ndarray]:
    pictures = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            folder = server.output_dir if image["type"] == "output" else server.base_dir / "temp"
            path = folder / image["subfolder"] / image["filename"]
            pictures.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
    return pictures


@pytest.mark.parametrize("workflow", API_NAMES, ids=[name.removesuffix(".json") for name in API_NAMES])
def test_every_api_workflow_runs(env_server, workflow):
    name, server = env_server
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / workflow), server.tiny_choices)
    entry, seconds = server.run_prompt(prompt, timeout=900)
    TIMINGS[f"[{name}] {workflow.removesuffix('.json')}"] = seconds
    error = execution_error(entry)
    assert error is None, f"{workflow} failed in {name}: {json.dumps(error, indent=1)[:4000]}\n{server.log()}"
    assert entry["status"]["status_str"] == "success"
    pictures = saved_outputs(server, entry)
    assert pictures and all(np.isfinite(p).all() and p.std() > 0.01 for p in pictures)


def test_arcface_onnx_runs(env_server):
    """ArcFace through ONNX Runtime (what honestface_restore_with_references uses with the real
    models; the tiny restore models are trained for another recogniser, so the workflows above
    run that one): the A-LD workflow with the ArcFace ONNX file of the tiny models."""
    name, server = env_server
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_ald_score.json"), server.tiny_choices)
    analysis = next(node for node in prompt.values() if node["class_type"] == "HonestFaceAnalysisLoader")
    analysis["inputs"]["identity_backend"] = "arcface-onnx"
    entry, seconds = server.run_prompt(prompt, timeout=900)
    TIMINGS[f"[{name}] honestface_ald_score (ArcFace ONNX)"] = seconds
    error = execution_error(entry)
    assert error is None, f"ArcFace ONNX failed in {name}: {json.dumps(error, indent=1)[:4000]}\n{server.log()}"
    degrees = [float(output["text"][0]) for output in entry["outputs"].values()
               if "text" in output and output["text"][0].replace(".", "", 1).isdigit()]
    assert degrees and all(0.0 <= value <= 180.0 for value in degrees), entry["outputs"]


def without_frontend_widgets(prompt: dict) -> dict:
    """A prompt without the inputs only the web UI has (PreviewAny's display: frontend 1.32
    sends it, newer frontends leave it out; the server ignores it either way)."""
    return {node_id: {**node, "inputs": {key: value for key, value in node["inputs"].items()
                                         if key not in FRONTEND_WIDGETS.get(node["class_type"], [])}}
            for node_id, node in prompt.items()}


def test_newest_frontend_converts_every_workflow(env_server):
    """The newest frontend turns every UI workflow into its API twin. (Its missing-model check
    moved from the dialog test_web_ui.py checks to the errors side panel; not checked here.)"""
    name, server = env_server
    if name != "frontend-latest":
        pytest.skip("the web UI is checked with the newest frontend only (the pinned one: test_web_ui.py)")
    with headless_web_ui(server.url) as browser:
        for path in sorted(WORKFLOWS.glob("*.json")):
            workflow = load_workflow(path)
            sent = without_frontend_widgets(browser.graph_to_prompt(workflow))
            assert sent == without_frontend_widgets(load_workflow(API_WORKFLOWS / path.name)), path.name
