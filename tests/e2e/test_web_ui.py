"""The UI-format workflows, loaded by ComfyUI's real web frontend in headless Chromium.

What a user does: drag ``example_workflows/<name>.json`` into the editor and press Queue. The
frontend then turns the graph into an API prompt with ``app.graphToPrompt()``; that prompt
must be exactly the API twin in ``example_workflows/api/`` (same nodes, inputs, links, titles).
"""

from __future__ import annotations

import json
import time

import pytest

from browser import headless_web_ui
from comfyui_server import API_WORKFLOWS, TIMINGS, WORKFLOWS, execution_error, load_workflow, with_tiny_models
from workflow_format import model_hints

pytestmark = pytest.mark.e2e

UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))


@pytest.fixture(scope="module")
def web_ui(comfyui_server):
    with headless_web_ui(comfyui_server.url) as browser:
        yield browser


def test_every_ui_workflow_has_an_api_twin():
    assert {p.name for p in UI_WORKFLOWS} == {p.name for p in API_WORKFLOWS.glob("*.json")}
    assert len(UI_WORKFLOWS) >= 5


def declared_models(workflow: dict) -> list[dict]:
    """The model hints of a UI workflow: on its nodes and at its top level."""
    on_nodes = [model for node in workflow["nodes"] for model in node.get("properties", {}).get("models", [])]
    return on_nodes + workflow.get("models", [])


HINTED_WORKFLOWS = [p for p in UI_WORKFLOWS if declared_models(load_workflow(p))]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_ui_workflow_declares_the_model_files_of_its_api_twin(path):
    """The hints are the ones workflow_format.py derives from the API twin (regenerated, not
    hand-edited), each node's hints name one of its widget values, and the workflows that need
    downloaded files say so."""
    workflow, prompt = load_workflow(path), load_workflow(API_WORKFLOWS / path.name)
    per_node, top_level = model_hints(prompt)
    for node in workflow["nodes"]:
        models = node.get("properties", {}).get("models", [])
        assert models == per_node.get(str(node["id"]), []), (path.name, node["id"])
        for model in models:
            assert model["name"] in node["widgets_values"], model
    assert workflow.get("models", []) == top_level
    for model in declared_models(workflow):
        assert set(model) == {"name", "url", "directory"} and model["url"].startswith("https://"), model
    needs_files = any(node["class_type"] == "HonestFaceModelLoader" and node["inputs"]["base_model"] != "none"
                      for node in prompt.values())
    assert bool(declared_models(workflow)) == needs_files, path.name


@pytest.mark.parametrize("path", HINTED_WORKFLOWS, ids=[p.stem for p in HINTED_WORKFLOWS])
def test_missing_models_dialog_names_what_is_not_installed(web_ui, comfyui_server, path):
    """The real frontend reads the hints: files the server lacks are listed as
    "folder / file" (the test server has the tiny models: VGG16 and ArcFace under their real
    names, no SD 2.1, HonestFace or OSDFace files of those names), installed ones are not."""
    workflow = load_workflow(path)
    models = declared_models(workflow)
    installed = {}
    for directory in {model["directory"] for model in models}:
        status, files = comfyui_server.request(f"/experiment/models/{directory}")
        assert status == 200, (directory, files)
        installed[directory] = {entry["name"] for entry in files}
    text = web_ui.missing_models_dialog(workflow)
    assert "Missing Models" in text, f"no missing-models dialog for {path.name}"
    assert "Invalid directory" not in text, text
    for model in models:
        label = f"{model['directory']} / {model['name']}"
        assert (label in text) == (model["name"] not in installed[model["directory"]]), (label, text)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_web_ui_converts_workflow_to_its_api_twin(web_ui, path):
    prompt = web_ui.graph_to_prompt(load_workflow(path))
    expected = load_workflow(API_WORKFLOWS / path.name)
    assert prompt == expected, (f"{path.name}: the web UI sends\n{json.dumps(prompt, indent=1)}\n"
                                f"but example_workflows/api/{path.name} is\n{json.dumps(expected, indent=1)}")


def test_web_ui_lists_the_nodes_with_descriptions(web_ui, comfyui_server):
    """The editor knows every HonestFace node, under the HonestFace category, with tooltips."""
    found = web_ui.evaluate(
        "JSON.stringify(Object.fromEntries(Object.entries(LiteGraph.registered_node_types)"
        ".filter(([name]) => name.startsWith('HonestFace'))"
        ".map(([name, type]) => [name, {category: type.category, description: type.nodeData?.description ?? ''}])))")
    nodes = json.loads(found)
    info = comfyui_server.object_info
    expected = {name for name in info if info[name].get("python_module", "").endswith("HonestFace")}
    assert set(nodes) == expected and expected
    for name, data in nodes.items():
        assert data["category"] == "HonestFace", name
        assert len(data["description"]) > 40, name
        for section in ("required", "optional"):
            for input_name, spec in info[name]["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_template_browser_lists_and_serves_the_workflows(comfyui_server):
    """ComfyUI's template browser finds ``example_workflows/`` of the pack and serves each file."""
    status, templates = comfyui_server.request("/workflow_templates")
    assert status == 200
    assert sorted(templates.get("HonestFace", [])) == sorted(p.stem for p in UI_WORKFLOWS)
    for path in UI_WORKFLOWS:
        served = json.loads(comfyui_server.get_bytes(f"/api/workflow_templates/HonestFace/{path.name}"))
        assert served == load_workflow(path)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_queue_from_the_web_ui(web_ui, comfyui_server, inputs, tiny_choices, path):
    """Drag in, pick the model files one has, press Queue: the prompt runs to the end."""
    api = load_workflow(API_WORKFLOWS / path.name)
    expected = with_tiny_models(api, tiny_choices)
    changed = {node_id: {name: value for name, value in node["inputs"].items() if value != api[node_id]["inputs"][name]}
               for node_id, node in expected.items()}
    _, before = comfyui_server.request("/history")
    start = time.perf_counter()
    web_ui.queue_workflow(load_workflow(path), {k: v for k, v in changed.items() if v})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        _, history = comfyui_server.request("/history")
        new = [key for key in history if key not in before]
        if new and (history[new[0]]["status"].get("completed") or history[new[0]]["status"]["status_str"] == "error"):
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"the prompt queued from the web UI did not finish\n{comfyui_server.log()}")
    TIMINGS[f"web UI queue: {path.stem}"] = time.perf_counter() - start
    entry = history[new[0]]
    assert execution_error(entry) is None, execution_error(entry)
    assert entry["status"]["status_str"] == "success"
    sent = entry["prompt"][2]
    assert {k: (v["class_type"], v["inputs"]) for k, v in sent.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in expected.items()}
    assert entry["outputs"]
