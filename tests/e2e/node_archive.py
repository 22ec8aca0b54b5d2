"""The node archive as the ComfyUI registry gets it, made by comfy-cli's ``comfy node pack``.

comfy-cli packs the files git tracks, minus ``.comfyignore``. The tests run it on a copy of
the working tree (tracked and new, not ignored files) in a temporary git repository, so
uncommitted changes are packed as they would be after a commit and the checkout is never
written to. comfy-cli runs without network (a private network namespace where the system
allows one, otherwise a proxy that refuses every connection), without telemetry and with a
private HOME for its settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from comfyui_server import REPO_ROOT

NODE_ZIP = "node.zip"  # the name `comfy node pack` writes


def comfy_executable() -> str | None:
    """``comfy`` beside this Python (the ``test`` extra installs comfy-cli), else on PATH."""
    beside = Path(sys.executable).parent / "comfy"
    return str(beside) if beside.is_file() else shutil.which("comfy")


def _offline_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    for flags in (["--net"], ["--user", "--map-root-user", "--net"]):
        if subprocess.run([unshare, *flags, "true"], capture_output=True).returncode == 0:
            return [unshare, *flags]
    return []


def run_comfy(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    """``comfy --skip-prompt ARGS`` in ``cwd``, offline, with its output as text."""
    comfy = comfy_executable()
    if comfy is None:
        raise FileNotFoundError("comfy-cli is not installed (pip install -e '.[test]')")
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HOME=str(home), DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1", NO_COLOR="1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="")
    return subprocess.run([*_offline_prefix(), comfy, "--skip-prompt", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def working_tree_files(root: Path = REPO_ROOT) -> list[str]:
    """The files ``git add -A`` would track: tracked and new files, without ignored ones."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_as_git_repository(target: Path, root: Path = REPO_ROOT) -> Path:
    """The working tree's files in a fresh git repository at ``target`` (all staged)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in working_tree_files(root):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, destination)
    subprocess.run(["git", "init", "-q", str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "add", "-A"], check=True)
    return target


def pack_node_archive(workdir: Path) -> tuple[Path, str]:
    """Run ``comfy node pack`` on a copy of the working tree; returns (archive, comfy's output)."""
    source = copy_as_git_repository(workdir / "source")
    result = run_comfy(["node", "pack"], cwd=source, home=workdir / "home")
    output = result.stdout + result.stderr
    archive = source / NODE_ZIP
    if result.returncode != 0 or not archive.is_file():
        raise RuntimeError(f"`comfy node pack` failed (exit {result.returncode}):\n{output}")
    return archive, output


def extract_node_archive(archive: Path, target: Path) -> Path:
    """Unpack the archive the way ComfyUI-Manager installs a registry node: into one folder."""
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
    return target
