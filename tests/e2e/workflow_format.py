"""Write UI-format workflows (what the editor saves and users drag in) from API-format ones.

Authoring aid for ``example_workflows/*.json``: the API twin in ``example_workflows/api/`` is the source;
this builds the editor graph (nodes, links, widget values in ComfyUI's order) from the
server's ``/object_info``. Whether the result is right is checked by the end-to-end tests,
which let the real web UI convert it back (``app.graphToPrompt()``) and compare.

    python tests/e2e/workflow_format.py   # rewrites example_workflows/*.json from example_workflows/api/*.json

Model hints: a UI workflow names a model file it needs (file name, ComfyUI model folder, URL)
in the format ComfyUI's frontend reads for its missing-models dialog (``{"name", "url",
"directory"}`` entries; frontend schema ``zModelFile``) only where the dialog can check and
fetch it: a file ComfyUI's model listing shows (not ``.onnx``) with a direct download URL the
frontend accepts (huggingface.co or civitai.com, ``.safetensors``). Any other hint shows as a
red "Download not allowed" box or as a false "missing" entry. A file chosen in a widget is
listed on its node (``properties.models``: the frontend only keeps entries whose name is the
widget's current value); a file a node needs without naming it goes to the top-level
``models``. Every other file a workflow needs is explained in its "About this workflow" Note
(where the file comes from and how to get or train it), next to a description of what the
workflow does. The tables below are the only place these facts live, so regenerating keeps
them. Nothing is downloaded.

Layout: nodes in columns by depth, a column wrapped into several where that makes the whole
graph fit the window larger; nodes that show images get room for them (the frontend grows a
node when its preview loads), and the saved view (``extra.ds``) shows the whole graph below the
editor's top bar in a 1600x1000 window.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: Widgets the web UI adds to some core nodes beyond /object_info (and sends with the prompt).
FRONTEND_WIDGETS = {"PreviewAny": ["preview"]}


#: What the frontend's missing-models dialog accepts as a download source and file suffix
#: (anything else is a red "Download not allowed" / "Only allowed suffixes" box).
DIALOG_URL_PREFIXES = ("https://huggingface.co/", "https://civitai.com/")
DIALOG_SUFFIXES = (".safetensors", ".sft")


@dataclass(frozen=True)
class ModelFile:
    """One model file a workflow needs."""

    name: str  # the file's name as ComfyUI lists it inside `directory` (sub-folders with "/")
    directory: str  # the ComfyUI model folder
    url: str  # the official source: the file itself where it is published alone, else its page
    how: str  # where it comes from and how to get or train it, for the workflow's Note

    @property
    def dialog_can_check(self) -> bool:
        """The missing-models dialog can check this file and offer its download."""
        return self.url.startswith(DIALOG_URL_PREFIXES) and self.name.endswith(DIALOG_SUFFIXES)

    def hint(self) -> dict:
        return {"name": self.name, "url": self.url, "directory": self.directory}

    def note(self) -> str:
        return f"- models/{self.directory}/{self.name}: {self.how}"


SD21_BASE = ModelFile("v2-1_512-ema-pruned.safetensors", "checkpoints",
                      "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/"
                      "v2-1_512-ema-pruned.safetensors",
                      "Stable Diffusion 2.1-base; the Missing Models dialog offers its download from Hugging Face.")
HONESTFACE_CHECKPOINT = ModelFile("honestface.safetensors", "honestface",
                                  "https://github.com/honestface/ComfyUI-HonestFace/blob/main/training/README.md",
                                  "HonestFace weights are not published: train them with training/train.py "
                                  "(training/README.md of the HonestFace repository, config paper.yaml).")
# The OSDFace release is one folder of three files.
OSDFACE = ModelFile("OSDFace/", "honestface", "https://github.com/jkwang28/OSDFace",
                    "the OSDFace release folder (pytorch_lora_weights.safetensors, embedding_change_weights.pth, "
                    "associate_2.ckpt): download it from the pretrained-model links in the OSDFace README, "
                    "https://github.com/jkwang28/OSDFace.")
VGG16 = ModelFile("vgg16-397923af.pth", "honestface", "https://download.pytorch.org/models/vgg16-397923af.pth",
                  "torchvision's VGG16 weights, https://download.pytorch.org/models/vgg16-397923af.pth.")
ARCFACE_R50 = ModelFile("models/buffalo_l/w600k_r50.onnx", "insightface",
                        "https://github.com/deepinsight/insightface/tree/master/model_zoo",
                        "ArcFace of insightface's buffalo_l pack (model zoo: "
                        "https://github.com/deepinsight/insightface/tree/master/model_zoo).")
INSIGHTFACE_DETECTOR = ModelFile("models/buffalo_l/det_10g.onnx", "insightface",
                                 "https://github.com/deepinsight/insightface/tree/master/detection/scrfd",
                                 "SCRFD detector of insightface's buffalo_l pack.")
FAN_2D = ModelFile("2DFAN4-11f355bf06.pth.tar", "face_alignment", "https://github.com/1adrianb/face-alignment",
                   "FAN landmark weights of the face-alignment package (https://github.com/1adrianb/face-alignment).")

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


def needed_model_files(prompt: dict) -> tuple[dict[str, list[ModelFile]], list[ModelFile]]:
    """(node id -> files its widgets name, files nodes need without naming them) of an API prompt."""
    per_node: dict[str, list[ModelFile]] = {}
    implied: list[ModelFile] = []
    for node_id, node in prompt.items():
        chosen = [WIDGET_MODEL_FILES[value] for value in node["inputs"].values()
                  if isinstance(value, str) and value in WIDGET_MODEL_FILES]
        if chosen:
            per_node[node_id] = chosen
        for model in implied_model_files(node["class_type"], node["inputs"]):
            if model not in implied:
                implied.append(model)
    return per_node, implied


def model_notes(prompt: dict) -> list[str]:
    """One Note line per model file an API prompt needs: where it goes, where it comes from."""
    per_node, implied = needed_model_files(prompt)
    files = [m for models in per_node.values() for m in models] + implied
    return [m.note() for m in dict.fromkeys(files)]


#: What each example workflow does and what it needs, shown in its "About this workflow" Note.
#: (The template browser shows a custom-node template's file name as its title and
#: description; the description a user reads is this Note, on the canvas.)
DESCRIPTIONS = {
    "honestface_nano_restore_with_references": (
        "Restores an aligned low-quality face with three photos of the same person as references, "
        "using honestface-nano: the small DEMONSTRATION model built into the pack (128 px faces, trained "
        "from scratch on a CPU; not the paper's model, so expect soft results). The Identity Embedder "
        "picks the reference whose landmarks fit the face best and shows it with the eye patches it uses.\n"
        "Needs no model files: it runs right after installing. Pick your own images in the Load Image "
        "nodes: the face as an aligned square crop (the Align Face node makes one from a photo), the "
        "references as ordinary photos of the person."),
    "honestface_restore_with_references": (
        "Restores an aligned low-quality face at 512 px with the full HonestFace model, guided by three "
        "photos of the same person: the Identity Embedder picks the reference whose landmarks fit best "
        "and builds the identity prompt from ArcFace embeddings and its eye patches.\n"
        "Needs the model files below. To try the workflow without them, open "
        "honestface_nano_restore_with_references (built-in demonstration model)."),
    "osdface_restore_without_references": (
        "One-step restoration of an aligned low-quality face without references, with the OSDFace "
        "weights; the Visual Tokens node shows what the visual representation embedder reads from "
        "the face.\nNeeds the model files below."),
    "honestface_restore_whole_photo": (
        "Finds the faces in a whole photo (or in every frame of a batch), restores them together and "
        "pastes them back with a soft landmark mask; frames without a face pass through. Shows the "
        "restored faces, a report of the faces found and where they were pasted.\n"
        "Needs the model files below; face detection uses dlib (no files)."),
    "honestface_mfa_mask": (
        "Computes the MFA attention mask of an aligned face (eyes, nose and mouth regions from its "
        "landmarks, the mask HonestFace weights its loss with) and shows it as a mask and as an "
        "overlay.\nNeeds no model files (dlib comes with the pack's requirements)."),
    "honestface_ald_score": (
        "Scores how faithful a restored face is to its ground truth or a reference photo: A-LD for "
        "the eyes and the mouth (landmark distance after an affine fit; lower is more faithful), "
        "L2-LD and the angle, with the landmarks of both drawn on the face.\n"
        "Needs no model files (dlib)."),
}

#: The built-in demonstration model's loader, named as such on the canvas.
NANO_TITLE = "Demonstration model: honestface-nano (128 px)"


def about_text(name: str, prompt: dict) -> str:
    """The text of a workflow's "About this workflow" Note."""
    if name not in DESCRIPTIONS:
        raise ValueError(f"example workflow '{name}' has no description: add it to DESCRIPTIONS in {__file__}")
    notes = model_notes(prompt)
    text = DESCRIPTIONS[name]
    if notes:
        text += "\n\nModel files (in ComfyUI's models folder):\n" + "\n".join(notes)
    return text


