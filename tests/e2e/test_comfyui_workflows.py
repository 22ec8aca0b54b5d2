"""The example workflows and the error paths, run by a real ComfyUI server.

Each ``example_workflows/api/*.json`` is queued with ``POST /prompt`` (model names rewritten to the
tiny models, input images from the real test data copied into the server's input folder)
and must finish with images of the right size, in range, and different from the input.
Errors a user can make must come back as ComfyUI ``node_errors`` or an ``execution_error``
carrying HonestFace's message, and the server must go on serving.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_server import API_WORKFLOWS, TIMINGS, execution_error, load_workflow, with_tiny_models

pytestmark = pytest.mark.e2e

def saved_images(comfyui_server, entry: dict, node_id: str) -> list[np.ndarray]:
    images = entry["outputs"][node_id]["images"]
    arrays = []
    for image in images:
        folder = comfyui_server.output_dir if image["type"] == "output" else comfyui_server.base_dir / "temp"
        path = folder / image["subfolder"] / image["filename"]
        arrays.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
    return arrays


def input_array(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def run(comfyui_server, name: str, prompt: dict) -> dict:
    entry, seconds = comfyui_server.run_prompt(prompt, timeout=900)
    TIMINGS[name] = seconds
    error = execution_error(entry)
    assert error is None, f"{name} failed: {json.dumps(error, indent=1)[:4000]}\n{comfyui_server.log()}"
    assert entry["status"]["status_str"] == "success"
    return entry


def assert_restored(output: np.ndarray, source: np.ndarray) -> None:
    assert output.shape == source.shape, (output.shape, source.shape)
    assert np.isfinite(output).all() and output.min() >= 0.0 and output.max() <= 1.0
    assert np.abs(output - source).mean() > 1e-3, "output is identical to the input"


def test_restore_without_references(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "osdface_restore_without_references.json"), tiny_choices)
    entry = run(comfyui_server, "osdface_restore_without_references", prompt)
    [restored] = saved_images(comfyui_server, entry, "4")
    assert_restored(restored, input_array(inputs["honestface_lq_face.png"]))
    report = entry["outputs"]["6"]["text"][0]
    assert "different codebook entries" in report and "[" not in report, report  # words, no code lists


def test_restore_with_references(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_restore_with_references.json"), tiny_choices)
    entry = run(comfyui_server, "honestface_restore_with_references", prompt)
    [restored] = saved_images(comfyui_server, entry, "11")
    assert_restored(restored, input_array(inputs["honestface_lq_face.png"]))
    [chosen] = saved_images(comfyui_server, entry, "12")
    references = [input_array(inputs[f"honestface_reference_{i}.png"]) for i in (1, 2, 3)]
    # The chosen reference is one of the references (at the model's size, so compare coarsely).
    chosen_small = np.asarray(Image.fromarray((chosen * 255).astype(np.uint8)).resize((32, 32)), np.float32) / 255
    distances = [np.abs(chosen_small - np.asarray(Image.fromarray((r * 255).astype(np.uint8)).resize((32, 32)),
                                                  np.float32) / 255).mean() for r in references]
    assert min(distances) < 0.03, distances
    [eyes] = saved_images(comfyui_server, entry, "13")
    assert eyes.shape[1] == 2 * eyes.shape[0]  # left and right eye side by side
    # The embedder shows the same two pictures on the node itself.
    on_node = saved_images(comfyui_server, entry, "9")
    assert len(on_node) == 2
    np.testing.assert_allclose(on_node[0], chosen, atol=1.5 / 255)
    np.testing.assert_allclose(on_node[1], eyes, atol=1.5 / 255)


def test_restore_with_the_built_in_nano_model(comfyui_server, inputs, tiny_choices):
    """The shipped demonstration model: no model file, no base model, references used."""
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_nano_restore_with_references.json"),
                              tiny_choices)
    assert prompt["7"]["inputs"]["weights"] == "honestface-nano.safetensors"
    assert prompt["7"]["inputs"]["base_model"] == "none"
    entry = run(comfyui_server, "honestface_nano_restore_with_references", prompt)
    [restored] = saved_images(comfyui_server, entry, "11")
    lq = input_array(inputs["honestface_lq_face.png"])
    assert_restored(restored, lq)
    # a face comes back, not noise: close to the input at low resolution
    small = lambda a: np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((16, 16)), np.float32) / 255
    assert np.abs(small(restored) - small(lq)).mean() < 0.1


def test_restore_whole_photo(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_restore_whole_photo.json"), tiny_choices)
    entry = run(comfyui_server, "honestface_restore_whole_photo", prompt)
    [photo] = saved_images(comfyui_server, entry, "5")
    source = input_array(inputs["honestface_photo.png"])
    assert_restored(photo, source)
    # Outside the faces the photo is unchanged: most pixels are kept exactly (up to PNG rounding).
    unchanged = (np.abs(photo - source) < 1.5 / 255).all(axis=-1).mean()
    assert unchanged > 0.3, unchanged
    report = entry["outputs"]["7"]["text"][0]
    assert "face(s) found" in report
    faces = saved_images(comfyui_server, entry, "6")
    assert faces and all(face.shape[0] == face.shape[1] for face in faces)  # aligned square crops

    # With a HonestFace checkpoint and references, on the first face only, at half strength.
    with_refs = copy.deepcopy(prompt)
    with_refs["2"]["inputs"]["weights"] = tiny_choices["honestface"]
    with_refs["30"] = {"class_type": "LoadImage", "inputs": {"image": "honestface_reference_1.png"}}
    with_refs["4"]["inputs"].update(references=["30", 0], face_indices="0", strength=0.5)
    entry = run(comfyui_server, "honestface_restore_whole_photo (references, face 0)", with_refs)
    [photo_refs] = saved_images(comfyui_server, entry, "5")
    assert_restored(photo_refs, source)
    assert np.abs(photo_refs - photo).mean() > 1e-4
    report = entry["outputs"]["7"]["text"][0]
    assert "restored [0]" in report
    # One selected face: it gets the references (ref_match "identity" decides between several).
    assert "face 0 with references, identity distance" in report, report

    # The raw photo itself as the reference, encoded once by the Identity Embedder (which
    # previews the aligned reference and its eye patches on the node): the face matches.
    same_person = copy.deepcopy(prompt)
    same_person["2"]["inputs"]["weights"] = tiny_choices["honestface"]
    same_person["31"] = {"class_type": "HonestFaceIdentityEmbedder", "inputs": {
        "model": ["2", 0], "face_analysis": ["3", 0], "references": ["1", 0]}}
    same_person["4"]["inputs"].update(identity=["31", 0], face_indices="0")
    entry = run(comfyui_server, "honestface_restore_whole_photo (raw photo reference via identity)", same_person)
    report = entry["outputs"]["7"]["text"][0]
    assert "face 0 with references, identity distance" in report, report
    previews = entry["outputs"]["31"]["images"]
    assert [p["type"] for p in previews] == ["temp", "temp"], previews
    aligned_ref, eyes = saved_images(comfyui_server, entry, "31")
    assert aligned_ref.shape[0] == aligned_ref.shape[1] and eyes.shape[1] == 2 * eyes.shape[0]


def test_whole_photo_batch_with_a_no_face_frame(comfyui_server, inputs, tiny_choices):
    """A batch of frames, one without a face: that frame passes through unchanged, the others
    are restored, and the MASK output says where faces were pasted."""
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_restore_whole_photo.json"), tiny_choices)
    prompt["40"] = {"class_type": "LoadImage", "inputs": {"image": "honestface_blank.png"}}
    prompt["41"] = {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["40", 0]}}
    prompt["4"]["inputs"]["image"] = ["41", 0]
    entry = run(comfyui_server, "whole photo: batch with a no-face frame", prompt)
    photo, frame = saved_images(comfyui_server, entry, "5")
    source = input_array(inputs["honestface_photo.png"])
    assert_restored(photo, source)
    np.testing.assert_allclose(frame, 128 / 255, atol=1.5 / 255)  # the gray frame, untouched
    report = entry["outputs"]["7"]["text"][0]
    assert "photo 1: no face found, passed through unchanged" in report, report
    face_mask, empty_mask = (m[..., 0] for m in saved_images(comfyui_server, entry, "8"))
    assert face_mask.shape == photo.shape[:2] and empty_mask.max() == 0.0
    assert 0.005 < (face_mask > 0.5).mean() < 0.5 and face_mask.max() > 0.99
    changed = np.abs(photo - source).max(axis=-1) > 1.5 / 255
    assert face_mask[changed].min() > 0.0  # nothing changed outside the mask
    assert (changed & (face_mask > 0.5)).sum() > 0.5 * (face_mask > 0.5).sum()

    # A MASK input limits pasting: only the left half of the photo may change.
    height, width = source.shape[:2]
    limited = copy.deepcopy(prompt)
    limited["4"]["inputs"]["image"] = ["1", 0]
    limited["42"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": width, "height": height}}
    limited["43"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": width // 2, "height": height}}
    limited["44"] = {"class_type": "MaskComposite", "inputs": {"destination": ["42", 0], "source": ["43", 0],
                                                               "x": 0, "y": 0, "operation": "add"}}
    limited["4"]["inputs"]["mask"] = ["44", 0]
    entry = run(comfyui_server, "whole photo: limited to the left half", limited)
    [half] = saved_images(comfyui_server, entry, "5")
    [half_mask] = (m[..., 0] for m in saved_images(comfyui_server, entry, "8"))
    right = slice(width // 2 + 1, None)
    np.testing.assert_allclose(half[:, right], source[:, right], atol=1.5 / 255)
    assert half_mask[:, right].max() == 0.0
    face_left = face_mask[:, : width // 2] > 0.5
    if face_left.any():  # the face (or part of it) lies in the allowed half: restored there
        assert np.abs(half - source)[:, : width // 2][face_left].mean() > 1e-3

    # on_no_face "error": the run stops and names the frame.
    strict = copy.deepcopy(prompt)
    strict["4"]["inputs"]["on_no_face"] = "error"
    entry, _ = comfyui_server.run_prompt(strict)
    error = execution_error(entry)
    assert error is not None and error["node_type"] == "HonestFaceRestorePhoto", error
    assert error["exception_type"].endswith("NoFaceError") and "photo 1" in error["exception_message"], error


def test_mfa_mask(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_mfa_mask.json"), tiny_choices)
    entry = run(comfyui_server, "honestface_mfa_mask", prompt)
    [mask] = saved_images(comfyui_server, entry, "5")
    [overlay] = saved_images(comfyui_server, entry, "6")
    source = input_array(inputs["honestface_lq_face.png"])
    assert mask.shape == overlay.shape == source.shape
    gray = mask[..., 0]
    assert gray.max() > 0.9 and gray.min() < 0.1  # min-max normalised (Eq. 11)
    # The mask attends to the centre of an aligned face (eyes, nose, mouth), not the corners.
    h, w = gray.shape
    centre = gray[h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean()
    corners = np.mean([gray[:h // 8, :w // 8].mean(), gray[:h // 8, -w // 8:].mean()])
    assert centre > corners + 0.05, (centre, corners)
    assert_restored(overlay, source)
    # The MFA node shows its overlay on itself (ui.images in ComfyUI's temp folder), like Preview Image.
    [shown] = saved_images(comfyui_server, entry, "3")
    assert entry["outputs"]["3"]["images"][0]["type"] == "temp"
    np.testing.assert_allclose(shown, overlay, atol=1.5 / 255)


def test_ald_score(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_ald_score.json"), tiny_choices)
    entry = run(comfyui_server, "honestface_ald_score", prompt)
    values = {name: float(entry["outputs"][node]["text"][0]) for name, node in
              (("ALD-e", "5"), ("ALD-m", "6"), ("L2-LD", "7"), ("Deg.", "8"))}
    assert all(np.isfinite(v) and v >= 0 for v in values.values()), values
    assert 0 < values["Deg."] < 90, values  # same person: a small angle, but not identical images
    report = entry["outputs"]["10"]["text"][0]
    assert report.startswith("image 0: eye landmark fit ") and "(landmarks: dlib)" in report, report
    [overlay] = saved_images(comfyui_server, entry, "9")
    assert_restored(overlay, input_array(inputs["honestface_restored.png"]))
    [shown] = saved_images(comfyui_server, entry, "4")  # the landmarks, shown on the A-LD node itself
    assert entry["outputs"]["4"]["images"][0]["type"] == "temp"
    np.testing.assert_allclose(shown, overlay, atol=1.5 / 255)

    # Scoring an image against itself gives zero distances and a zero angle.
    same = copy.deepcopy(prompt)
    same["2"]["inputs"]["image"] = "honestface_restored.png"
    entry = run(comfyui_server, "honestface_ald_score (self)", same)
    for node in ("5", "6", "7"):
        assert float(entry["outputs"][node]["text"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(entry["outputs"]["8"]["text"][0]) == pytest.approx(0.0, abs=0.5)

    # ArcFace (ONNX, insightface layout) found through extra_model_paths.yaml: a finite angle.
    arcface = copy.deepcopy(prompt)
    arcface["3"]["inputs"]["identity_backend"] = "arcface-onnx"
    entry = run(comfyui_server, "honestface_ald_score (ArcFace ONNX)", arcface)
    assert 0.0 <= float(entry["outputs"]["8"]["text"][0]) <= 180.0


def mfa_prompt(tiny_choices, k: float) -> dict:
    """The MFA workflow with its own k: ComfyUI reuses cached outputs of an identical prompt,
    a new value makes the server really run the graph."""
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_mfa_mask.json"), tiny_choices)
    prompt["3"]["inputs"]["k"] = k
    return prompt


def test_invalid_input_is_refused_with_node_errors(comfyui_server, inputs, tiny_choices):
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "osdface_restore_without_references.json"), tiny_choices)
    prompt["2"]["inputs"]["weights"] = "no-such-weights.safetensors"
    status, answer = comfyui_server.queue_prompt(prompt)
    assert status == 400
    assert "2" in answer["node_errors"], answer
    assert "no-such-weights.safetensors" in json.dumps(answer["node_errors"]["2"])


def test_execution_errors_carry_honestface_messages(comfyui_server, inputs, tiny_choices):
    # No face in the image: the A-LD node says so.
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_ald_score.json"), tiny_choices)
    prompt["1"]["inputs"]["image"] = "honestface_blank.png"
    entry, _ = comfyui_server.run_prompt(prompt)
    error = execution_error(entry)
    assert error is not None and error["node_type"] == "HonestFaceALDScore", error
    assert "no face landmarks found in the restored faces" in error["exception_message"]
    assert error["exception_type"].endswith("NoFaceError")

    # A malformed option: refused when queued (before any model loads), with what to write instead.
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_restore_whole_photo.json"), tiny_choices)
    prompt["4"]["inputs"]["face_indices"] = "first"
    status, answer = comfyui_server.queue_prompt(prompt)
    assert status == 400 and "4" in answer["node_errors"], answer
    details = json.dumps(answer["node_errors"]["4"])
    assert "face_indices must be 'all' or comma-separated numbers" in details and "write 'all'" in details, details

    # References with OSDFace weights: refused with the reason.
    prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "honestface_restore_with_references.json"), tiny_choices)
    prompt["7"]["inputs"]["weights"] = tiny_choices["osdface"]
    entry, _ = comfyui_server.run_prompt(prompt)
    error = execution_error(entry)
    assert error is not None and "restores without references" in error["exception_message"], error

    # The server keeps serving.
    run(comfyui_server, "honestface_mfa_mask (after errors)", mfa_prompt(tiny_choices, k=11.0))


def test_wrong_and_missing_weight_files(comfyui_server, inputs, tiny_choices, tiny_models_dir):
    honestface_dir = tiny_models_dir / "honestface"
    broken = honestface_dir / "not-a-checkpoint.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    incomplete = honestface_dir / "OSDFace-incomplete"
    shutil.copytree(honestface_dir / tiny_choices["osdface"], incomplete)
    (incomplete / "associate_2.ckpt").unlink()
    try:
        prompt = with_tiny_models(load_workflow(API_WORKFLOWS / "osdface_restore_without_references.json"),
                                  tiny_choices)
        prompt["2"]["inputs"]["weights"] = broken.name
        prompt["2"]["inputs"]["osdface_folder"] = tiny_choices["osdface"]
        entry, _ = comfyui_server.run_prompt(prompt)
        error = execution_error(entry)
        assert error is not None and error["node_type"] == "HonestFaceModelLoader", error
        assert broken.name in error["exception_message"]
        assert error["exception_type"].endswith("CheckpointError"), error["exception_type"]

        prompt["2"]["inputs"]["weights"] = incomplete.name
        prompt["2"]["inputs"]["osdface_folder"] = "auto"
        entry, _ = comfyui_server.run_prompt(prompt)
        error = execution_error(entry)
        assert error is not None and "associate_2.ckpt" in error["exception_message"], error
        assert incomplete.name in error["exception_message"]
    finally:
        broken.unlink()
        shutil.rmtree(incomplete)
    after = with_tiny_models(load_workflow(API_WORKFLOWS / "osdface_restore_without_references.json"), tiny_choices)
    after["3"]["inputs"]["color_correction"] = "adain"  # not a cached result: the graph runs again
    run(comfyui_server, "osdface_restore_without_references (after errors)", after)


def test_unload_models_node(comfyui_server, inputs, tiny_choices):
    run(comfyui_server, "honestface_mfa_mask (load)", mfa_prompt(tiny_choices, k=9.0))
    entry = run(comfyui_server, "unload", {"1": {"class_type": "HonestFaceUnloadModels", "inputs": {}}})
    text = entry["outputs"]["1"]["text"][0]
    assert text.startswith("released ") and int(text.split()[1]) >= 1, text
    # Loading again after the unload works.
    run(comfyui_server, "honestface_mfa_mask (after unload)", mfa_prompt(tiny_choices, k=12.0))


def test_align_face_and_reference_selector(comfyui_server, inputs, tiny_choices):
    """The two helper nodes the example workflows do not use, in one prompt."""
    analysis = {"class_type": "HonestFaceAnalysisLoader", "inputs": {
        "landmark_backend": "dlib", "identity_backend": "dlib", "identity_model": "default",
        "detector": "dlib-hog", "device": "auto"}}
    load = lambda name: {"class_type": "LoadImage", "inputs": {"image": name}}  # noqa: E731
    prompt = {
        "1": analysis,
        "2": load("honestface_photo.png"),
        "3": {"class_type": "HonestFaceAlignFace", "inputs": {"face_analysis": ["1", 0], "images": ["2", 0],
                                                             "size": 256, "face_index": 0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "HonestFace/aligned"}},
        "5": load("honestface_lq_face.png"),
        "6": load("honestface_reference_1.png"),
        "7": load("honestface_reference_2.png"),
        "8": load("honestface_reference_3.png"),
        "9": {"class_type": "ImageBatch", "inputs": {"image1": ["6", 0], "image2": ["7", 0]}},
        "10": {"class_type": "ImageBatch", "inputs": {"image1": ["9", 0], "image2": ["8", 0]}},
        "11": {"class_type": "HonestFaceReferenceSelector", "inputs": {
            "face_analysis": ["1", 0], "references": ["10", 0], "lq_face": ["5", 0], "subset": "eyes"}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "HonestFace/best"}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["11", 2]}},
        "14": {"class_type": "PreviewAny", "inputs": {"source": ["11", 1]}},
    }
    entry = run(comfyui_server, "align face + reference selector", prompt)
    [aligned] = saved_images(comfyui_server, entry, "4")
    assert aligned.shape == (256, 256, 3) and aligned.std() > 0.05
    distances = [float(part.split(": ")[1]) for part in entry["outputs"]["13"]["text"][0].split(", ")]
    index = int(entry["outputs"]["14"]["text"][0])
    assert len(distances) == 3 and index == int(np.argmin(distances))
    [best] = saved_images(comfyui_server, entry, "12")
    np.testing.assert_allclose(best, input_array(inputs[f"honestface_reference_{index + 1}.png"]), atol=1 / 255)
    [on_node] = saved_images(comfyui_server, entry, "11")  # the preview on the selector itself
    np.testing.assert_allclose(on_node, best, atol=1.5 / 255)

    # A photo without a face: the alignment node says which image has none.
    prompt["2"] = load("honestface_blank.png")
    entry, _ = comfyui_server.run_prompt(prompt)
    error = execution_error(entry)
    assert error is not None and error["node_type"] == "HonestFaceAlignFace", error
    assert "image 0 of the batch has 0 face(s)" in error["exception_message"]


def test_cancel_stops_a_long_batch_inside_the_node(comfyui_server, inputs, tiny_choices):
    """Pressing Cancel (POST /interrupt) stops the restore node between faces, not at its end."""
    workflow = with_tiny_models(load_workflow(API_WORKFLOWS / "osdface_restore_without_references.json"),
                                tiny_choices)
    run(comfyui_server, "osdface_restore_without_references (warm)", workflow)  # model loaded and cached
    prompt = {key: workflow[key] for key in ("1", "2", "3", "4")}
    prompt["20"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                           "width": 64, "height": 64, "crop": "disabled"}}
    prompt["21"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["20", 0], "amount": 4000}}
    prompt["3"]["inputs"]["lq_face"] = ["21", 0]
    status, answer = comfyui_server.queue_prompt(prompt)
    assert status == 200, answer
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it runs, then a little longer
        _, queue = comfyui_server.request("/queue")
        if any(item[1] == answer["prompt_id"] for item in queue["queue_running"]):
            break
        time.sleep(0.1)
    time.sleep(3.0)
    cancelled_at = time.monotonic()
    comfyui_server.request("/interrupt", {})
    entry = comfyui_server.wait_for_history(answer["prompt_id"], timeout=300)
    stopped_after = time.monotonic() - cancelled_at
    TIMINGS["cancel: seconds from /interrupt to stop"] = stopped_after
    interrupted = [data for name, data in entry["status"]["messages"] if name == "execution_interrupted"]
    assert interrupted, entry["status"]
    assert interrupted[0]["node_type"] == "HonestFaceRestoreAligned", interrupted
    assert stopped_after < 10.0, stopped_after
    assert "4" not in entry.get("outputs", {})  # nothing was saved
    run(comfyui_server, "honestface_mfa_mask (after cancel)", mfa_prompt(tiny_choices, k=13.0))
