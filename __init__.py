"""ComfyUI entry point of the HonestFace node pack.

ComfyUI imports this file from ``custom_nodes/<this folder>``. Importing it anywhere else
(without ComfyUI) must work and registers nothing.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:  # the core library lives beside this file
    # Appended, not prepended: our top-level folders (nodes, training, tests) must never
    # shadow ComfyUI's or another pack's modules of the same name.
    sys.path.append(_here)

try:
    import folder_paths  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
