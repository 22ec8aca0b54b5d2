"""Write UI-format workflows (what the editor saves and users drag in) from API-format ones.

Authoring aid for ``example_workflows/*.json``: the API twin in ``example_workflows/api/`` is the source;
this builds the editor graph (nodes, links, widget values in ComfyUI's order) from the
server's ``/object_info``. Whether the result is right is checked by the end-to-end tests,
which let the real web UI convert it back (``app.graphToPrompt()``) and compare.

    python tests/e2e/workflow_format.py   # rewrites workflows/*.json from example_workflows/api/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

#: Widgets the web UI adds to some core nodes beyond /object_info (and sends with the prompt).
FRONTEND_WIDGETS = {"PreviewAny": ["preview"]}


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
        title = node.get("_meta", {}).get("title")
        if title and title != info.get("display_name"):
            entry["title"] = title
        nodes.append(entry)
    return {
        "last_node_id": max(int(n) for n in prompt), "last_link_id": len(links),
        "nodes": sorted(nodes, key=lambda n: n["id"]), "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def section_is_required(info: dict, name: str) -> bool:
    return name in info["input"].get("required", {})


def main() -> int:
    """Start a server with the tiny models, fetch /object_info and rewrite workflows/*.json."""
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
