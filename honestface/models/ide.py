"""Identity embedder (IDE, paper Sec. 3.2): reference choice, FFE and FIE.

- Reference choice (Eq. 6): the reference whose landmarks are closest to the LQ face's in
  affine landmark distance (:func:`honestface.metrics.landmark.affine_landmark_distance`).
- Facial feature extractor (FFE, Fig. 2): both eye patches of the chosen reference go
  through a frozen VGG16; an early stage gives a colour embedding (channel means and
  standard deviations), a deeper stage a structure embedding (pooled feature map), per
  eye. The four embeddings are concatenated and projected to ``p_F`` (B, 4, k).
- Face identity encoder (FIE, Fig. 3): identity embeddings of all N references are pooled
  by attention with learned queries into ``p_I`` (B, 7, k). A learned "no identity" token
  is always attendable, so padded references are masked and N = 0 stays finite.

Images are (B, 3, H, W) in [0, 1]; landmarks (B, 68, 2) pixel (x, y) in the 68-point
scheme; references are padded to (B, N, ...) with a boolean ``reference_mask`` (B, N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IDEConfig
from .vgg import VGG16_STAGE_CHANNELS, VGG16Features

LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
#: Eye centres and eye width of an FFHQ-aligned face, as fractions of the image size.
#: Used for references without landmarks (aligned faces, or no landmark backend).
TEMPLATE_EYE_CENTERS = ((0.375, 0.47), (0.625, 0.47))
TEMPLATE_EYE_WIDTH = 0.11


# --------------------------------------------------------------------- reference choice
def select_reference(lq_landmarks: torch.Tensor | None, reference_landmarks: torch.Tensor | None,
                     reference_mask: torch.Tensor, subset: str = "eyes") -> torch.Tensor:
    """Eq. 6: index (B,) of the reference with the smallest A-LD to the LQ landmarks.

    Args:
        lq_landmarks: (B, 68, 2) or None.
        reference_landmarks: (B, N, 68, 2) or None; NaN rows for references without a face.
        reference_mask: (B, N) bool, True for real (non-padded) references.
        subset: landmark subset of the distance ("eyes", "mouth", "all").

    References that are padded or have no landmarks are never chosen while another one
    has a finite distance; without any finite distance the first real reference is used.
    """
    from ..metrics.landmark import affine_landmark_distance

    first_valid = reference_mask.long().argmax(dim=1)
    if lq_landmarks is None or reference_landmarks is None or reference_mask.shape[1] == 0:
        return first_valid
    with torch.no_grad():
        # degenerate="nan": a collinear set (a failed detection) rules out that reference
        # only, not the choice for the whole batch.
        distance = affine_landmark_distance(reference_landmarks.double(), lq_landmarks.double().unsqueeze(1),
                                            subset=subset, degenerate="nan")
        distance = torch.where(torch.isfinite(distance) & reference_mask, distance,
                               torch.full_like(distance, float("inf")))
        best = distance.argmin(dim=1)
        any_finite = torch.isfinite(distance).any(dim=1)
    return torch.where(any_finite, best, first_valid)


# --------------------------------------------------------------------------- eye crops
def eye_boxes(landmarks: torch.Tensor | None, image_size: tuple[int, int], margin: float,
              batch: int | None = None) -> torch.Tensor:
    """Square boxes (B, 2, 4) ``x0, y0, x1, y1`` around the left (36-41) and right (42-47) eye.

    The side is the eye width times ``1 + 2 * margin`` (at least 4 pixels). Rows whose
    landmarks are missing (None or NaN) use the aligned-face template.
    """
    height, width = image_size
    if landmarks is None:
        if batch is None:
            raise ValueError("eye_boxes needs landmarks or a batch size")
        landmarks = torch.full((batch, 68, 2), float("nan"))
    landmarks = landmarks.float()
    device = landmarks.device
    centers, sides = [], []
    for eye, (tx, ty) in zip((LEFT_EYE, RIGHT_EYE), TEMPLATE_EYE_CENTERS):
        points = landmarks[:, list(eye)]  # (B, 6, 2)
        center = points.mean(dim=1)
        eye_width = points[..., 0].amax(dim=1) - points[..., 0].amin(dim=1)
        template_center = torch.tensor([tx * width, ty * height], device=device).expand_as(center)
        template_width = torch.full_like(eye_width, TEMPLATE_EYE_WIDTH * width)
        missing = ~torch.isfinite(points).flatten(1).all(dim=1)
        centers.append(torch.where(missing.unsqueeze(1), template_center, center))
        sides.append(torch.where(missing, template_width, eye_width))
    center = torch.stack(centers, dim=1)  # (B, 2, 2)
    half = (torch.stack(sides, dim=1) * (1.0 + 2.0 * margin)).clamp_min(4.0) / 2.0  # (B, 2)
    return torch.cat([center - half.unsqueeze(-1), center + half.unsqueeze(-1)], dim=-1)


def crop_eye_patches(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops (B, 2, 3, size, size) of ``boxes`` (B, 2, 4) from (B, 3, H, W) images.

    Differentiable with respect to the images (torchvision's roi_align).
    """
    from torchvision.ops import roi_align

    batch, dtype = images.shape[0], images.dtype
    # float32: roi_align has no half-precision CPU kernel, and the patches are small.
    index = torch.arange(batch, device=images.device, dtype=torch.float32).repeat_interleave(2).unsqueeze(1)
    rois = torch.cat([index, boxes.reshape(-1, 4).to(device=images.device, dtype=torch.float32)], dim=1)
    patches = roi_align(images.float(), rois, output_size=(size, size), spatial_scale=1.0,
                        sampling_ratio=2, aligned=True)
    return patches.reshape(batch, 2, images.shape[1], size, size).to(dtype)


