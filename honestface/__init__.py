"""HonestFace: reference-based face restoration with a one-step diffusion model.

The core library. It never imports ComfyUI; the node pack in ``nodes/`` wraps it.
"""

from honestface.third_party_logs import silence_third_party_noise

__version__ = "0.1.0"

# Before anything imports diffusers (and through it bitsandbytes): the CLI, the demo and
# the ComfyUI nodes all import this package first.
silence_third_party_noise()
