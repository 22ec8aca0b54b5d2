"""One way to open an ONNX model with onnxruntime (insightface's recogniser and detector)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, HonestFaceError


def open_onnx_session(path: str | Path, device: str = "cpu", what: str = "this backend"):
    """An ``onnxruntime.InferenceSession`` on the CUDA provider when asked for and present.

    Raises:
        HonestFaceError: onnxruntime is not installed.
        CheckpointError: the file is not a model onnxruntime can load.
    """
    try:
        import onnxruntime as ort
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise HonestFaceError(f"{what} needs onnxruntime (pip install onnxruntime)") from error
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise CheckpointError(path, f"onnxruntime cannot load it ({error})") from error