# ------------------------------------------------------------------------------- FFE
def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class FacialFeatureExtractor(nn.Module):
    """Eye patches of the chosen reference -> ``p_F`` (B, num_feature_tokens, k)."""

    def __init__(self, config: IDEConfig, token_dim: int,
                 vgg_state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = config
        self.vgg = VGG16Features(max(config.color_stage, config.structure_stage), vgg_state_dict)
        color_channels = VGG16_STAGE_CHANNELS[config.color_stage]
        structure_channels = VGG16_STAGE_CHANNELS[config.structure_stage]
        d = config.feature_dim
        self.color_head = _mlp(2 * color_channels, d, d)
        self.structure_head = _mlp(structure_channels * config.structure_pool ** 2, d, d)
        self.projection = nn.Linear(4 * d, config.num_feature_tokens * token_dim)
        self.num_tokens = config.num_feature_tokens
        self.token_dim = token_dim

    def forward(self, reference: torch.Tensor, landmarks: torch.Tensor | None) -> torch.Tensor:
        """reference (B, 3, H, W) in [0, 1], landmarks (B, 68, 2) or None -> (B, n1, k)."""
        batch = reference.shape[0]
        boxes = eye_boxes(landmarks.to(reference.device) if landmarks is not None else None,
                          tuple(reference.shape[-2:]), self.config.eye_margin, batch)
        patches = crop_eye_patches(reference, boxes.to(reference.device), self.config.eye_patch_size)
        stages = self.vgg(patches.flatten(0, 1))  # each (2B, C, h, w)
        color = stages[self.config.color_stage]
        color = torch.cat([color.mean(dim=(2, 3)), color.std(dim=(2, 3))], dim=1)
        structure = F.adaptive_avg_pool2d(stages[self.config.structure_stage], self.config.structure_pool)
        color = self.color_head(color).view(batch, 2, -1)  # (B, 2 eyes, d)
        structure = self.structure_head(structure.flatten(1)).view(batch, 2, -1)
        # Order: colour left, structure left, colour right, structure right.
        embeddings = torch.stack([color, structure], dim=2).flatten(1)  # (B, 4 * d)
        return self.projection(embeddings).view(batch, self.num_tokens, self.token_dim)


# ------------------------------------------------------------------------------- FIE
class FaceIdentityEncoder(nn.Module):
    """Attention pooling of N identity embeddings into ``p_I`` (B, num_identity_tokens, k)."""

    def __init__(self, config: IDEConfig, token_dim: int) -> None:
        super().__init__()
        self.input_projection = nn.Linear(config.identity_dim, token_dim)
        self.queries = nn.Parameter(torch.randn(config.num_identity_tokens, token_dim) * token_dim ** -0.5)
        self.null_token = nn.Parameter(torch.zeros(1, token_dim))
        self.attention = nn.MultiheadAttention(token_dim, config.pool_heads, batch_first=True)
        self.norm = nn.LayerNorm(token_dim)
        self.feed_forward = _mlp(token_dim, 2 * token_dim, token_dim)
        self.identity_dim = config.identity_dim
        if config.center_identity:
            # set from the training data (training/train.py), stored with the checkpoint
            self.register_buffer("identity_center", torch.zeros(config.identity_dim))
        else:
            self.identity_center = None

    def forward(self, embeddings: torch.Tensor | None, mask: torch.Tensor | None,
                batch: int | None = None) -> torch.Tensor:
        """embeddings (B, N, D) (None or N = 0: no identity), mask (B, N) bool -> (B, n2, k)."""
        if embeddings is None:
            if batch is None:
                raise ValueError("FaceIdentityEncoder needs embeddings or a batch size")
            embeddings = self.queries.new_zeros(batch, 0, self.identity_dim)
        batch, count = embeddings.shape[:2]
        if mask is None:
            mask = torch.ones(batch, count, dtype=torch.bool, device=embeddings.device)
        embeddings = embeddings.to(self.queries.dtype)
        if self.identity_center is not None:
            embeddings = embeddings - self.identity_center.to(embeddings.dtype)
        # Unit-length embeddings: recognisers' scales differ, their directions carry identity.
        keys = self.input_projection(F.normalize(embeddings, dim=-1))
        keys = torch.cat([self.null_token.expand(batch, 1, -1), keys], dim=1)
        ignore = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=mask.device), ~mask.bool()], dim=1)
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1)
        pooled, _ = self.attention(queries, keys, keys, key_padding_mask=ignore, need_weights=False)
        tokens = self.norm(queries + pooled)
        return tokens + self.feed_forward(tokens)