def model_hints(prompt: dict) -> tuple[dict[str, list[dict]], list[dict]]:
    """(node id -> its ``properties.models``, the workflow's top-level ``models``) for an API
    prompt: only files the missing-models dialog can check and download."""
    files_per_node, implied_files = needed_model_files(prompt)
    per_node = {node_id: [m.hint() for m in models if m.dialog_can_check] for node_id, models in files_per_node.items()}
    per_node = {node_id: hints for node_id, hints in per_node.items() if hints}
    implied = [m.hint() for m in implied_files if m.dialog_can_check]
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


#: Room (graph units) for the image a node shows once it has run or an image is picked: the
#: frontend grows such a node to fit its preview, so the layout reserves it up front.
PREVIEW_HEIGHT = {
    "LoadImage": 300, "PreviewImage": 300, "SaveImage": 300, "MaskPreview": 300,
    "HonestFaceIdentityEmbedder": 260, "HonestFaceMFAMask": 300, "HonestFaceALDScore": 300,
    "HonestFaceReferenceSelector": 300, "PreviewAny": 100,
}
NODE_WIDTH, NOTE_WIDTH, WIDE_WIDTH = 340, 420, 400
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: drawn above a node's pos
GAP_X, GAP_Y = 50, 40
#: The window the saved view is made for (tests/e2e/browser.py opens the editor at this size)
#: and how far the editor's top bars (news banner, workflow tabs, breadcrumb and run button:
#: 139 px in frontend 1.32.9) reach into it.
#: The icon bar at the left edge lies over the canvas too.
VIEW_SIZE, VIEW_TOP, VIEW_LEFT, VIEW_MARGIN = (1600, 1000), 140, 60, 20


