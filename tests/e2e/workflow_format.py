"""Write UI-format workflows (what the editor saves and users drag in) from API-format ones.

Authoring aid for ``example_workflows/*.json``: the API twin in ``example_workflows/api/`` is the source;
this builds the editor graph (nodes, links, widget values in ComfyUI's order) from the
server's ``/object_info``. Whether the result is right is checked by the end-to-end tests,
which let the real web UI convert it back (``app.graphToPrompt()``) and compare.

    python tests/e2e/workflow_format.py   # rewrites example_workflows/*.json from example_workflows/api/*.json

Model hints: each UI workflow names the model files it needs (file name, ComfyUI model
folder, official source) in the format ComfyUI's frontend reads for its missing-models dialog
(``{"name", "url", "directory"}`` entries; frontend schema ``zModelFile``). A file chosen in a
widget is listed on its node (``properties.models``: the frontend only keeps entries whose name
is the widget's current value); a file a node needs without naming it (the OSDFace folder's
files, VGG16, the ArcFace pack) is listed in the workflow's top-level ``models``. The tables
below are the only place these facts live, so regenerating keeps them. Nothing is downloaded:
the dialog tells the user what is missing and where it comes from.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: Widgets the web UI adds to some core nodes beyond /object_info (and sends with the prompt).
FRONTEND_WIDGETS = {"PreviewAny": ["preview"]}


@dataclass(frozen=True)
class ModelFile:
    """One model file as the frontend's missing-models dialog shows it."""

    name: str  # the file's name as ComfyUI lists it inside `directory` (sub-folders with "/")
    directory: str  # the ComfyUI model folder
    url: str  # the official source: the file itself where it is published alone, else its page

    def hint(self) -> dict:
        return asdict(self)


SD21_BASE = ModelFile("v2-1_512-ema-pruned.safetensors", "checkpoints",
                      "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/"
                      "v2-1_512-ema-pruned.safetensors")
HONESTFACE_CHECKPOINT = ModelFile("honestface.safetensors", "honestface",
                                  "https://github.com/honestface/ComfyUI-HonestFace#training")
# The OSDFace release is one folder of three files; its LoRA file stands for it (the frontend
# keeps one entry per URL, and a loader error names any other missing file).
OSDFACE = ModelFile("OSDFace/pytorch_lora_weights.safetensors", "honestface", "https://github.com/jkwang28/OSDFace")
VGG16 = ModelFile("vgg16-397923af.pth", "honestface", "https://download.pytorch.org/models/vgg16-397923af.pth")
ARCFACE_R50 = ModelFile("models/buffalo_l/w600k_r50.onnx", "insightface",
                        "https://github.com/deepinsight/insightface/tree/master/model_zoo")
INSIGHTFACE_DETECTOR = ModelFile("models/buffalo_l/det_10g.onnx", "insightface",
                                 "https://github.com/deepinsight/insightface/tree/master/detection/scrfd")
FAN_2D = ModelFile("2DFAN4-11f355bf06.pth.tar", "face_alignment", "https://github.com/1adrianb/face-alignment")

#: Files chosen by a widget value: listed on the node whose widget names them.
WIDGET_MODEL_FILES = {model.name: model for model in (SD21_BASE, HONESTFACE_CHECKPOINT)}


def implied_model_files(class_type: str, inputs: dict) -> list[ModelFile]:
    """Files a node needs without a widget naming them (its defaults), for the top-level list."""
    if class_type == "HonestFaceModelLoader":
        weights, needed = inputs.get("weights", ""), []
        if weights == "OSDFace" or (weights == HONESTFACE_CHECKPOINT.name and inputs.get("osdface_folder") == "auto"):
            needed.append(OSDFACE)  # the OSDFace weights, or the VQ encoder of a HonestFace checkpoint
        if weights == HONESTFACE_CHECKPOINT.name:
            needed.append(VGG16)  # the IDE's eye features
        return needed
    if class_type == "HonestFaceAnalysisLoader":
        needed = []
        if inputs.get("identity_backend") in ("arcface-onnx", "arcface-torch") and inputs.get("identity_model") == "default":
            needed.append(ARCFACE_R50)
        if inputs.get("detector") == "insightface":
            needed.append(INSIGHTFACE_DETECTOR)
        if inputs.get("landmark_backend") == "fan":
            needed.append(FAN_2D)
        return needed
    return []