@dataclass
class ReferenceTokens:
    """What the IDE computes from the references alone (no LQ face): the part of the
    conditioning that is computed once per reference set and shared by every face.

    The FFE runs on every reference (Eq. 6 picks one per LQ face afterwards, by landmarks
    only), so choosing needs no network call.
    """

    feature_tokens: torch.Tensor  # (B, N, n1, k) p_F of every reference (zeros where padded)
    identity_tokens: torch.Tensor  # (B, n2, k) p_I of the whole set
    mask: torch.Tensor  # (B, N) bool, True for real references
    landmarks: torch.Tensor | None = None  # (B, N, 68, 2) for Eq. 6 (NaN: unknown); None: first reference

    def __post_init__(self) -> None:
        batch, count = self.mask.shape
        if self.feature_tokens.dim() != 4 or tuple(self.feature_tokens.shape[:2]) != (batch, count):
            raise ValueError(f"feature_tokens must be (B, N, n1, k) with (B, N) = {(batch, count)}, "
                             f"got {tuple(self.feature_tokens.shape)}")
        if self.identity_tokens.dim() != 3 or self.identity_tokens.shape[0] != batch:
            raise ValueError(f"identity_tokens must be (B, n2, k) with B = {batch}, got {tuple(self.identity_tokens.shape)}")
        if self.landmarks is not None and tuple(self.landmarks.shape[:2]) != (batch, count):
            raise ValueError(f"landmarks must be (B, N, 68, 2) with (B, N) = {(batch, count)}, "
                             f"got {tuple(self.landmarks.shape)}")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ReferenceTokens":
        """Tokens in ``dtype`` on ``device``; the mask and the landmarks keep their types."""
        return ReferenceTokens(self.feature_tokens.to(device=device, dtype=dtype),
                               self.identity_tokens.to(device=device, dtype=dtype), self.mask.to(device),
                               None if self.landmarks is None else self.landmarks.to(device))

    @staticmethod
    def stack(items: "list[ReferenceTokens | None]", landmarks: torch.Tensor | None = None) -> "ReferenceTokens":
        """One row per face from per-set tokens (each with B = 1), padded to the largest N.

        ``None`` rows have no reference (the model gives them the visual prompt alone).
        ``landmarks`` (B, N, 68, 2) of the padded batch, or None (Eq. 6 then takes the
        first reference). Float32 on the CPU.
        """
        present = [t for t in items if t is not None]
        if not present:
            raise ValueError("ReferenceTokens.stack needs at least one row with references")
        count = max(int(t.mask.shape[1]) for t in present)
        n1, k = present[0].feature_tokens.shape[2:]
        batch = len(items)
        features = torch.zeros(batch, count, n1, k)
        identities = torch.zeros(batch, *present[0].identity_tokens.shape[1:])
        mask = torch.zeros(batch, count, dtype=torch.bool)
        for row, tokens in enumerate(items):
            if tokens is not None:
                n = int(tokens.mask.shape[1])
                features[row, :n] = tokens.feature_tokens[0].float().cpu()
                identities[row] = tokens.identity_tokens[0].float().cpu()
                mask[row, :n] = tokens.mask[0].cpu()
        return ReferenceTokens(features, identities, mask, landmarks)


