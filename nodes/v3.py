"""The one import of ComfyUI's V3 node API, and the pack's own socket types.

Pinned to ``comfy_api.v0_0_2``, not ``comfy_api.latest``: ``latest`` is marked unstable
(``ComfyAPI_latest.STABLE = False``) and changes with every ComfyUI release, while
``v0_0_2`` is the newest numbered version that both our oldest supported ComfyUI (0.3.75)
and current releases ship (current ones add ``v0_0_3``, which 0.3.75 lacks). ``v0_0_1``
is, in ComfyUI's words, only a template for future adapters. Every node module imports
``io`` and ``ui`` from here, so moving to a newer version is a change of one line.
"""

from comfy_api.v0_0_2 import ComfyExtension, io, ui  # noqa: F401  (re-exported)

#: A loaded HonestFace or OSDFace pipeline (:class:`~.handles.ModelHandle`).
HonestFaceModel = io.Custom("HONESTFACE_MODEL")
#: Landmark, identity and detector backends (:class:`~.handles.FaceAnalysis`).
FaceAnalysisType = io.Custom("FACE_ANALYSIS")
#: One person's references, encoded once (:class:`~.restore_nodes.IdentityConditioning`).
IdentityType = io.Custom("HONESTFACE_IDENTITY")
#: Visual prompt tokens of low-quality faces, (B, n3, k) float tensors.
VisualTokensType = io.Custom("HONESTFACE_TOKENS")

CATEGORY = "HonestFace"
