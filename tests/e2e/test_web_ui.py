"""The UI-format workflows, loaded by ComfyUI's real web frontend in headless Chromium.

What a user does: drag ``example_workflows/<name>.json`` into the editor and press Queue. The
frontend then turns the graph into an API prompt with ``app.graphToPrompt()``; that prompt
must be exactly the API twin in ``example_workflows/api/`` (same nodes, inputs, links, titles).
"""

from __future__ import annotations

import json
import re
import time
from itertools import combinations

import pytest
from PIL import Image

from browser import VIEWPORT, headless_web_ui
from comfyui_server import (API_WORKFLOWS, REPO_ROOT, TIMINGS, WORKFLOWS, execution_error, load_workflow,
                            start_node_pack_server, with_tiny_models)
from workflow_format import DIALOG_SUFFIXES, DIALOG_URL_PREFIXES, NANO_TITLE, about_text, model_hints

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
        # Only what the missing-models dialog can check and download (no red box, no .onnx
        # file that ComfyUI's model listing never shows).
        assert set(model) == {"name", "url", "directory"}, model
        assert model["url"].startswith(DIALOG_URL_PREFIXES) and model["name"].endswith(DIALOG_SUFFIXES), model
    needs_files = any(node["class_type"] == "HonestFaceModelLoader" and node["inputs"]["base_model"] != "none"
                      for node in prompt.values())
    assert bool(declared_models(workflow)) == needs_files, path.name


#: The dialog's complaints about a hint it cannot use (red boxes).
DIALOG_ERRORS = ("Download not allowed", "Only allowed suffixes", "Invalid directory")


@pytest.mark.parametrize("path", HINTED_WORKFLOWS, ids=[p.stem for p in HINTED_WORKFLOWS])
def test_missing_models_dialog_names_what_is_not_installed(web_ui, comfyui_server, tiny_models_dir, path):
    """The real frontend reads the hints: files the server lacks are listed as
    "folder / file", files it has are not (judged by the files on disk, not by ComfyUI's
    listing the dialog uses), and no entry is a red box."""
    workflow = load_workflow(path)
    text = web_ui.missing_models_dialog(workflow)
    assert "Missing Models" in text, f"no missing-models dialog for {path.name}"
    assert not any(error in text for error in DIALOG_ERRORS), text
    for model in declared_models(workflow):
        label = f"{model['directory']} / {model['name']}"
        installed = (tiny_models_dir / model["directory"] / model["name"]).exists()
        assert (label in text) == (not installed), (label, text)


@pytest.fixture(scope="module")
def bare_server(comfyui_install, tmp_path_factory):
    """A ComfyUI with the pack and no model files at all: a user right after installing, who
    has only the built-in demonstration model."""
    no_models = tmp_path_factory.mktemp("no-models")
    server = start_node_pack_server(comfyui_install, tmp_path_factory.mktemp("comfyui-bare"), REPO_ROOT, no_models)
    try:
        yield server
    finally:
        server.stop()


