"""Exceptions raised by HonestFace.

Every error a user can cause (a missing model file, a wrong checkpoint, an unreadable
image, a photo without a face) is a subclass of :class:`HonestFaceError`, so callers
(the CLI, the ComfyUI nodes) can show the message as it is instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class HonestFaceError(Exception):
    """Base class of every error HonestFace raises on purpose."""


class MissingModelFileError(HonestFaceError, FileNotFoundError):
    """A model file the user must provide is not where it belongs."""

    def __init__(self, filename: str, folder: str | Path, what: str = "", hint: str = "") -> None:
        self.filename = filename
        self.folder = str(folder)
        message = f"Model file '{filename}' not found in '{self.folder}'."
        if what:
            message = f"{what}: {message}"
        if hint:
            message += f" {hint}"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # OSError's would format as "[Errno None] None: ..."
        return self.message


class CheckpointError(HonestFaceError, ValueError):
    """A weight file is corrupt, truncated, of the wrong kind, or does not match the model."""

    def __init__(self, path: str | Path, problem: str, expected: str = "") -> None:
        self.path = str(path)
        message = f"{self.path}: {problem}"
        if expected:
            message += f" (expected {expected})"
        super().__init__(message)


class ImageError(HonestFaceError, ValueError):
    """An image cannot be read or has a shape/value the model cannot take."""


class ImageTooSmallError(ImageError):
    """An image is smaller than :data:`honestface.image_io.MIN_IMAGE_SIDE` on a side: too small to hold a face."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the reading limit (:data:`honestface.image_io.MAX_IMAGE_PIXELS`
    by default): a decompression bomb, or a photo larger than the limit allows."""

    def __init__(self, message: str, pixels: int, limit: int) -> None:
        self.pixels, self.limit = int(pixels), int(limit)
        super().__init__(message)


class NoFaceError(HonestFaceError):
    """No face (or no usable landmarks) was found where one was required."""


class ConfigError(HonestFaceError, ValueError):
    """A configuration value is invalid or inconsistent."""