def _pack_columns(columns: list[list[tuple[str, float, float]]], max_height: float) -> tuple[dict, float, float]:
    """Place columns of (key, width, height) boxes left to right, wrapping a column into
    several where it would grow taller than ``max_height``. Returns ({key: (x, y)} of each
    box's top-left corner, total width, total height)."""
    places, x, height = {}, 0.0, 0.0
    for column in columns:
        y, width = 0.0, 0.0
        for key, w, h in column:
            if y > 0 and y + h > max_height:  # wrap: a new sub-column
                x, y, width = x + width + GAP_X, 0.0, 0.0
            places[key] = (x, y)
            y += h + GAP_Y
            width = max(width, w)
            height = max(height, y - GAP_Y)
        x += width + GAP_X
    return places, x - GAP_X, height


def _view_area() -> tuple[float, float]:
    """Width and height of the window area a saved view may use."""
    return VIEW_SIZE[0] - VIEW_LEFT - 2 * VIEW_MARGIN, VIEW_SIZE[1] - VIEW_TOP - 2 * VIEW_MARGIN


def _layout(columns: list[list[tuple[str, float, float]]]) -> tuple[dict, float, float]:
    """The wrap height that lets the whole graph show largest in the window below the top bar."""
    view_w, view_h = _view_area()
    tallest_box = max(h for column in columns for _, _, h in column)
    tallest_column = max(sum(h + GAP_Y for _, _, h in column) for column in columns)
    best = None
    for limit in range(int(tallest_box), int(tallest_column) + 50, 25):
        places, width, height = _pack_columns(columns, limit)
        scale = min(view_w / width, view_h / height)
        if best is None or scale > best[0] + 1e-9:
            best = (scale, places, width, height)
    return best[1], best[2], best[3]


def graph_extent(nodes: list[dict]) -> tuple[float, float]:
    """Width and height of a laid-out graph whose top-left corner (title bars included) is 0, 0."""
    return (max(n["pos"][0] + n["size"][0] for n in nodes), max(n["pos"][1] + n["size"][1] for n in nodes))


def saved_view(width: float, height: float) -> dict:
    """``extra.ds`` showing a graph of this size (top-left at 0, 0) whole, centred below the top bar."""
    view_w, view_h = _view_area()
    scale = min(1.0, view_w / width, view_h / height)
    left = VIEW_LEFT + VIEW_MARGIN + (view_w - width * scale) / 2
    top = VIEW_TOP + VIEW_MARGIN
    # LiteGraph draws graph point p at screen (p + offset) * scale.
    return {"scale": round(scale, 4), "offset": [round(left / scale, 1), round(top / scale, 1)]}


