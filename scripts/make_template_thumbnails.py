"""Thumbnails of the example workflows for ComfyUI's template browser, from real runs.

For a custom node pack the browser shows ``example_workflows/<name>.jpg`` on the card of
``example_workflows/<name>.json``. This script starts a local ComfyUI (127.0.0.1 only, a
private base folder; the helpers of ``tests/e2e/comfyui_server.py``) with this repository as
its HonestFace node pack, writes the input images the workflows name into its input folder,
runs every API workflow of ``example_workflows/api/`` and composes each thumbnail from what
the run produced: the input images and the outputs the workflow shows, captioned with their
node titles.

The inputs are made from scikit-image's ``astronaut`` photo (NASA, public domain), so the
thumbnails may ship with the pack (the test data's photos may not): the photo itself, its
aligned face, that face degraded at the project's moderate level as the low-quality input,
and augmented copies as references (the demo's fallback case).

Workflows whose model files are not in ``--models-dir`` (SD 2.1-base, HonestFace or OSDFace
weights) run with the built-in ``honestface-nano`` demonstration model instead, and their
thumbnail says so over the pictures.

    python scripts/make_template_thumbnails.py                      # all, writes example_workflows/*.jpg
    python scripts/make_template_thumbnails.py --models-dir ~/ComfyUI/models --only osdface_restore_without_references

Needs ComfyUI (``bash scripts/comfyui_setup.sh``).
"""

from __future__ import annotations

import argparse
import copy
import io
import signal
import sys
import tempfile
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests" / "e2e")]

from comfyui_server import (API_WORKFLOWS, WORKFLOWS, comfyui_dir, execution_error,  # noqa: E402
                            load_workflow, start_node_pack_server)

#: The pictures of each thumbnail: API node ids, in order. A Load Image node stands for the
#: image it loads, any other node for the first image it shows after the run.
PANELS = {
    "honestface_nano_restore_with_references": ["1", "2", "12", "11"],
    "honestface_restore_with_references": ["1", "2", "12", "11"],
    "osdface_restore_without_references": ["1", "4"],
    "honestface_restore_whole_photo": ["1", "5"],
    "honestface_mfa_mask": ["1", "5", "6"],
    "honestface_ald_score": ["1", "2", "9"],
}
TILE = 256  # pixels per picture; the browser's card shows the image whole ("object-contain")
NANO_NOTE = "Run with honestface-nano (demonstration model)"


def write_public_domain_inputs(input_dir: Path, seed: int = 0) -> None:
    """The input files the example workflows name, made from the astronaut photo."""
    import numpy as np
    import torch
    from skimage import data as skdata

    from honestface.cli.demo import astronaut_face
    from honestface.degradation import DegradationConfig, degrade
    from honestface.image_io import save_image

    face = astronaut_face(references=3, seed=seed, size=512)
    (lq,) = degrade(face.gt.unsqueeze(0), DegradationConfig.moderate(), generator=seed)
    photo = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1).float() / 255.0
    files = {"honestface_lq_face.png": lq, "honestface_photo.png": photo,
             "honestface_restored.png": lq, "honestface_ground_truth.png": face.gt,
             **{f"honestface_reference_{i + 1}.png": ref for i, ref in enumerate(face.references)}}
    for name, image in files.items():
        save_image(image, input_dir / name)


def with_nano_model(prompt: dict) -> dict:
    """The workflow with its Model Loader switched to the built-in demonstration model, and its
    Face Analysis Loader to the recogniser that model was trained with (as the nano workflow)."""
    from honestface.paths import NANO_WEIGHTS

    nano = load_workflow(API_WORKFLOWS / "honestface_nano_restore_with_references.json")
    (nano_loader,) = [n["inputs"] for n in nano.values() if n["class_type"] == "HonestFaceModelLoader"]
    (nano_analysis,) = [n["inputs"] for n in nano.values() if n["class_type"] == "HonestFaceAnalysisLoader"]
    assert nano_loader["weights"] == NANO_WEIGHTS
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] == "HonestFaceModelLoader":
            node["inputs"].update(base_model=nano_loader["base_model"], weights=NANO_WEIGHTS)
        if node["class_type"] == "HonestFaceAnalysisLoader":
            node["inputs"]["identity_backend"] = nano_analysis["identity_backend"]
    return prompt


