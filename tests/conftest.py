"""Shared fixtures: where the real test faces live, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``HONESTFACE_TEST_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("HONESTFACE_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-face data set; tests that need it skip with a reason without it."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real face data not found at {path} (set HONESTFACE_TEST_DATA)")
    return path


@pytest.fixture(scope="module")
def celeba_subset(shared_data, tmp_path_factory) -> Path:
    """A training data root of links to 8 real identity folders (nothing is copied)."""
    root = tmp_path_factory.mktemp("faces")
    for folder in sorted(p for p in (shared_data / "celeba").iterdir() if p.is_dir())[:8]:
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def detector():
    """dlib's HOG face detector (offline, from the face_recognition_models package)."""
    from honestface.face import load_face_detector

    return load_face_detector("dlib")



@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state that refuses a second set-up with other
    settings (bf16 after "no"); each in-process training run starts afresh (modules that
    train use it for every test: ``pytestmark = pytest.mark.usefixtures(...)``)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
