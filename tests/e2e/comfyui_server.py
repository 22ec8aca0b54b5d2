"""A real ComfyUI server for the end-to-end tests: start, talk to over HTTP, stop.

The server runs ``main.py --cpu`` from a ComfyUI installed by ``scripts/comfyui_setup.sh``
with a private base directory (custom_nodes, input, output, user) and an in-memory
database, so tests never write into the ComfyUI installation. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / "example_workflows"
API_WORKFLOWS = WORKFLOWS / "api"

#: The node pack's public node names; workflows refer to them, so they must not change.
HONESTFACE_NODES = {
    "HonestFaceModelLoader",
    "HonestFaceAnalysisLoader",
    "HonestFaceIdentityEmbedder",
    "HonestFaceVisualTokens",
    "HonestFaceRestoreAligned",
    "HonestFaceRestorePhoto",
    "HonestFaceMFAMask",
    "HonestFaceALDScore",
    "HonestFaceReferenceSelector",
    "HonestFaceAlignFace",
    "HonestFaceUnloadModels",
}


#: Seconds from queueing to the end of each prompt the tests ran (shown in the terminal summary).
TIMINGS: dict[str, float] = {}


def comfyui_dir() -> Path:
    """The ComfyUI installed by ``scripts/comfyui_setup.sh`` (or ``HONESTFACE_COMFYUI``)."""
    return Path(os.environ.get("HONESTFACE_COMFYUI", REPO_ROOT / ".comfyui" / "ComfyUI"))


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not start, died, or did not answer as expected."""