@dataclass
class IDEOutput:
    feature_tokens: torch.Tensor  # (B, n1, k) p_F
    identity_tokens: torch.Tensor  # (B, n2, k) p_I
    reference_index: torch.Tensor  # (B,) chosen reference r0


class IdentityEmbedder(nn.Module):
    """FFE + FIE with the reference choice of Eq. 6.

    Two steps, so the reference side is computed once per reference set:
    :meth:`encode` (references only -> :class:`ReferenceTokens`) and :meth:`choose` (the LQ
    face's landmarks pick a reference, Eq. 6). :meth:`forward` is both.
    """

    def __init__(self, config: IDEConfig, token_dim: int,
                 vgg_state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = config
        self.token_dim = token_dim
        #: None where the config switches the branch off (``use_ffe`` / ``use_fie``): no tokens
        self.feature_extractor = (FacialFeatureExtractor(config, token_dim, vgg_state_dict)
                                  if config.use_ffe else None)
        self.identity_encoder = FaceIdentityEncoder(config, token_dim) if config.use_fie else None

    @property
    def num_feature_tokens(self) -> int:
        """n1 of the prompt: 0 without the FFE."""
        return self.config.num_feature_tokens if self.feature_extractor is not None else 0

    def encode(self, references: torch.Tensor, reference_mask: torch.Tensor,
               reference_landmarks: torch.Tensor | None = None,
               identity_embeddings: torch.Tensor | None = None) -> ReferenceTokens:
        """
        Args:
            references: (B, N, 3, H, W) in [0, 1], padded.
            reference_mask: (B, N) bool, True for real references.
            reference_landmarks: (B, N, 68, 2), or None (template eye positions, first reference).
            identity_embeddings: (B, N, D), or None (no identity tokens beyond the null token).
        """
        batch, count = references.shape[:2]
        reference_mask = reference_mask.to(device=references.device, dtype=torch.bool)
        ffe = self.feature_extractor
        features = references.new_zeros(batch * count, self.num_feature_tokens, self.token_dim)
        real = reference_mask.flatten()  # the FFE runs on real references only
        if ffe is not None and bool(real.any()):
            landmarks = None
            if reference_landmarks is not None:
                landmarks = reference_landmarks.flatten(0, 1)[real.to(reference_landmarks.device)]
            found = ffe(references.flatten(0, 1)[real], landmarks)  # (M, n1, k)
            features = features.to(found.dtype).index_put((real,), found)
        if self.identity_encoder is not None:
            identity_mask = reference_mask if identity_embeddings is not None else None
            identity = self.identity_encoder(identity_embeddings, identity_mask, batch)
        else:
            identity = features.new_zeros(batch, 0, self.token_dim)
        return ReferenceTokens(features.view(batch, count, self.num_feature_tokens, self.token_dim), identity,
                               reference_mask, reference_landmarks)

    def choose(self, tokens: ReferenceTokens, lq_landmarks: torch.Tensor | None = None) -> IDEOutput:
        """Eq. 6 on encoded references: ``lq_landmarks`` (B, 68, 2) or None (first reference)."""
        mask, where = tokens.mask, tokens.mask.device
        if tokens.landmarks is not None and lq_landmarks is not None:
            where = tokens.landmarks.device
            lq_landmarks = lq_landmarks.to(where)
        index = select_reference(lq_landmarks, tokens.landmarks, mask.to(where), self.config.selection_subset)
        index = index.to(tokens.feature_tokens.device)
        rows = torch.arange(tokens.feature_tokens.shape[0], device=index.device)
        return IDEOutput(tokens.feature_tokens[rows, index], tokens.identity_tokens, index)

    def forward(self, references: torch.Tensor, reference_mask: torch.Tensor,
                lq_landmarks: torch.Tensor | None = None,
                reference_landmarks: torch.Tensor | None = None,
                identity_embeddings: torch.Tensor | None = None) -> IDEOutput:
        """:meth:`encode` then :meth:`choose` (arguments as there)."""
        return self.choose(self.encode(references, reference_mask, reference_landmarks, identity_embeddings),
                           lq_landmarks)
