"""Fixtures of the end-to-end tests: tiny models, input images and one real ComfyUI server.

ComfyUI itself comes from ``scripts/comfyui_setup.sh`` (``.comfyui/ComfyUI`` at the
repository root, or ``HONESTFACE_COMFYUI``). The server gets this repository as a custom
node (a symlink in its private ``custom_nodes``), finds the tiny models through an
``extra_model_paths.yaml`` (the way users add their own model folders) and is stopped by
its process group at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_server import (REPO_ROOT, TIMINGS, comfyui_dir, start_node_pack_server, tiny_model_choices,
                            write_workflow_inputs)


@pytest.fixture(scope="session")
def comfyui_install() -> Path:
    path = comfyui_dir()
    if not (path / "main.py").is_file():
        pytest.fail(f"ComfyUI is not installed at {path}: run `bash scripts/comfyui_setup.sh` first "
                    "(or deselect these tests with -m 'not e2e')", pytrace=False)
    return path


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style models folder of tiny random models in the real file formats
    (``HONESTFACE_TINY_MODELS``: one made before by ``python -m
    honestface.testing.make_tiny_models DIR``, which saves minutes on a slow machine)."""
    if os.environ.get("HONESTFACE_TINY_MODELS"):
        return Path(os.environ["HONESTFACE_TINY_MODELS"])
    path = tmp_path_factory.mktemp("tiny-models")
    result = subprocess.run([sys.executable, "-m", "honestface.testing.make_tiny_models", str(path)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"make_tiny_models failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def comfyui_server(comfyui_install, tiny_models_dir, tmp_path_factory):
    server = start_node_pack_server(comfyui_install, tmp_path_factory.mktemp("comfyui-base"), REPO_ROOT,
                                    tiny_models_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def inputs(comfyui_server, shared_data) -> dict[str, Path]:
    """The input images the workflows name, in the server's input folder."""
    return write_workflow_inputs(comfyui_server.input_dir, shared_data)


@pytest.fixture(scope="session")
def tiny_choices(comfyui_server) -> dict[str, str]:
    """The tiny models' names as the loader nodes list them."""
    return tiny_model_choices(comfyui_server)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_sep("-", "prompt timings in ComfyUI (queue to finish, CPU, tiny models)")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"  {name:55s} {seconds:7.2f} s")
