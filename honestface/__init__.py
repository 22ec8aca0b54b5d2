"""HonestFace: reference-based face restoration with a one-step diffusion model.

The core library. It never imports ComfyUI; the node pack in ``nodes/`` wraps it.
"""

__version__ = "0.1.0"
