"""What the ComfyUI registry and ComfyUI-Manager read: pyproject.toml, requirements.txt, LICENSE, icon."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]

#: The classifiers the registry turns into its OS and accelerator fields (comfy-cli's lists).
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def requirements_txt() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_registry_fields():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", PROJECT["urls"]["Repository"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert COMFY["PublisherId"] and COMFY["DisplayName"] == "HonestFace"
    assert re.fullmatch(r">=\d+\.\d+\.\d+", COMFY["requires-comfyui"])
    os_values = [c.removeprefix("Operating System :: ") for c in PROJECT["classifiers"]
                 if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in PROJECT["classifiers"] if c.startswith("Environment :: ")]
    assert os_values and all(value.startswith(REGISTRY_OS_PREFIXES) for value in os_values)
    assert accelerators and set(accelerators) <= REGISTRY_ACCELERATORS


def test_license_file_is_the_declared_licence():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the full text


def test_icon_is_a_square_image_in_the_repository():
    url = COMFY["Icon"]
    prefix = PROJECT["urls"]["Repository"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert url.startswith(prefix), url
    path = REPO_ROOT / url.removeprefix(prefix)
    with Image.open(path) as icon:
        assert icon.format == "PNG" and icon.width == icon.height and 64 <= icon.width <= 512
        icon.load()
        assert len(icon.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 16  # a picture, not a blank square


def test_torch_comes_from_comfyui_or_the_torch_extra():
    names = {requirement_name(d) for d in PROJECT["dependencies"]}
    assert not names & {"torch", "torchvision", "torchaudio"}
    assert {requirement_name(d) for d in PROJECT["optional-dependencies"]["torch"]} == {"torch", "torchvision"}
    assert not {requirement_name(line) for line in requirements_txt()} & {"torch", "torchvision", "torchaudio"}
    venv_script = (REPO_ROOT / "scripts" / "venv.sh").read_text()
    assert "torch-requirements.txt" in venv_script  # the set-up scripts still install torch


def test_requirements_txt_has_the_core_and_what_the_workflows_need():
    """ComfyUI-Manager installs requirements.txt alone: the core dependencies and ONNX runtime + insightface
    (ArcFace in honestface_restore_with_references)."""
    manager = {requirement_name(line) for line in requirements_txt()}
    core = {requirement_name(d) for d in PROJECT["dependencies"]}
    assert core <= manager, sorted(core - manager)
    assert {"onnxruntime", "insightface"} <= manager
    declared = core | {requirement_name(d) for extra in PROJECT["optional-dependencies"].values() for d in extra}
    assert manager <= declared, sorted(manager - declared)
