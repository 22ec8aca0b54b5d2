"""The node pack as the ComfyUI registry sees it: ``comfy node validate`` and ``comfy node pack``.

Both run offline on a copy of the working tree. The archive must hold what a ComfyUI user
needs (nodes, library, built-in model, workflows and their thumbnails, licence, requirements) and none of the
development folders that ``.comfyignore`` leaves out; unpacked alone, its library imports.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from comfyui_server import REPO_ROOT
from node_archive import comfy_executable, copy_as_git_repository, extract_node_archive, pack_node_archive, run_comfy

pytestmark = pytest.mark.skipif(comfy_executable() is None, reason="comfy-cli not installed (test extra)")

#: Left out of the archive (see .comfyignore and README "Installing").
DEVELOPMENT_FOLDERS = ("tests/", "benchmarks/", ".ci/", "scripts/", "training/", "docs/")


@pytest.fixture(scope="module")
def node_archive(tmp_path_factory):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: comfy node pack packs the files git tracks")
    archive, output = pack_node_archive(tmp_path_factory.mktemp("pack"))
    return archive, output


def test_comfy_node_validate_passes_without_warnings(tmp_path):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    source = copy_as_git_repository(tmp_path / "source")
    result = run_comfy(["node", "validate"], cwd=source, home=tmp_path / "home")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All validation checks passed" in output, output
    # comfy-cli only warns (exit 0) about bad classifiers, versions and licences: none allowed.
    assert "Warning" not in output and "Security warnings" not in output, output


def test_archive_holds_what_comfyui_needs_and_no_development_folders(node_archive):
    archive, _ = node_archive
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
    for needed in ("__init__.py", "nodes/__init__.py", "nodes/restore_nodes.py", "nodes/analysis_nodes.py",
                   "honestface/__init__.py", "honestface/pipeline.py", "honestface/weights/honestface-nano.safetensors",
                   "honestface/loaders/configs/sd21-base/unet/config.json",
                   "requirements.txt", "pyproject.toml", "LICENSE", "README.md", "example_workflows/README.md"):
        assert needed in names, needed
    workflows = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "example_workflows").rglob("*.json")}
    assert workflows and workflows <= names, sorted(workflows - names)
    # The template browser's thumbnails: example_workflows/<name>.jpg beside each editor file.
    thumbnails = {f"example_workflows/{path.stem}.jpg" for path in (REPO_ROOT / "example_workflows").glob("*.json")}
    assert thumbnails <= names, sorted(thumbnails - names)
    library = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "honestface").rglob("*.py")}
    assert library <= names, sorted(library - names)
    shipped_dev = sorted(name for name in names if name.startswith(DEVELOPMENT_FOLDERS))
    assert not shipped_dev, shipped_dev
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_unpacked_archive_imports_on_its_own(node_archive, tmp_path):
    """The library imports from the unpacked archive alone (no file it needs was left out)."""
    archive, _ = node_archive
    folder = extract_node_archive(archive, tmp_path / "HonestFace")
    code = ("import honestface, honestface.pipeline, honestface.cli, honestface.face, honestface.paths; "
            "print(honestface.__file__); "
            "print(honestface.paths.NANO_WEIGHTS)")
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); {code}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(folder)), result.stdout
