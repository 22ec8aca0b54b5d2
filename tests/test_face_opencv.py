"""The cv2 check the insightface and FAN backends run first."""

from __future__ import annotations

import logging
import sys

import pytest

from honestface.errors import HonestFaceError
from honestface.face import opencv


@pytest.fixture(autouse=True)
def fresh_check():
    opencv.require_opencv.cache_clear()
    yield
    opencv.require_opencv.cache_clear()


def test_mixed_builds_that_break_cv2_give_the_repair(monkeypatch, caplog):
    monkeypatch.setattr(opencv, "installed_opencv",
                        lambda: {"opencv-python": "5.0.0.93", "opencv-python-headless": "4.10.0.84"})
    monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" raises ImportError
    with caplog.at_level(logging.WARNING, logger="honestface.face"), pytest.raises(HonestFaceError) as info:
        opencv.require_opencv("insightface")
    message = str(info.value)
    assert "opencv-python 5.0.0.93" in message and "opencv-python-headless 4.10.0.84" in message
    assert "pip install --force-reinstall --no-deps opencv-python-headless==5.0.0.93" in message
    assert any("different versions" in r.getMessage() for r in caplog.records)


def test_no_opencv_at_all_says_what_to_install(monkeypatch):
    monkeypatch.setattr(opencv, "installed_opencv", dict)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(HonestFaceError, match="pip install opencv-python-headless"):
        opencv.require_opencv("face-alignment's FAN")


def test_a_working_cv2_is_returned_without_a_warning(caplog):
    cv2 = pytest.importorskip("cv2")
    versions = set(opencv.installed_opencv().values())
    with caplog.at_level(logging.WARNING, logger="honestface.face"):
        assert opencv.require_opencv("insightface") is cv2
    assert bool(caplog.records) == (len(versions) > 1)