def model_hints(prompt: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """(node id -> its ``properties.models``, the workflow's top-level ``models``) for an API prompt."""
    per_node: dict[str, list[dict]] = {}
    implied: list[dict] = []
    for node_id, node in prompt.items():
        chosen = [WIDGET_MODEL_FILES[value].hint() for value in node["inputs"].values()
                  if isinstance(value, str) and value in WIDGET_MODEL_FILES]
        if chosen:
            per_node[node_id] = chosen
        for model in implied_model_files(node["class_type"], node["inputs"]):
            if model.hint() not in implied:
                implied.append(model.hint())
    hints = [h for node in per_node.values() for h in node] + implied
    urls = [h["url"] for h in {h["name"]: h for h in hints}.values()]
    if len(urls) != len(set(urls)):  # the frontend keeps one entry per URL
        raise ValueError(f"two model files of one workflow share a source URL: {sorted(urls)}")
    return per_node, implied


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = []
    for section in ("required", "optional"):
        inputs = info["input"].get(section, {})
        for name in order.get(section, list(inputs)):
            specs.append((name, inputs[name]))
    return specs


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            links = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(str(source)) for source in links), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    """API-format prompt -> UI-format workflow (version 0.4) with a simple column layout."""
    depth = _depths(prompt)
    order = sorted(prompt, key=lambda n: (depth[n], int(n)))
    node_models, workflow_models = model_hints(prompt)
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    column_y: dict[int, float] = {}
    for node_id in order:
        node = prompt[node_id]
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), int(value[1]), int(node_id), None, None])
                outputs.setdefault((str(value[0]), int(value[1])), []).append(link_id)
    link_by_id = {link[0]: link for link in links}
    for position, node_id in enumerate(order):
        node = prompt[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in input_specs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link_id = next(l for l in outputs[(str(value[0]), int(value[1]))]
                               if link_by_id[l][3] == int(node_id) and link_by_id[l][4] is None)
                slot = len(inputs)
                link_by_id[link_id][4] = slot
                source_type = object_info[prompt[str(value[0])]["class_type"]]["output"][int(value[1])]
                link_by_id[link_id][5] = source_type
                entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif is_widget(spec):
                if value is None:
                    value = spec[1].get("default") if len(spec) > 1 else None
                widgets.append(value)
                if len(spec) > 1 and spec[1].get("image_upload"):
                    widgets.append("image")  # the upload button's own widget value
            elif section_is_required(info, name):
                raise ValueError(f"node {node_id} ({node['class_type']}): required input '{name}' is not connected")
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        for name in FRONTEND_WIDGETS.get(node["class_type"], []):
            widgets.append(node["inputs"].get(name, ""))
        node_outputs = []
        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"])):
            node_outputs.append({"name": name, "type": kind, "links": outputs.get((node_id, slot), []) or None,
                                 "slot_index": slot})
        column = depth[node_id]
        height = 90 + 26 * (len(inputs) + len(widgets) + len(node_outputs))
        y = column_y.get(column, 0.0)
        column_y[column] = y + height + 60
        entry = {
            "id": int(node_id), "type": node["class_type"], "pos": [60 + 400 * column, 60 + y],
            "size": [340, height], "flags": {}, "order": position, "mode": 0,
            "inputs": inputs, "outputs": node_outputs,
            "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets,
        }
        if node_id in node_models:
            entry["properties"]["models"] = node_models[node_id]
        title = node.get("_meta", {}).get("title")
        if title and title != info.get("display_name"):
            entry["title"] = title
        nodes.append(entry)
    workflow = {
        "last_node_id": max(int(n) for n in prompt), "last_link_id": len(links),
        "nodes": sorted(nodes, key=lambda n: n["id"]), "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }
    if workflow_models:
        workflow["models"] = workflow_models
    return workflow


def section_is_required(info: dict, name: str) -> bool:
    return name in info["input"].get("required", {})


def main() -> int:
    """Start a server, fetch /object_info and rewrite example_workflows/*.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tempfile

    from comfyui_server import ComfyUIServer

    repo = Path(__file__).resolve().parents[2]
    comfyui = Path(sys.argv[1]) if len(sys.argv) > 1 else repo / ".comfyui" / "ComfyUI"
    base = Path(tempfile.mkdtemp(prefix="honestface-comfyui-"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "HonestFace").symlink_to(repo, target_is_directory=True)
    server = ComfyUIServer(comfyui_dir=comfyui, base_dir=base)
    server.start()
    try:
        info = server.wait_for_nodes({"HonestFaceModelLoader"})
    finally:
        server.stop()
    for path in sorted((repo / "example_workflows" / "api").glob("*.json")):
        ui = api_to_ui(json.loads(path.read_text()), info)
        target = repo / "example_workflows" / path.name
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(f"wrote {target.relative_to(repo)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