def test_missing_models_dialog_with_only_the_demonstration_model(bare_server):
    """Right after installing: the nano workflow opens without the dialog; the others list
    exactly their hinted files (all truly missing) and no red box (a source the dialog refuses)."""
    with headless_web_ui(bare_server.url) as browser:
        for path in UI_WORKFLOWS:
            workflow = load_workflow(path)
            models = declared_models(workflow)
            if not models:
                assert "models" not in json.dumps(workflow["nodes"]) and "models" not in workflow, path.name
                continue
            text = browser.missing_models_dialog(workflow)
            assert "Missing Models" in text, path.name
            assert not any(error in text for error in DIALOG_ERRORS), (path.name, text)
            listed = {f"{folder} / {name}" for folder, name in re.findall(r"([\w.-]+) / (\S+)", text)}
            assert listed == {f"{m['directory']} / {m['name']}" for m in models}, (path.name, text)


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
    """ComfyUI's template browser finds ``example_workflows/`` of the pack, under the name of
    the pack's folder in custom_nodes (the tests link it as ``HonestFace``), and serves each
    file and its thumbnail at the URL the frontend builds for a custom-node template
    (``/api/workflow_templates/<folder>/<name>.jpg``)."""
    status, templates = comfyui_server.request("/workflow_templates")
    assert status == 200
    assert sorted(templates.get("HonestFace", [])) == sorted(p.stem for p in UI_WORKFLOWS)
    for path in UI_WORKFLOWS:
        served = json.loads(comfyui_server.get_bytes(f"/api/workflow_templates/HonestFace/{path.name}"))
        assert served == load_workflow(path)
        thumbnail = comfyui_server.get_bytes(f"/api/workflow_templates/HonestFace/{path.stem}.jpg")
        assert thumbnail == path.with_suffix(".jpg").read_bytes()


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_workflow_has_thumbnail_and_description(path):
    """Each template has a JPEG thumbnail (``<name>.jpg``, made by
    scripts/make_template_thumbnails.py) and an "About this workflow" Note that says what it
    does and what it needs, in words beyond its file name; the demonstration model is named
    as such on the canvas."""
    with Image.open(path.with_suffix(".jpg")) as image:
        assert image.format == "JPEG" and min(image.size) >= 200, image
        colours = image.convert("L").getextrema()
        assert colours[1] - colours[0] > 100, "a blank thumbnail"
    workflow, prompt = load_workflow(path), load_workflow(API_WORKFLOWS / path.name)
    notes = [node for node in workflow["nodes"] if node["type"] == "Note" and node.get("title") == "About this workflow"]
    assert len(notes) == 1, path.name
    text = notes[0]["widgets_values"][0]
    assert text == about_text(path.stem, prompt)  # regenerated from workflow_format.py
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert len(words - set(path.stem.split("_"))) > 25, text
    assert ("Needs no model files" in text) == (not re.search(r"^- models/", text, flags=re.M)), text
    for node in prompt.values():
        if node["class_type"] == "HonestFaceModelLoader" and node["inputs"]["weights"] == "honestface-nano.safetensors":
            assert node["_meta"]["title"] == NANO_TITLE and "DEMONSTRATION model" in text


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_queue_from_the_web_ui(web_ui, comfyui_server, inputs, tiny_choices, path, tmp_path):
    """Drag in, pick the model files one has, press Queue: the prompt runs to the end, and
    the previews it shows cover no other node (geometry of the canvas graph, and a screenshot
    in the test's tmp_path to look at)."""
    api = load_workflow(API_WORKFLOWS / path.name)
    expected = with_tiny_models(api, tiny_choices)
    changed = {node_id: {name: value for name, value in node["inputs"].items() if value != api[node_id]["inputs"][name]}
               for node_id, node in expected.items()}
    _, before = comfyui_server.request("/history")
    start = time.perf_counter()
    web_ui.queue_workflow(load_workflow(path), {k: v for k, v in changed.items() if v})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            _, history = comfyui_server.request("/history")
        except (TimeoutError, OSError):
            continue  # a server busy running the prompt may answer late; the deadline decides
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
    check_layout_after_run(web_ui, entry, tmp_path / f"{path.stem}.png")


def check_layout_after_run(web_ui, entry: dict, screenshot) -> None:
    """Once every preview has loaded (which grows its node), no two nodes overlap and the
    saved view still shows every node whole, below the editor's top bar."""
    showing = [int(node_id) for node_id, output in entry["outputs"].items() if output.get("images")]
    web_ui.wait_for(
        f"{json.dumps(showing)}.every(id => {{ const n = window.app.graph.getNodeById(id);"
        " return n && n.imgs && n.imgs.length > 0 && n.imgs.every(i => i.complete); }) && "
        "window.app.graph._nodes.filter(n => n.type === 'LoadImage')"
        ".every(n => n.imgs && n.imgs.length > 0 && n.imgs.every(i => i.complete))", timeout=60)
    web_ui.close_dialogs()
    time.sleep(1.0)  # a frame or two for the frontend to resize the nodes
    web_ui.screenshot(screenshot)
    boxes = web_ui.node_boxes()
    for node_id in showing:
        assert next(b for b in boxes if b["id"] == node_id)["images"] > 0, node_id
    for a, b in combinations(boxes, 2):
        apart = a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
        assert apart, f"'{a['title']}' and '{b['title']}' overlap: {a} {b} (screenshot {screenshot})"
    free = web_ui.free_canvas_area()
    assert free["right"] == VIEWPORT[0] and free["top"] < 150 and free["left"] < 100, free
    for box in boxes:
        left, upper, right, lower = box["screen"]
        assert free["left"] <= left and right <= free["right"] and free["top"] <= upper and lower <= free["bottom"], \
            f"'{box['title']}' is not shown whole by the saved view in {free}: {box} (screenshot {screenshot})"