@dataclass
class ComfyUIServer:
    """One running ComfyUI process and its private folders."""

    comfyui_dir: Path
    base_dir: Path
    extra_model_paths: Path | None = None
    python: str = sys.executable
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def start(self) -> None:
        for name in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        command = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch",
        ]
        if self.extra_model_paths is not None:
            command += ["--extra-model-paths-config", str(self.extra_model_paths)]
        self.log_path = self.base_dir / "server.log"
        log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("HONESTFACE_MODELS", None)  # inside ComfyUI the models come from its folders
        # A new session makes the server the leader of its own process group: stop() ends
        # the group, so no child survives the tests.
        self.process = subprocess.Popen(command, cwd=self.comfyui_dir, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()

    def log(self, tail: int = 12000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no server log>"
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    # -- HTTP -------------------------------------------------------------------------

    def request(self, path: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """GET (``payload`` None) or POST JSON; returns (status, decoded JSON or text)."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def get_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def wait_for_nodes(self, node_names: set[str], timeout: float = 600.0) -> dict:
        """Wait until ``/object_info`` lists every name; returns the object info. (A busy 2-core
        machine takes minutes to start ComfyUI; a server that fails returns at once.)"""
        deadline = time.monotonic() + timeout
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.process.returncode}.\n"
                                  f"--- server log ---\n{self.log()}")
            try:
                status, info = self.request("/object_info", timeout=10)
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as error:
                last_problem = repr(error)
            else:
                if status == 200 and isinstance(info, dict):
                    missing = sorted(node_names - set(info))
                    if not missing:
                        return info
                    last_problem = f"nodes missing from /object_info: {missing}"
                    # The node list is complete once the server answers: missing now means
                    # the pack failed to import.
                    if "Starting server" in self.log(10**7):
                        break
                else:
                    last_problem = f"HTTP {status}"
            time.sleep(0.5)
        raise ServerError(f"ComfyUI at {self.url} not ready: {last_problem}\n--- server log ---\n{self.log()}")

    def queue_prompt(self, prompt: dict) -> tuple[int, dict]:
        return self.request("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})

    def wait_for_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll ``/history/<id>`` until the prompt has finished (successfully or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"ComfyUI died while running {prompt_id}.\n{self.log()}")
            try:
                status, history = self.request(f"/history/{prompt_id}")
            except (TimeoutError, socket.timeout, urllib.error.URLError):
                continue  # a server busy running the prompt may answer late; the deadline decides
            if status == 200 and isinstance(history, dict) and prompt_id in history:
                entry = history[prompt_id]
                if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                    return entry
            time.sleep(0.25)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout} s.\n{self.log()}")

    def run_prompt(self, prompt: dict, timeout: float = 600.0) -> tuple[dict, float]:
        """Queue, wait, and return (history entry, seconds from queueing to the end)."""
        start = time.perf_counter()
        status, answer = self.queue_prompt(prompt)
        if status != 200:
            raise ServerError(f"/prompt refused the workflow (HTTP {status}): {json.dumps(answer, indent=1)}")
        entry = self.wait_for_history(answer["prompt_id"], timeout)
        return entry, time.perf_counter() - start


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message of a history entry, if the prompt failed."""
    for name, data in entry.get("status", {}).get("messages", []):
        if name == "execution_error":
            return data
    return None


def with_tiny_models(prompt: dict, choices: dict[str, str]) -> dict:
    """Real model names -> the tiny models' (what a user with the real files would not change)."""
    from honestface.paths import NANO_WEIGHTS

    prompt = copy.deepcopy(prompt)
    if any(node["inputs"].get("weights") == NANO_WEIGHTS for node in prompt.values()):
        return prompt  # the built-in model needs no file: it runs as a user gets it
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "HonestFaceModelLoader":
            inputs["base_model"] = choices["base_model"]
            is_osdface = not inputs["weights"].endswith(".safetensors")
            inputs["weights"] = choices["osdface" if is_osdface else "honestface"]
        if node["class_type"] == "HonestFaceAnalysisLoader":
            # The tiny checkpoint was trained (randomly) for this recogniser, the real one for ArcFace.
            inputs["identity_backend"] = choices["identity_backend"]
    return prompt


#: Model folders the tests' ``extra_model_paths.yaml`` points at the tiny models.
TINY_MODEL_FOLDERS = ("checkpoints", "diffusers", "honestface", "insightface", "face_alignment", "facerestore_models")


def write_extra_model_paths(base_dir: Path, models_dir: Path) -> Path:
    """An ``extra_model_paths.yaml`` (the way users add model folders) pointing at ``models_dir``."""
    extra = Path(base_dir) / "extra_model_paths.yaml"
    folders = "\n".join(f"    {kind}: {kind}" for kind in TINY_MODEL_FOLDERS)
    extra.write_text(f"honestface_tests:\n    base_path: {models_dir}\n{folders}\n")
    return extra


def start_node_pack_server(comfyui_dir: Path, base_dir: Path, node_pack: Path, models_dir: Path,
                           python: str = sys.executable) -> ComfyUIServer:
    """A started ComfyUI server in ``base_dir`` with ``node_pack`` as its HonestFace custom node
    and the tiny models as extra model paths, once every node the example workflows use is
    registered (``server.object_info`` holds its /object_info)."""
    (base_dir / "custom_nodes").mkdir()
    (base_dir / "custom_nodes" / "HonestFace").symlink_to(node_pack, target_is_directory=True)
    server = ComfyUIServer(comfyui_dir=comfyui_dir, base_dir=base_dir,
                           extra_model_paths=write_extra_model_paths(base_dir, models_dir), python=python)
    server.start()
    try:
        expected = set(HONESTFACE_NODES)
        for path in API_WORKFLOWS.glob("*.json"):
            expected |= {node["class_type"] for node in load_workflow(path).values()}
        server.object_info = server.wait_for_nodes(expected)
    except BaseException:
        server.stop()
        raise
    return server


def to_png(source: Path, target: Path, max_side: int | None = None) -> None:
    image = Image.open(source).convert("RGB")
    if max_side and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    image.save(target)


def write_workflow_inputs(input_dir: Path, shared_data: Path) -> dict[str, Path]:
    """The input images the workflows name, from the real test data, in a server's input folder."""
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
    input_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in sources.items():
        to_png(source, input_dir / name, max_side=512)
        written[name] = input_dir / name
    Image.new("RGB", (256, 256), (128, 128, 128)).save(input_dir / "honestface_blank.png")
    written["honestface_blank.png"] = input_dir / "honestface_blank.png"
    return written


def tiny_model_choices(server: ComfyUIServer) -> dict[str, str]:
    """The tiny models' names as the server's loader nodes list them."""
    from honestface.testing.make_tiny_models import TINY_IDENTITY_BACKEND

    status, info = server.request("/object_info/HonestFaceModelLoader")
    if status != 200:
        raise ServerError(f"/object_info/HonestFaceModelLoader: HTTP {status}")
    required = info["HonestFaceModelLoader"]["input"]["required"]
    bases, weights = required["base_model"][0], required["weights"][0]
    checkpoints = [w for w in weights if w.endswith(".safetensors")]
    folders = [w for w in weights if not w.endswith(".safetensors")]
    single_files = [b for b in bases if b.endswith((".safetensors", ".ckpt"))]
    if not (single_files and checkpoints and folders):
        raise ServerError(f"the tiny models are not listed: {bases}, {weights}")
    return {"base_model": single_files[0], "honestface": checkpoints[0], "osdface": folders[0],
            "identity_backend": TINY_IDENTITY_BACKEND}
