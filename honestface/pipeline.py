"""High-level restoration: :class:`HonestFacePipeline`.

Holds a :class:`~honestface.models.HonestFaceModel` and, optionally, a landmark backend
(for the reference choice of Eq. 6 and the eye crops) and an identity backend (for the
FIE). Inputs follow the library convention, (B, 3, H, W) float RGB in [0, 1].

Input conversions (documented once here):

- a single (3, H, W) image gets a batch axis;
- 1-channel (grayscale) input is repeated to RGB; 4-channel (RGBA) input is composited
  on white (like :func:`honestface.image_io.load_image` does for files);
- any size is resized (bicubic, antialiased) to the model size (512 for SD 2.1-base);
  the result is resized back to the input size unless ``output_size`` is given;
- NaN/inf values, wrong shapes or an empty batch raise :class:`~honestface.errors.ImageError`.

Two entry points:

- :meth:`HonestFacePipeline.restore` for inference (no gradients, batched, progress);
- :meth:`HonestFacePipeline.forward_prepared`: the differentiable model forward on
  prepared tensors (padded references + masks, precomputed landmarks and identity
  embeddings), returning the restored image and the latents; for scripts and tests (the
  trainer calls the model itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .acceleration import place_model
from .config import HonestFaceConfig
from .errors import ConfigError, ImageError
from .image_io import resize_to, to_rgb
from .loaders.model_files import load_model  # public here too
from .models.fidelity import blend_fidelity
from .models.honestface import HonestFaceModel, HonestFaceOutput
from .models.ide import IDEOutput, ReferenceTokens
from .progress import ProgressCallback, report

logger = logging.getLogger("honestface.pipeline")


#: Identity-match threshold (degrees, the Deg. metric: angle between a face's embedding and
#: the mean embedding of a reference set) per identity-backend family. Below it a face is
#: taken for the person of the references. "dlib" was measured on LFW photos aligned to the
#: nano model's 128 px crop with the "dlib-torch" network (150 people; 0.7 % false rejects and
#: 0.7 % false accepts at 22 degrees; README, "Face analysis"; the equal-error point);
#: "arcface" and "adaface" are provisional (not measured here, their weights were not at hand).
IDENTITY_MATCH_THRESHOLD_DEG = {"dlib": 22.0, "arcface": 70.0, "adaface": 70.0}


def identity_match_threshold(backend_name: str) -> float:
    """:data:`IDENTITY_MATCH_THRESHOLD_DEG` for an identity backend name ("dlib-torch" -> "dlib")."""
    family = str(backend_name).split("-")[0].split(" ")[0].lower()
    if family not in IDENTITY_MATCH_THRESHOLD_DEG:
        from .errors import ConfigError

        raise ConfigError(f"no identity-match threshold for backend '{backend_name}'; pass match_threshold "
                          f"(known families: {', '.join(IDENTITY_MATCH_THRESHOLD_DEG)})")
    return IDENTITY_MATCH_THRESHOLD_DEG[family]


@dataclass
class ReferenceSet:
    """One person's references, encoded once (:meth:`HonestFacePipeline.encode_references`)
    and shared by every face that uses them: the images, their landmarks and identity
    embeddings, and the IDE tokens computed from them (:class:`~honestface.models.ide.ReferenceTokens`).
    Which reference each face uses (Eq. 6) is decided per face, from the stored landmarks."""

    images: torch.Tensor  # (N, 3, S, S) in [0, 1] at the model size
    landmarks: torch.Tensor | None = None  # (N, 68, 2), NaN where no face; None without a landmark backend
    embeddings: torch.Tensor | None = None  # (N, D); None without an identity backend
    #: IDE tokens of the set (B = 1, float32 on the CPU); None for OSDFace weights or before encoding.
    tokens: ReferenceTokens | None = field(default=None, repr=False)
    #: (model.encoding_stamp, dtype) the tokens were computed with; other weights encode again.
    tokens_key: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class RestoreInfo:
    """What :meth:`HonestFacePipeline.restore` did per face, filled in when the caller passes
    one (``restore(..., info=RestoreInfo())``); for the CLI summary, nodes and evaluations.

    ``landmarks_missed[i]`` is True when face ``i`` was restored with references and the
    landmark backend found no face in it: the reference choice (Eq. 6) then used the
    landmarks fitted in the aligned face box (where a face sits in an aligned crop, as
    training does for its aligned crops) instead of a detected face's.
    """

    landmarks_missed: list[bool] = field(default_factory=list)
    #: automatic-fidelity weight ``w`` of each face (models that have the estimator; see
    #: :mod:`honestface.models.fidelity`), empty otherwise
    fidelity: list[float] = field(default_factory=list)

    @property
    def landmark_misses(self) -> int:
        """How many faces had no landmarks found."""
        return sum(self.landmarks_missed)


@dataclass
class ReferenceBatch:
    """References of a batch, padded to the largest N, and their encoded conditioning."""

    images: torch.Tensor  # (B, N, 3, S, S) in [0, 1]; zeros where padded
    mask: torch.Tensor  # (B, N) bool, True for real references
    landmarks: torch.Tensor | None  # (B, N, 68, 2), NaN where padded / no face
    embeddings: torch.Tensor | None  # (B, N, D), zeros where padded
    #: IDE tokens of every row (None for OSDFace weights, which ignore references)
    conditioning: ReferenceTokens | None = None


def warn_on_identity_mismatch(backend: str, trained_with: str) -> None:
    """Log a warning when the identity backend is not the family the model was trained
    with: embeddings of the same size from another recogniser are a different space. One
    network run two ways ("dlib" / "dlib-torch", "arcface-onnx" / "arcface-torch") is fine."""
    family = backend.split("-")[0].split(" ")[0]
    if backend and trained_with and family != trained_with.split("-")[0]:
        logger.warning("identity backend '%s' differs from the one the model was trained with ('%s'): "
                       "the identity tokens will not mean what the model learned", backend, trained_with)


class HonestFacePipeline:
    """Restore aligned LQ faces with 0..N references each.

    Args:
        model: the model (weights loaded).
        landmark_backend: a :class:`~honestface.face.base.LandmarkBackend`, or None (then
            the first reference is used and eyes are cropped at aligned-face positions).
        identity_backend: an :class:`~honestface.face.base.IdentityBackend`, or None
            (then the FIE sees no identity embeddings). Its ``embedding_dim`` must equal
            ``model.config.ide.identity_dim``.
        device, dtype: where and in which precision the model runs (default: the model's).
        batch_size: faces per forward pass in :meth:`restore`.
        keep_float32: sub-modules kept in float32 with bf16 math (default: what
            :func:`honestface.acceleration.float32_parts` gives for ``device`` and ``dtype``;
            set it for a model built on one device to compute on another).
    """

    def __init__(self, model: HonestFaceModel, landmark_backend=None, identity_backend=None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 batch_size: int = 4, keep_float32: tuple[str, ...] | None = None) -> None:
        self.model = model
        self.landmark_backend = landmark_backend
        self.identity_backend = identity_backend
        first = next(model.parameters())
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        self.batch_size = max(1, int(batch_size))
        if identity_backend is not None:
            dim = int(getattr(identity_backend, "embedding_dim", model.config.ide.identity_dim))
            if dim != model.config.ide.identity_dim:
                from .errors import ConfigError

                raise ConfigError(f"identity backend '{getattr(identity_backend, 'name', '?')}' gives {dim}-d "
                                  f"embeddings but the model expects {model.config.ide.identity_dim}-d: choose "
                                  f"identity backend '{model.config.identity_backend}', the one the model was "
                                  "trained with")
            warn_on_identity_mismatch(str(getattr(identity_backend, "name", "")), model.config.identity_backend)
        # bf16 on CPUs: channels-last, the UNet and the VAE encoder in float32 with bf16 math
        place_model(self.model, self.device, self.dtype, keep_float32)
        self.model.eval()

    @property
    def config(self) -> HonestFaceConfig:
        return self.model.config

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    # ------------------------------------------------------------ preparation
    def prepare_images(self, images: torch.Tensor, name: str = "image") -> torch.Tensor:
        """Any accepted input -> (B, 3, S, S) float32 in [0, 1] on the CPU."""
        images = to_rgb(images, name).float().cpu()
        return resize_to(images.clamp(0, 1), self.image_size)

    def detect_landmarks(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, 3, S, S) prepared faces -> (B, 68, 2) landmarks (NaN: no face), or None without a backend."""
        if self.landmark_backend is None:
            return None
        return self.landmark_backend.landmarks(images).float().cpu()

    def lq_landmarks(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Landmarks of aligned LQ faces for Eq. 6: (B, 3, S, S) -> ((B, 68, 2) or None
        without a backend, (B,) bool missed).

        Where the backend finds no face, the points are fitted in the aligned face box
        (:data:`~honestface.face.dlib_backend.ALIGNED_FACE_BOX`, the box training fits its
        aligned crops' landmarks in) and ``missed`` is True; they stay NaN only for a
        backend that cannot fit points in a given box.
        """
        points = self.detect_landmarks(images)
        if points is None:
            return None, torch.zeros(images.shape[0], dtype=torch.bool)
        missed = ~torch.isfinite(points).flatten(1).all(dim=1)
        fit = getattr(self.landmark_backend, "landmarks_in_boxes", None)
        if bool(missed.any()) and fit is not None:
            from .face.dlib_backend import ALIGNED_FACE_BOX

            height, width = images.shape[-2:]
            box = torch.tensor([[ALIGNED_FACE_BOX[0] * width, ALIGNED_FACE_BOX[1] * height,
                                 ALIGNED_FACE_BOX[2] * width, ALIGNED_FACE_BOX[3] * height]])
            for i in missed.nonzero().flatten().tolist():
                points[i] = fit(images[i], box)[0].float().cpu()
        return points, missed

    def embed_identities(self, images: torch.Tensor) -> torch.Tensor | None:
        """(B, 3, S, S) prepared faces -> (B, D) identity embeddings, or None without a backend."""
        if self.identity_backend is None:
            return None
        return self.identity_backend.embed(images).float().cpu()

    def encode_references(self, images: torch.Tensor | ReferenceSet, name: str = "references") -> ReferenceSet:
        """(N, 3, H, W) references of one person -> :class:`ReferenceSet`, computed once.

        Images are brought to the model size; landmarks and identity embeddings come from
        the pipeline's backends (None without one), the IDE tokens from the model (none for
        OSDFace weights). A :class:`ReferenceSet` is returned as it is when complete, else
        with its missing or stale parts computed. N = 0 gives an empty set.
        """
        if isinstance(images, ReferenceSet):
            refs = images
            if len(refs) and tuple(refs.images.shape[-2:]) != (self.image_size, self.image_size):
                return self.encode_references(refs.images, name)  # made for another model size
            if not len(refs):
                return refs
            landmarks, embeddings = refs.landmarks, refs.embeddings
            if landmarks is None and self.landmark_backend is not None:
                landmarks = self.detect_landmarks(refs.images)
            if embeddings is None and self.identity_backend is not None:
                embeddings = self.embed_identities(refs.images)
            if landmarks is refs.landmarks and embeddings is refs.embeddings and self._tokens_current(refs):
                return refs
            return self._with_tokens(ReferenceSet(refs.images, landmarks, embeddings))
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] == 0:
            size = self.image_size
            return ReferenceSet(torch.zeros(0, 3, size, size))
        prepared = self.prepare_images(images, name)
        return self._with_tokens(ReferenceSet(prepared, self.detect_landmarks(prepared),
                                              self.embed_identities(prepared)))

    def _tokens_key(self) -> tuple:
        return (self.model.encoding_stamp, self.dtype)

    def _tokens_current(self, refs: ReferenceSet) -> bool:
        """True when ``refs`` holds tokens of this model's weights in this precision (or
        the model ignores references, so none are needed)."""
        if not self.model.accepts_references:
            return True
        key = refs.tokens_key
        return refs.tokens is not None and key is not None and key[0] is self.model.encoding_stamp \
            and key[1] == self.dtype

    @torch.no_grad()
    def _with_tokens(self, refs: ReferenceSet) -> ReferenceSet:
        """``refs`` with the model's IDE tokens of the set (B = 1)."""
        if not self.model.accepts_references or not len(refs):
            return refs
        landmarks = None if refs.landmarks is None else refs.landmarks[None].to(self.device)
        embeddings = None if refs.embeddings is None else refs.embeddings[None].to(self.device, self.dtype)
        tokens = self.model.encode_references(refs.images[None].to(self.device, self.dtype),
                                              None, landmarks, embeddings)
        refs.tokens = tokens.to("cpu", torch.float32)
        refs.tokens_key = self._tokens_key()
        return refs

    def prepare_references(self, references: Sequence[torch.Tensor | ReferenceSet | None]) -> ReferenceBatch:
        """One entry per face -> padded batch with its conditioning. An entry is a
        (N_i, 3, H, W) tensor (prepared and encoded here, all such entries together), a
        :class:`ReferenceSet` (used as it is: nothing is recomputed, however many faces
        share it) or None; N_i = 0 is allowed."""
        sets: list[torch.Tensor | ReferenceSet | None] = []
        for i, refs in enumerate(references):
            if refs is None or (isinstance(refs, torch.Tensor) and refs.numel() == 0):
                sets.append(None)
            elif isinstance(refs, ReferenceSet):
                sets.append(self.encode_references(refs) if len(refs) else None)
            else:
                sets.append(self.prepare_images(refs, f"references[{i}]"))
        count = max((s.shape[0] if isinstance(s, torch.Tensor) else len(s) for s in sets if s is not None), default=0)
        batch, size = len(sets), self.image_size
        images = torch.zeros(batch, count, 3, size, size)
        mask = torch.zeros(batch, count, dtype=torch.bool)
        fresh = torch.zeros(batch, count, dtype=torch.bool)  # tensor entries: backends run below
        for i, s in enumerate(sets):
            if s is None:
                continue
            n = s.shape[0] if isinstance(s, torch.Tensor) else len(s)
            images[i, :n] = s if isinstance(s, torch.Tensor) else s.images
            mask[i, :n] = True
            fresh[i, :n] = isinstance(s, torch.Tensor)
        landmarks = embeddings = None
        real = images[fresh]  # (M, 3, S, S)
        if mask.any() and self.landmark_backend is not None:
            landmarks = torch.full((batch, count, 68, 2), float("nan"))
            if real.shape[0] > 0:
                landmarks[fresh] = self.detect_landmarks(real)
        if mask.any() and self.identity_backend is not None:
            found = self.embed_identities(real) if real.shape[0] > 0 else None
            dim = found.shape[-1] if found is not None else int(self.identity_backend.embedding_dim)
            embeddings = torch.zeros(batch, count, dim)
            if found is not None:
                embeddings[fresh] = found
        for i, s in enumerate(sets):
            if isinstance(s, ReferenceSet):
                n = len(s)
                if landmarks is not None and s.landmarks is not None:
                    landmarks[i, :n] = s.landmarks.float().cpu()
                if embeddings is not None and s.embeddings is not None:
                    embeddings[i, :n] = s.embeddings.float().cpu()
        batch_refs = ReferenceBatch(images, mask, landmarks, embeddings)
        if mask.any() and self.model.accepts_references:
            batch_refs.conditioning = self._batch_tokens(sets, batch_refs)
        return batch_refs

    @torch.no_grad()
    def _batch_tokens(self, sets: list, refs: ReferenceBatch) -> ReferenceTokens:
        """Tokens of every row: encoded sets as stored, tensor entries encoded in one call."""
        rows = [i for i, s in enumerate(sets) if isinstance(s, torch.Tensor)]
        encoded: dict[int, ReferenceTokens] = {}
        if rows:
            pick = lambda t: None if t is None else t[rows].to(self.device)  # noqa: E731
            fresh = self.model.encode_references(refs.images[rows].to(self.device, self.dtype), pick(refs.mask),
                                                 pick(refs.landmarks), None if refs.embeddings is None else
                                                 refs.embeddings[rows].to(self.device, self.dtype))
            for j, i in enumerate(rows):
                n = sets[i].shape[0]
                encoded[i] = ReferenceTokens(fresh.feature_tokens[j:j + 1, :n], fresh.identity_tokens[j:j + 1],
                                             fresh.mask[j:j + 1, :n])
        items = [encoded.get(i, s.tokens if isinstance(s, ReferenceSet) else None) for i, s in enumerate(sets)]
        # Eq. 6 reads the batch's landmarks (NaN where unknown), as the model does from tensors
        return ReferenceTokens.stack(items, refs.landmarks)

    @torch.no_grad()
    def choose_references(self, lq: torch.Tensor,
                          references: Sequence[torch.Tensor | ReferenceSet | None] | ReferenceSet) -> IDEOutput:
        """Eq. 6 and the IDE tokens for each LQ face, as :meth:`restore` computes them.

        Args:
            lq: (B, C, H, W) LQ faces in [0, 1].
            references: one entry per face, or one :class:`ReferenceSet` for all.

        Returns:
            :class:`~honestface.models.ide.IDEOutput` on the CPU: ``reference_index`` (B,)
            (-1: no reference), ``feature_tokens`` (B, n1, k), ``identity_tokens`` (B, n2, k).
        """
        prepared = self.prepare_images(lq, "lq")
        if isinstance(references, ReferenceSet):
            references = [references] * prepared.shape[0]
        refs = self.prepare_references(references)
        if refs.conditioning is None:
            from .errors import ConfigError

            raise ConfigError("this model does not use references (OSDFace weights), or none were given")
        lq_landmarks = self.lq_landmarks(prepared)[0] if refs.landmarks is not None else None
        tokens = refs.conditioning
        chosen = self.model.ide.choose(tokens, lq_landmarks)
        index = torch.where(tokens.mask.any(dim=1), chosen.reference_index.cpu(), torch.tensor(-1))
        return IDEOutput(chosen.feature_tokens.float().cpu(), chosen.identity_tokens.float().cpu(), index)

    def identity_distance(self, faces: torch.Tensor, refs: ReferenceSet | torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) faces -> (B,) angle in degrees (the Deg. metric) between each face's
        identity embedding and the mean (of the unit-length) reference embeddings.

        NaN for an empty reference set or a face the backend cannot embed. Compare with
        :func:`identity_match_threshold` of ``identity_backend.name``.

        Raises:
            ConfigError: the pipeline has no identity backend.
        """
        from .errors import ConfigError
        from .metrics.identity import identity_angle_degrees

        if self.identity_backend is None:
            raise ConfigError("identity distance needs an identity backend in the pipeline")
        prepared = self.prepare_images(faces, "faces")
        refs = self.encode_references(refs)
        if not len(refs):
            return torch.full((prepared.shape[0],), float("nan"))
        unit = torch.nn.functional.normalize(refs.embeddings.double(), dim=-1)
        centre = unit.mean(dim=0)
        return identity_angle_degrees(self.embed_identities(prepared).double(), centre[None]).float()

    @property
    def match_threshold(self) -> float:
        """Identity-match threshold (degrees) of this pipeline's identity backend."""
        return identity_match_threshold(getattr(self.identity_backend, "name", ""))

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def restore(self, lq: torch.Tensor, references: Sequence[torch.Tensor | ReferenceSet | None] | None = None,
                progress: ProgressCallback | None = None, generator: torch.Generator | None = None,
                output_size: int | tuple[int, int] | None = None,
                color_correction: str | None = None, strength: float = 1.0,
                release_compat: bool = False, fidelity: bool | None = None,
                info: RestoreInfo | None = None) -> torch.Tensor:
        """Restore aligned faces.

        Args:
            lq: (B, C, H, W) or (C, H, W) LQ faces in [0, 1] (C = 1, 3 or 4; see module doc).
            references: None (OSDFace mode for all), or a list of B entries, each a
                (N_i, 3, H, W) tensor of aligned references in [0, 1], a
                :class:`ReferenceSet` from :meth:`encode_references` (shared by any number
                of faces, never recomputed) or None. A single :class:`ReferenceSet`
                applies to every face.
            progress: called as ``progress(done, total)`` after every chunk of faces.
            generator: seeds the VAE sample when ``config.diffusion.latent_mode == "sample"``.
            output_size: size of the result; default the input's (H, W).
            color_correction: "none", "adain", "wavelet" (default: the config's).
            strength: 1 returns the restored faces, 0 the input, between them a linear blend.
            release_compat: do what the OSDFace release does (:mod:`honestface.release_compat`):
                bilinear resize, sampled latent, no colour correction by default, output at
                the model size (``output_size`` is ignored).
            fidelity: blend each face with its input by the model's automatic fidelity
                ``x + w (R - x)`` (:mod:`honestface.models.fidelity`; not in the paper).
                None: when the model has the estimator (``config.fidelity.enabled``, e.g.
                the shipped nano model); False: never (the paper's path); True: required.
                The weights go to ``info.fidelity``.
            info: a :class:`RestoreInfo` filled in with per-face facts (landmark misses, automatic fidelity).

        Returns:
            (B, 3, H, W) restored faces in [0, 1], float32 on the CPU.
        """
        if not 0.0 <= float(strength) <= 1.0:
            raise ImageError(f"strength must be in [0, 1], got {strength}")
        has_estimator = getattr(self.model, "fidelity", None) is not None
        if fidelity and not has_estimator:
            raise ConfigError("these weights have no automatic-fidelity estimator; restore without it "
                              "(fidelity off) or use weights trained with one (e.g. honestface-nano)")
        use_fidelity = has_estimator and fidelity is not False and not release_compat
        if release_compat:
            from .release_compat import release_restore

            return release_restore(self, lq, references, progress, generator, color_correction)
        images = to_rgb(lq, "lq")
        out_size = tuple(images.shape[-2:]) if output_size is None else (
            (output_size, output_size) if isinstance(output_size, int) else tuple(output_size))
        prepared = self.prepare_images(images, "lq")
        batch = prepared.shape[0]
        if isinstance(references, ReferenceSet):  # one person's references for every face
            references = [references] * batch
        if references is not None:
            if isinstance(references, torch.Tensor) or len(references) != batch:
                raise ImageError(f"references must be a list with one entry (tensor or None) per LQ face "
                                 f"({batch}), got {type(references).__name__} of length "
                                 f"{len(references) if hasattr(references, '__len__') else '?'}")
            references = self._encode_shared(references)
        results, weights = [], []
        missed: list[bool] = []
        report(progress, 0, batch)
        for start in range(0, batch, self.batch_size):
            stop = min(start + self.batch_size, batch)
            chunk = prepared[start:stop]
            refs = None if references is None else self.prepare_references(references[start:stop])
            output = self._forward_chunk(chunk, refs, generator, color_correction, missed)
            image = output.image.float().cpu()
            if use_fidelity and output.fidelity is not None:
                image = blend_fidelity(chunk.float().cpu(), image, output.fidelity.float().cpu()).clamp(0, 1)
                weights.append(output.fidelity.float().cpu())
            results.append(image)
            report(progress, stop, batch)
        restored = torch.cat(results)
        if info is not None:
            info.landmarks_missed = missed
            info.fidelity = torch.cat(weights).tolist() if weights else []
        if missed and any(missed):
            logger.info("landmarks not found on %d of %d faces; their reference choice used the aligned-box "
                        "landmarks", sum(missed), len(missed))
        if tuple(restored.shape[-2:]) != out_size:
            restored = resize_to(restored, out_size)
        if strength < 1.0:
            original = resize_to(images.float().cpu().clamp(0, 1), out_size)
            restored = (original + (restored - original) * float(strength)).clamp(0, 1)
        return restored

    def _encode_shared(self, references: Sequence[torch.Tensor | ReferenceSet | None]) -> list:
        """Entries given to several faces (the same object) encoded once, before chunking:
        sets made for other weights or without this pipeline's backends, and tensors."""
        uses: dict[int, int] = {}
        for entry in references:
            if entry is not None:
                uses[id(entry)] = uses.get(id(entry), 0) + 1
        encoded: dict[int, ReferenceSet] = {}
        out = []
        for entry in references:
            key = id(entry)
            shared = entry is not None and (isinstance(entry, ReferenceSet) or uses[key] > 1) \
                and not (isinstance(entry, torch.Tensor) and entry.numel() == 0)
            if shared and key not in encoded:
                encoded[key] = self.encode_references(entry, "references")
            out.append(encoded[key] if shared else entry)
        return out

    def _forward_chunk(self, lq: torch.Tensor, refs: ReferenceBatch | None,
                       generator: torch.Generator | None, color_correction: str | None,
                       missed: list[bool] | None = None) -> HonestFaceOutput:
        """One chunk through the model; ``missed`` gets one flag per face (see :class:`RestoreInfo`)."""
        lq_landmarks = None
        flags = torch.zeros(lq.shape[0], dtype=torch.bool)
        if refs is not None and refs.mask.any() and refs.landmarks is not None:
            lq_landmarks, flags = self.lq_landmarks(lq)
            flags = flags & refs.mask.any(dim=1)  # faces without references choose nothing
        if missed is not None:
            missed.extend(bool(f) for f in flags)
        if refs is None:
            return self.forward_prepared(lq, generator=generator, color_correction=color_correction)
        if refs.conditioning is None:  # OSDFace weights: the model ignores references
            return self.forward_prepared(lq, refs.images, refs.mask, generator=generator,
                                         color_correction=color_correction)
        return self.forward_prepared(lq, lq_landmarks=lq_landmarks, generator=generator,
                                     color_correction=color_correction, conditioning=refs.conditioning)

    # ---------------------------------------------------------- differentiable
    def forward_prepared(self, lq: torch.Tensor, references: torch.Tensor | None = None,
                         reference_mask: torch.Tensor | None = None,
                         lq_landmarks: torch.Tensor | None = None,
                         reference_landmarks: torch.Tensor | None = None,
                         identity_embeddings: torch.Tensor | None = None,
                         generator: torch.Generator | None = None,
                         color_correction: str | None = None,
                         conditioning: ReferenceTokens | None = None) -> HonestFaceOutput:
        """Differentiable forward on prepared tensors.

        Args:
            lq: (B, 3, S, S) in [0, 1] at the model size.
            references: (B, N, 3, S, S) padded references in [0, 1], or None.
            reference_mask: (B, N) bool padding mask (True = real reference).
            lq_landmarks: (B, 68, 2); reference_landmarks: (B, N, 68, 2) (NaN = unknown).
            identity_embeddings: (B, N, D) from the identity backend (detached).
            conditioning: the references already encoded (:meth:`prepare_references`'s
                ``conditioning``), in place of the four reference arguments.

        Returns:
            :class:`~honestface.models.HonestFaceOutput`: ``image`` (B, 3, S, S) in [0, 1],
            ``latent_lq``, ``latent_restored`` (for the latent discriminator), ``prompt``,
            ``noise_pred``, ``reference_index``. Gradients flow to the trainable parts.
        """
        to = dict(device=self.device, dtype=self.dtype)
        move = lambda t, **kw: None if t is None else t.to(**kw)  # noqa: E731
        return self.model(move(lq, **to), move(references, **to), move(reference_mask, device=self.device),
                          move(lq_landmarks, device=self.device), move(reference_landmarks, device=self.device),
                          move(identity_embeddings, **to), generator, color_correction,
                          None if conditioning is None else conditioning.to(self.device, self.dtype))

    # --------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, sd21: str | Path | None = None, checkpoint: str | Path | None = None,
                        osdface_dir: str | Path | None = None, models_dir: str | Path | None = None,
                        landmark_backend=None, identity_backend=None, device: str = "cpu",
                        dtype: str | torch.dtype = "auto", merge_lora: bool = True,
                        batch_size: int = 4, vgg: str | Path | None = None,
                        config: HonestFaceConfig | str | None = None) -> "HonestFacePipeline":
        """Build the real model from files.

        Args:
            sd21: SD 2.1-base (diffusers folder or single checkpoint file), see
                :mod:`honestface.loaders.sd21`; not needed for a checkpoint that bundles
                its UNet and VAE (``honestface-nano.safetensors``).
            checkpoint: a HonestFace ``.safetensors`` checkpoint (config in its metadata).
            osdface_dir: an OSDFace release folder; with ``checkpoint`` it supplies the VQ
                encoder, alone it gives OSDFace (no references).
            vgg: torchvision VGG16 weights (default: ``config.ide.vgg_file`` in
                ``<models>/honestface``; required when ``checkpoint`` is given, unless its
                IDE has no facial feature extractor or bundles VGG16).
            dtype: a torch dtype or its name; ``"auto"`` (default) is what ``device`` computes
                natively, see :func:`honestface.loaders.sd21.resolve_dtype`.
            merge_lora: fold the LoRA into the UNet weights (faster; not for training).
            config: for OSDFace weights without a checkpoint: a preset name or config
                (default: the preset matching the UNet's cross-attention width).
        """
        model = load_model(sd21=sd21, checkpoint=checkpoint, osdface_dir=osdface_dir,
                                       models_dir=models_dir, vgg=vgg, merge_lora=merge_lora, config=config)
        from .loaders.sd21 import resolve_dtype

        return cls(model, landmark_backend, identity_backend, device=device, dtype=resolve_dtype(dtype, device),
                   batch_size=batch_size)