def api_to_ui(prompt: dict, object_info: dict, name: str) -> dict:
    """API-format prompt -> UI-format workflow (version 0.4): the nodes in columns by depth with
    room for their previews, an "About this workflow" Note first, and a view of the whole graph."""
    from honestface.paths import NANO_WEIGHTS

    depth = _depths(prompt)
    order = sorted(prompt, key=lambda n: (depth[n], int(n)))
    node_models, workflow_models = model_hints(prompt)
    nodes, links = [], []
    outputs: dict[tuple[str, int], list[int]] = {}
    for node_id in order:
        node = prompt[node_id]
        for input_name, value in node["inputs"].items():
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), int(value[1]), int(node_id), None, None])
                outputs.setdefault((str(value[0]), int(value[1])), []).append(link_id)
    link_by_id = {link[0]: link for link in links}
    for position, node_id in enumerate(order):
        node = prompt[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for input_name, spec in input_specs(info):
            value = node["inputs"].get(input_name)
            if isinstance(value, list):
                link_id = next(l for l in outputs[(str(value[0]), int(value[1]))]
                               if link_by_id[l][3] == int(node_id) and link_by_id[l][4] is None)
                slot = len(inputs)
                link_by_id[link_id][4] = slot
                source_type = object_info[prompt[str(value[0])]["class_type"]]["output"][int(value[1])]
                link_by_id[link_id][5] = source_type
                entry = {"name": input_name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if is_widget(spec):
                    entry["widget"] = {"name": input_name}
                inputs.append(entry)
            elif is_widget(spec):
                if value is None:
                    value = spec[1].get("default") if len(spec) > 1 else None
                widgets.append(value)
                if len(spec) > 1 and spec[1].get("image_upload"):
                    widgets.append("image")  # the upload button's own widget value
            elif section_is_required(info, input_name):
                raise ValueError(f"node {node_id} ({node['class_type']}): required input '{input_name}' is not connected")
            else:
                inputs.append({"name": input_name, "type": spec[0], "link": None})
        for widget in FRONTEND_WIDGETS.get(node["class_type"], []):
            widgets.append(node["inputs"].get(widget, ""))
        node_outputs = []
        for slot, (kind, output_name) in enumerate(zip(info["output"], info["output_name"])):
            node_outputs.append({"name": output_name, "type": kind, "links": outputs.get((node_id, slot), []) or None,
                                 "slot_index": slot})
        height = 90 + 26 * (len(inputs) + len(widgets) + len(node_outputs)) + PREVIEW_HEIGHT.get(node["class_type"], 0)
        is_nano_loader = node["class_type"] == "HonestFaceModelLoader" and node["inputs"].get("weights") == NANO_WEIGHTS
        entry = {
            "id": int(node_id), "type": node["class_type"], "pos": [0, 0],
            "size": [WIDE_WIDTH if is_nano_loader else NODE_WIDTH, height], "flags": {}, "order": position, "mode": 0,
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
    about = about_text(name, prompt)
    note_id = max(int(n) for n in prompt) + 1
    note_lines = sum(1 + len(line) // 52 for line in about.split("\n"))  # about 52 characters a line at this width
    nodes.append({
        "id": note_id, "type": "Note", "title": "About this workflow", "pos": [0, 0],
        "size": [NOTE_WIDTH, 40 + 18 * note_lines], "flags": {}, "order": len(order), "mode": 0,
        "inputs": [], "outputs": [], "properties": {}, "widgets_values": [about],
        "color": "#432", "bgcolor": "#653",
    })
    # Columns by depth, the Note at the top of the first; every box counts its title bar.
    by_id = {str(n["id"]): n for n in nodes}
    columns: list[list[tuple[str, float, float]]] = [[(str(note_id), NOTE_WIDTH, by_id[str(note_id)]["size"][1] + TITLE_HEIGHT)]]
    for node_id in order:
        while len(columns) <= depth[node_id]:
            columns.append([])
        width, height = by_id[node_id]["size"]
        columns[depth[node_id]].append((node_id, width, height + TITLE_HEIGHT))
    places, _, _ = _layout(columns)
    for key, (x, y) in places.items():
        by_id[key]["pos"] = [round(x), round(y + TITLE_HEIGHT)]
    workflow = {
        "last_node_id": note_id, "last_link_id": len(links),
        "nodes": sorted(nodes, key=lambda n: n["id"]), "links": links, "groups": [],
        "config": {}, "extra": {"ds": saved_view(*graph_extent(nodes))}, "version": 0.4,
    }
    if workflow_models:
        workflow["models"] = workflow_models
    return workflow


def section_is_required(info: dict, name: str) -> bool:
    return name in info["input"].get("required", {})


def main() -> int:
    """Start a server, fetch /object_info and rewrite example_workflows/*.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
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
        ui = api_to_ui(json.loads(path.read_text()), info, path.stem)
        target = repo / "example_workflows" / path.name
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(f"wrote {target.relative_to(repo)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
