"""ComfyUI entry point of the HonestFace node pack (V3 schema).

ComfyUI imports this file from ``custom_nodes/<this folder>`` and registers the nodes that
``comfy_entrypoint`` lists. Importing it anywhere else (without ComfyUI) must work and
registers nothing. No ``NODE_CLASS_MAPPINGS``: ComfyUI's loader prefers those to
``comfy_entrypoint``, so the pack must not define them.
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
    __all__ = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]

WEB_DIRECTORY = None
