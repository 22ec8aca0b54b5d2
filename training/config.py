"""Training configuration: YAML file + ``key=value`` overrides -> :class:`TrainConfig`.

Sections (every key is optional; defaults are the paper's set-up where it gives one):

``seed``, ``output_dir``
``model``: how the generator is built (:class:`ModelSection`)
``data``: :class:`training.data.DataConfig`
``losses``: :class:`honestface.losses.LossConfig`
``optim``: :class:`OptimSection`
``train``: :class:`LoopSection`

Overrides use dotted keys and YAML values: ``train.max_steps=100``,
``losses.adversarial=0``, ``data.roots=[a,b]``.

A config may start from another: ``base: ../paper.yaml`` (relative to its own file)
reads that one first and merges this file's sections into it, key by key (mappings
merge, every other value replaces). The ablation configs are written this way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from honestface.config import section_reader, strict_from_dict
from honestface.errors import ConfigError
from honestface.losses import LossConfig

from .data import DataConfig


@dataclass
class ModelSection:
    """Where the generator comes from.

    Attributes:
        preset: ``"tiny"`` (random tiny model, no files) or ``"sd21"``.
        init: ``"random"`` (random weights, no files: tests and benchmarks only),
            ``"sd21"`` (SD 2.1-base + fresh LoRA and heads),
            ``"osdface"`` (SD 2.1-base + an OSDFace release: its LoRA, VRE and projection)
            or ``"checkpoint"`` (SD 2.1-base + a HonestFace checkpoint to fine-tune).
        sd21: SD 2.1-base diffusers folder or single-file checkpoint (name or path).
        osdface: OSDFace release folder; for ``init`` other than ``osdface`` only its
            ``associate_2.ckpt`` is read, so the output folder of stage-1 VRE training
            (``training/train_autoencoder.py``) works too. checkpoint: HonestFace ``.safetensors``.
        models_dir: ComfyUI-style models folder (``HONESTFACE_MODELS`` when empty).
        vgg: VGG16 weights for the FFE (default ``config.ide.vgg_file``).
        landmarks: landmark backend for the reference choice (Eq. 6) and the eye crops
            (``"none"``: first reference, template eye positions).
        landmark_options: keyword arguments of that backend.
        identity: identity backend of the FIE (``"none"``: no identity embeddings).
        identity_options: keyword arguments of that backend.
        gradient_checkpointing: recompute UNet and VAE activations in the backward pass.
        vae: with ``init: random``, a diffusers ``AutoencoderKL`` folder (stage 1:
            ``training/train_autoencoder.py``'s export) that replaces the random VAE; its
            config (scaling factor included) becomes the model's.
        freeze: bundled parts (``unet``, ``vae``, ``vq``, ``vgg``) kept frozen, e.g.
            ``[vae]`` after stage 1, as SD's VAE is for the paper's model.
        train_only: train only these parts of a model (names of
            ``HonestFaceModel.trainable_modules()``, e.g. ``[fidelity]``, or ``lora``); empty
            trains all of them. With ``init: checkpoint``: fit one part to a finished model.
        overrides: changes to the preset's :class:`honestface.config.HonestFaceConfig`
            (dotted keys, e.g. ``{"lora.rank": 8}``).
    """

    preset: str = "sd21"
    init: str = "sd21"
    sd21: str | None = None
    osdface: str | None = None
    checkpoint: str | None = None
    models_dir: str | None = None
    vgg: str | None = None
    landmarks: str = "fan"
    landmark_options: dict[str, Any] = field(default_factory=dict)
    identity: str = "arcface-torch"
    identity_options: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    vae: str | None = None
    freeze: list[str] = field(default_factory=list)
    train_only: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.freeze) - {"unet", "vae", "vq", "vgg"})
        if unknown:
            raise ConfigError(f"model.freeze: unknown part(s) {unknown}; choose from unet, vae, vq, vgg")
        if self.vae and self.init != "random":
            raise ConfigError("model.vae replaces the random VAE of init 'random'; with SD 2.1-base the "
                              "VAE comes from model.sd21")
        if self.init not in ("random", "sd21", "osdface", "checkpoint"):
            raise ConfigError(f"model.init must be random, sd21, osdface or checkpoint, got '{self.init}'")
        # init checkpoint: a checkpoint that bundles its UNet and VAE needs no SD 2.1-base (the loader says)
        if self.init in ("sd21", "osdface") and not self.sd21:
            raise ConfigError(f"model.init '{self.init}' needs model.sd21 (SD 2.1-base folder or file)")
        if self.init == "osdface" and not self.osdface:
            raise ConfigError("model.init 'osdface' needs model.osdface (the release folder)")
        if self.init == "checkpoint" and not self.checkpoint:
            raise ConfigError("model.init 'checkpoint' needs model.checkpoint")


@dataclass
class OptimSection:
    """AdamW for the generator and the discriminator (paper: lr 1e-4) and the schedule.

    ``scheduler``: ``"constant"``, ``"linear"`` (to 0 at max_steps) or ``"cosine"``, after
    ``warmup_steps`` of linear warm-up.
    """

    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    scheduler: str = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        if self.scheduler not in ("constant", "linear", "cosine"):
            raise ConfigError(f"optim.scheduler must be constant, linear or cosine, got '{self.scheduler}'")


@dataclass
class LoopSection:
    """The loop.

    ``batch_size`` is per process; the effective batch is
    ``batch_size * gradient_accumulation * processes``. ``mixed_precision``: ``"no"`` or
    ``"bf16"`` (autocast; trainable weights and optimiser states stay float32).
    ``checkpoint_every`` / ``val_every`` / ``log_every`` are in optimiser steps (0 = never);
    the last step always writes a checkpoint and the export.

    ``max_landmark_miss_rate``: every face a landmark backend looks at (the LQ for Eq. 6
    and for the MFA heatmaps, each new reference) is counted, and so is every face whose
    landmarks were not found (its MFA mask is zero and Eq. 6 falls back to the first
    reference); the counts of the main process go to TensorBoard (``landmarks/missed``,
    ``landmarks/faces``, ``landmarks/miss_rate``). Once ``landmark_miss_min_faces`` faces were looked at,
    training stops with an error when the share of misses exceeds this limit. On aligned
    crops (``data.aligned_faces``) no detector runs and nothing is missed.
    """

    max_steps: int = 60_000
    batch_size: int = 4
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    num_workers: int = 4
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    val_every: int = 2000
    val_batches: int = 4
    val_batch_size: int = 4
    val_landmarks: str = "dlib"
    val_identity: str = "arcface-onnx"
    export_name: str = "honestface.safetensors"
    #: floating-point type of the exported weights: float32, float16 or bfloat16
    export_dtype: str = "float32"
    #: colour correction written into the exported config as the model's inference default
    #: ("none", "wavelet", "adain"); empty keeps the model's. Training never applies it.
    export_color_correction: str = ""
    cpu: bool = False
    max_landmark_miss_rate: float = 0.05
    landmark_miss_min_faces: int = 100
    #: CPU threads of torch per process (0 = torch's default). 1 is much faster on a
    #: busy or small CPU; GPU runs do not care.
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"train.mixed_precision must be 'no' or 'bf16', got '{self.mixed_precision}'")
        if self.export_color_correction not in ("", "none", "wavelet", "adain"):
            raise ConfigError("train.export_color_correction must be none, wavelet or adain, "
                              f"got '{self.export_color_correction}'")
        if self.export_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"train.export_dtype must be float32, float16 or bfloat16, got '{self.export_dtype}'")
        if not 0.0 <= float(self.max_landmark_miss_rate) <= 1.0:
            raise ConfigError(f"train.max_landmark_miss_rate must lie in [0, 1], got {self.max_landmark_miss_rate}")
        for name in ("max_steps", "batch_size", "gradient_accumulation"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be >= 1")


@dataclass
class TrainConfig:
    seed: int = 0
    output_dir: str = "runs/honestface"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: LoopSection = field(default_factory=LoopSection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "output_dir": self.output_dir, "model": asdict(self.model),
            "data": self.data.to_dict(), "losses": self.losses.to_dict(),
            "optim": {**asdict(self.optim), "betas": list(self.optim.betas)}, "train": asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        sections = {"model": section_reader(ModelSection, "config section 'model'"),
                    "optim": section_reader(OptimSection, "config section 'optim'"),
                    "train": section_reader(LoopSection, "config section 'train'"),
                    "data": DataConfig.from_dict, "losses": LossConfig.from_dict}
        return strict_from_dict(cls, data, "the training config", sections)


def _yaml_loader():
    """PyYAML's safe loader, plus floats without a dot (``1e-4``), which YAML 1.1 reads as strings."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def parse_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}") from error


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override '{item}' has an empty key")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = parse_yaml(text)
    return data


def merge_sections(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The plain dict of a YAML config, its ``base`` chain merged in (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' loops back to a config already read ({_seen[0]})")
    with open(path, encoding="utf-8") as handle:
        data = parse_yaml(handle.read()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config, relative to this one")
    return merge_sections(read_config_file(path.parent / base, (*_seen, path.resolve())), data)


def read_config_dict(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML config (and its ``base``) as a dict with ``key=value`` overrides applied (not validated)."""
    return apply_overrides(read_config_file(path) if path is not None else {}, overrides)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (and its ``base``), apply overrides and validate."""
    return TrainConfig.from_dict(read_config_dict(path, overrides))
