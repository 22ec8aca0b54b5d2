"""The V3 node pack in a real ComfyUI server, and workflows saved before it moved to V3.

``tests/fixtures/saved_workflows`` holds the example workflows (UI and API format) as the V1
pack shipped them. They must load and run unchanged: the node names, input names and types,
widget order and output slots they refer to are the pack's public interface.
"""

from __future__ import annotations

import copy
import json
import re

import pytest

from browser import find_chromium, headless_web_ui
from comfyui_server import HONESTFACE_NODES, REPO_ROOT, execution_error, load_workflow, with_tiny_models

pytestmark = pytest.mark.e2e

SAVED = REPO_ROOT / "tests" / "fixtures" / "saved_workflows"
SAVED_UI = sorted(SAVED.glob("*.json"))
SAVED_API = sorted((SAVED / "api").glob("*.json"))


def ours(object_info: dict) -> dict:
    return {name: data for name, data in object_info.items()
            if data.get("python_module", "").endswith("HonestFace")}


def test_server_lists_all_11_nodes_from_the_v3_schema(comfyui_server):
    """Every node comes from ``comfy_entrypoint`` (V3): ComfyUI describes V3 nodes from their
    schema, which always carries the flags a V1 node only has when set, and V3 combos."""
    nodes = ours(comfyui_server.object_info)
    assert set(nodes) == HONESTFACE_NODES and len(nodes) == 11
    for name, data in nodes.items():
        assert {"deprecated", "experimental", "api_node"} <= set(data), name  # ComfyUI's V3 schema info
        assert data["display_name"].startswith("HonestFace ") and data["category"] == "HonestFace"
        assert all(data["output_tooltips"]), name
        for section in ("required", "optional"):
            for input_name, spec in data["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name}"
                assert not isinstance(spec[0], list), f"{name}.{input_name}: a V1 combo"
    loader = nodes["HonestFaceAnalysisLoader"]["input"]["required"]["identity_backend"]
    assert loader[0] == "COMBO" and loader[1]["default"] == "from model"
    assert "lack of NODE_CLASS_MAPPINGS" not in comfyui_server.log(10**7)


def test_saved_workflows_refer_only_to_what_the_pack_still_offers(comfyui_server):
    """Node names, input names (each in its old section: required/optional), and output types at
    the old slots are all still there."""
    info = comfyui_server.object_info
    for path in SAVED_API:
        for node_id, node in load_workflow(path).items():
            data = info[node["class_type"]]
            inputs = {**data["input"]["required"], **data["input"].get("optional", {})}
            assert set(node["inputs"]) <= set(inputs) | {"preview"}, (path.name, node_id)
            for value in node["inputs"].values():
                if isinstance(value, list):  # a link: the source's output slot keeps its type
                    source = load_workflow(path)[value[0]]["class_type"]
                    assert value[1] < len(info[source]["output"]), (path.name, node_id)
    for path in SAVED_UI:
        for node in load_workflow(path)["nodes"]:
            data = info[node["type"]]
            for slot, output in enumerate(node.get("outputs", [])):
                assert data["output"][slot] == output["type"], (path.name, node["type"], slot)


@pytest.mark.parametrize("path", SAVED_API, ids=[p.stem for p in SAVED_API])
def test_saved_api_workflow_runs_unchanged(comfyui_server, inputs, tiny_choices, path):
    prompt = with_tiny_models(load_workflow(path), tiny_choices)  # only model files are renamed
    entry, _ = comfyui_server.run_prompt(prompt, timeout=900)
    assert execution_error(entry) is None, f"{path.name}: {json.dumps(execution_error(entry))[:3000]}"
    assert entry["status"]["status_str"] == "success"
    shown = {node_id for node_id, node in prompt.items()
             if node["class_type"] in ("SaveImage", "PreviewImage", "PreviewAny")}
    assert shown <= set(entry["outputs"]), (path.name, sorted(shown - set(entry["outputs"])))


@pytest.fixture(scope="module")
def web_ui(comfyui_server):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed")
    with headless_web_ui(comfyui_server.url) as browser:
        yield browser


@pytest.mark.parametrize("path", SAVED_UI, ids=[p.stem for p in SAVED_UI])
def test_saved_ui_workflow_loads_into_its_saved_prompt(web_ui, comfyui_server, path):
    """ComfyUI's own frontend loads the saved editor graph with the V3 nodes and sends the
    prompt the V1 pack's frontend sent (the saved API twin, which runs above): the same nodes,
    links and widget values. Only the titles in ``_meta`` (not used to run) follow the nodes'
    new display names where a node has no title of its own."""
    prompt = web_ui.graph_to_prompt(load_workflow(path))
    saved = load_workflow(SAVED / "api" / path.name)
    # inputs added since are optional: the frontend sends them at their defaults
    for key, node in prompt.items():
        known = saved.get(key, {}).get("inputs", {})
        optional = comfyui_server.object_info[node["class_type"]]["input"].get("optional", {})
        for name in [n for n in node["inputs"] if n not in known]:
            assert name in optional and node["inputs"][name] == optional[name][1].get("default"), (key, name)
            del node["inputs"][name]
    assert {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in saved.items()}, json.dumps(prompt, indent=1)
    titles = {v["class_type"]: v["_meta"]["title"] for v in prompt.values() if v["class_type"].startswith("HonestFace")}
    for class_type, title in titles.items():
        assert title == comfyui_server.object_info[class_type]["display_name"] or \
            title in {v["_meta"]["title"] for v in saved.values()}, (class_type, title)


def test_the_reference_workflow_follows_the_demonstration_model(comfyui_server, inputs):
    """The saved reference workflow with the built-in nano model (trained with dlib's recogniser):
    its explicit ArcFace stops with an error naming the recogniser to choose; 'from model' runs."""
    prompt = load_workflow(SAVED / "api" / "honestface_restore_with_references.json")
    prompt["7"]["inputs"].update(base_model="none", weights="honestface-nano.safetensors")
    assert prompt["8"]["inputs"]["identity_backend"] == "arcface-onnx"
    entry, _ = comfyui_server.run_prompt(prompt)
    error = execution_error(entry)
    assert error is not None and error["node_type"] == "HonestFaceIdentityEmbedder", error
    message = error["exception_message"]
    assert re.search(r"'arcface-onnx' gives \d+-d embeddings but the model expects 128-d", message), message
    assert "choose identity backend 'dlib-torch'" in message, message
    assert "'from model'" in message, message

    following = copy.deepcopy(prompt)
    following["8"]["inputs"]["identity_backend"] = "from model"
    entry, _ = comfyui_server.run_prompt(following)
    assert execution_error(entry) is None, execution_error(entry)
    assert entry["outputs"]["11"]["images"]  # the restored face was saved


def test_restore_aligned_warns_on_an_unaligned_photo(comfyui_server, inputs, tiny_choices):
    """A whole photo fed to *Restore (aligned face)*: it still runs, and says on the node (its
    report and UI text) and in the server log that the input is no aligned crop."""
    prompt = with_tiny_models(load_workflow(SAVED / "api" / "osdface_restore_without_references.json"), tiny_choices)
    prompt["1"]["inputs"]["image"] = "honestface_photo.png"
    prompt["20"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    entry, _ = comfyui_server.run_prompt(prompt)
    assert execution_error(entry) is None, execution_error(entry)
    [shown] = entry["outputs"]["3"]["text"]
    [report] = entry["outputs"]["20"]["text"]
    assert shown == report and report.startswith("input 0 does not look like an aligned face crop"), report
    assert "HonestFace Restore (whole photo)" in report
    assert "does not look like an aligned face crop" in comfyui_server.log(10**7)

    # An aligned crop: no warning, an empty report.
    aligned = with_tiny_models(load_workflow(SAVED / "api" / "osdface_restore_without_references.json"),
                               tiny_choices)
    aligned["20"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}}
    aligned["3"]["inputs"]["color_correction"] = "wavelet"  # not a cached result
    entry, _ = comfyui_server.run_prompt(aligned)
    assert execution_error(entry) is None, execution_error(entry)
    assert entry["outputs"]["20"]["text"] == [""] and "text" not in entry["outputs"].get("3", {})
