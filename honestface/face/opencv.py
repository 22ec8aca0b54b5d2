"""One check that ``cv2`` works, with a message that says how to repair it.

``opencv-python`` and ``opencv-python-headless`` both install the same ``cv2`` package.
insightface and face-alignment declare ``opencv-python``; many ComfyUI installs (and
HonestFace's own requirements) have the headless build. pip then keeps both, and the one
installed last owns the ``cv2`` files. That works while both are the same version and the
system has the libraries the GUI build links (libGL); otherwise ``import cv2`` fails, or
mixes files of two versions. The fix is to let one build own ``cv2`` again, see
:data:`REPAIR`.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata

from ..errors import HonestFaceError

logger = logging.getLogger("honestface.face")

VARIANTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")

REPAIR = ("pip install --force-reinstall --no-deps opencv-python-headless=={version}  "
          "(puts the headless build's cv2 back; keeps the other packages' requirements satisfied)")


def installed_opencv() -> dict[str, str]:
    """Installed OpenCV distributions -> version."""
    found = {}
    for name in VARIANTS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.lru_cache(maxsize=None)
def require_opencv(what: str = "this backend"):
    """The ``cv2`` module; a clear :class:`HonestFaceError` when it cannot be imported.

    Logs a warning (once) when several OpenCV builds of different versions are installed.
    """
    variants = installed_opencv()
    versions = set(variants.values())
    newest = max(versions, default="4.12.0.88", key=lambda v: tuple(int(p) for p in v.split(".") if p.isdigit()))
    if len(versions) > 1:
        logger.warning("Several OpenCV builds of different versions share the cv2 package (%s); if cv2 misbehaves: %s",
                       ", ".join(f"{k} {v}" for k, v in variants.items()), REPAIR.format(version=newest))
    try:
        import cv2
    except ImportError as error:
        if not variants:
            raise HonestFaceError(f"{what} needs OpenCV: pip install opencv-python-headless") from error
        raise HonestFaceError(f"{what} needs OpenCV, but 'import cv2' fails ({error}); installed: "
                              f"{', '.join(f'{k} {v}' for k, v in variants.items())}. Repair: "
                              f"{REPAIR.format(version=newest)}") from error
    return cv2