def models_installed(prompt: dict, choices: dict[str, list]) -> bool:
    """Every model file the workflow's Model Loader names is one the server lists."""
    for node in prompt.values():
        if node["class_type"] == "HonestFaceModelLoader":
            for name in ("base_model", "weights"):
                if node["inputs"][name] not in choices[name]:
                    return False
    return True


def shown_image(server, entry: dict, prompt: dict, node_id: str):
    """(3, H, W) tensor of the picture a node stands for in the thumbnail."""
    from honestface.image_io import load_image

    node = prompt[node_id]
    if node["class_type"] == "LoadImage":
        return load_image(server.input_dir / node["inputs"]["image"])
    images = entry["outputs"].get(node_id, {}).get("images", [])
    if not images:
        raise RuntimeError(f"node {node_id} ({node['class_type']}) showed no image after the run")
    query = urllib.parse.urlencode({k: images[0][k] for k in ("filename", "subfolder", "type")})
    data = server.get_bytes(f"/view?{query}")
    with tempfile.NamedTemporaryFile(suffix=".png") as file:
        file.write(data)
        file.flush()
        return load_image(file.name)


def letterbox(image, size: int):
    """Fit a (3, H, W) image into a white size x size square, aspect kept."""
    import torch

    from honestface.image_io import resize_to

    _, height, width = image.shape
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    square = torch.ones(3, size, size)
    top, left = (size - h) // 2, (size - w) // 2
    square[:, top:top + h, left:left + w] = resize_to(image.unsqueeze(0).float(), (h, w))[0]
    return square


def thumbnail(pictures: list, labels: list[str], title: str | None) -> bytes:
    """The thumbnail as JPEG bytes: the pictures in a row, each captioned."""
    from PIL import Image

    from honestface.visualize import contact_sheet

    sheet = contact_sheet([[letterbox(p, TILE) for p in pictures]], size=TILE, gap=8, labels=[labels],
                          row_titles=[title] if title else None, font_size=18)
    array = (sheet.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=88, optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=None, help="ComfyUI folder (default: .comfyui/ComfyUI)")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="a ComfyUI models folder with the real model files (default: none; the nano model stands in)")
    parser.add_argument("--only", nargs="*", default=None, help="workflow names (default: all)")
    parser.add_argument("--output", type=Path, default=WORKFLOWS, help="folder for <name>.jpg")
    args = parser.parse_args(argv)

    names = args.only or sorted(p.stem for p in API_WORKFLOWS.glob("*.json"))
    unknown = sorted(set(names) - set(PANELS))
    if unknown:
        parser.error(f"no thumbnail layout for {unknown}: add it to PANELS in {__file__}")
    base = Path(tempfile.mkdtemp(prefix="honestface-thumbnails-"))
    models = args.models_dir or (base / "no-models")
    models.mkdir(parents=True, exist_ok=True)
    # Stopped with SIGTERM, still stop the server (it runs in its own process group).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    (base / "comfyui").mkdir()
    server = start_node_pack_server(args.comfyui or comfyui_dir(), base / "comfyui", REPO_ROOT, models)
    try:
        write_public_domain_inputs(server.input_dir)
        required = server.object_info["HonestFaceModelLoader"]["input"]["required"]
        choices = {name: required[name][0] for name in ("base_model", "weights")}
        for name in names:
            prompt = load_workflow(API_WORKFLOWS / f"{name}.json")
            uses_model = any(n["class_type"] == "HonestFaceModelLoader" for n in prompt.values())
            substituted = uses_model and not models_installed(prompt, choices)
            run = with_nano_model(prompt) if substituted else prompt
            entry, seconds = server.run_prompt(run, timeout=1800)
            error = execution_error(entry)
            if error is not None:
                raise RuntimeError(f"{name}: {error.get('exception_message')}\n{server.log()}")
            pictures = [shown_image(server, entry, run, node_id) for node_id in PANELS[name]]
            labels = [run[node_id].get("_meta", {}).get("title", run[node_id]["class_type"]) for node_id in PANELS[name]]
            target = args.output / f"{name}.jpg"
            target.write_bytes(thumbnail(pictures, labels, NANO_NOTE if substituted else None))
            print(f"{target.relative_to(REPO_ROOT) if target.is_relative_to(REPO_ROOT) else target}: "
                  f"ran in {seconds:.1f} s" + (" (honestface-nano stood in for the missing model files)" if substituted else ""))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
