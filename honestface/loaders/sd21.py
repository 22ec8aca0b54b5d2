"""Stable Diffusion 2.1-base: UNet, VAE and noise schedule, loaded without any network.

Two on-disk forms are accepted, both as users keep them in ComfyUI's models folder:

- a **diffusers folder** (``<models>/diffusers/<name>/``) with ``unet/`` and ``vae/``
  (``config.json`` + ``diffusion_pytorch_model.safetensors``, ``.bin`` or sharded) and
  ``scheduler/scheduler_config.json``; other sub-folders (text encoder, tokenizer) are
  not needed and not read;
- **one checkpoint file** (``<models>/checkpoints/v2-1_512-ema-pruned.safetensors`` or
  ``.ckpt``) with the original LDM key names: UNet under ``model.diffusion_model.``,
  VAE under ``first_stage_model.`` (see :mod:`honestface.loaders.ldm_keys`). Its
  architecture comes from the configs shipped in ``honestface/loaders/configs/sd21-base/``
  (or from configs embedded by :func:`save_sd21_single_file`, or a ``config`` argument),
  so nothing is ever fetched from a model hub.

Every expected tensor must be present with the expected shape; anything else is a
:class:`~honestface.errors.CheckpointError` that names the file and what was expected
(an SD 1.x or SDXL file, for example, is recognised by its cross-attention width). The
number of tensors loaded and ignored is reported in :class:`~honestface.loaders.reports.ComponentLoadReport`.

The shipped VAE config adds ``scaling_factor: 0.18215`` (diffusers' default for SD 1.x/2.x,
absent from the original ``vae/config.json``) so the value is explicit. The 768x768
SD 2.1 model has the same tensor shapes but predicts ``v`` instead of noise: it cannot be
told apart from its weights and must not be used here (HonestFace's Eq. 3 assumes
epsilon prediction); file names containing "768" get a warning in the report.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import SD21_CONFIG_DIR, read_sd21_config
from ..errors import (
    CheckpointError,
    ConfigError,
    HonestFaceError,
    MissingModelFileError,
)
from ..paths import MODEL_FOLDERS, find_model_file
from . import ldm_keys
from .reports import ComponentLoadReport

logger = logging.getLogger(__name__)

#: File suffixes read as one LDM checkpoint.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: Metadata key (safetensors) / top-level key (.ckpt) under which
#: :func:`save_sd21_single_file` embeds the diffusers configs as JSON.
EMBEDDED_CONFIG_KEY = "honestface.sd_configs"
#: Weight file names of a diffusers model folder, in the order they are tried.
DIFFUSERS_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
#: Top-level tensors of an LDM checkpoint that store its noise schedule.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
)
_CROSS_ATTENTION_PROBE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """A torch floating dtype from a name ("auto", "float32", "fp16", "bf16", ...) or a dtype.

    ``"auto"`` (also ``None``, the default) is the fastest precision ``device`` (default CPU)
    computes natively: bfloat16 on CPUs with AVX512-BF16 or AMX, float32 on other CPUs,
    bfloat16 (else float16) on CUDA GPUs; see :func:`honestface.cpu_features.auto_dtype`.
    In bfloat16 on CPUs the pipeline keeps the UNet and the VAE encoder in float32 with
    bf16 math (:func:`honestface.acceleration.place_model`).
    """
    if dtype is None:
        dtype = "auto"
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating type, got {dtype}")
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        from ..cpu_features import auto_dtype

        return auto_dtype(device)
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of: auto, float32, float16, bfloat16")
    return _DTYPES[name]


# --------------------------------------------------------------------------- results
@dataclass
class SD21Models:
    """The parts of SD 2.1-base HonestFace uses.

    Attributes:
        unet: ``UNet2DConditionModel`` (None when not requested); eval mode, no grad.
        vae: ``AutoencoderKL`` (None when not requested); eval mode, no grad.
        scheduler_config: the diffusers scheduler config dict.
        alphas_cumprod: (num_train_timesteps,) float64 cumulative product of 1 - beta.
        scaling_factor: latent scaling of the VAE (0.18215 for SD 2.1-base).
        report: what was loaded (see :class:`ComponentLoadReport`).
    """

    unet: Any
    vae: Any
    scheduler_config: dict
    alphas_cumprod: torch.Tensor
    scaling_factor: float
    report: ComponentLoadReport

    @property
    def unet_config(self) -> dict:
        return dict(self.unet.config) if self.unet is not None else {}

    @property
    def vae_config(self) -> dict:
        return dict(self.vae.config) if self.vae is not None else {}


# --------------------------------------------------------------------------- configs
def sd21_configs() -> dict[str, dict]:
    """The shipped SD 2.1-base configs: {"unet": ..., "vae": ..., "scheduler": ...}."""
    return {part: read_sd21_config(part) for part in ("unet", "vae", "scheduler")}


def read_config_folder(folder: str | Path, required: Iterable[str] = ("unet", "vae")) -> dict[str, dict]:
    """Configs of a diffusers-layout folder; scheduler falls back to the shipped one.

    Raises:
        MissingModelFileError: a required ``<part>/config.json`` is missing.
        ConfigError: a config file is not valid JSON.
    """
    folder = Path(folder)
    names = {"unet": "unet/config.json", "vae": "vae/config.json",
             "scheduler": "scheduler/scheduler_config.json"}
    configs: dict[str, dict] = {}
    for part, name in names.items():
        path = folder / name
        if not path.is_file():
            if part in required:
                raise MissingModelFileError(Path(name).name, path.parent, f"SD 2.1-base {part} config")
            continue
        try:
            configs[part] = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not a valid JSON config ({error})") from error
    configs.setdefault("scheduler", read_sd21_config("scheduler"))
    return configs


def _configs_from_argument(config: str | Path | Mapping[str, Any] | None) -> dict[str, dict] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        missing = {"unet", "vae"} - set(config)
        if missing:
            raise ConfigError(f"config dict lacks {sorted(missing)}")
        out = {part: dict(config[part]) for part in ("unet", "vae")}
        out["scheduler"] = dict(config.get("scheduler") or read_sd21_config("scheduler"))
        return out
    return read_config_folder(config)


def betas_from_config(scheduler_config: Mapping[str, Any]) -> torch.Tensor:
    """(T,) float64 ``beta_t`` of a DDPM-style schedule (as LDM checkpoints store it).

    ``scaled_linear`` (SD 2.1-base, LDM's "linear"): ``beta = linspace(sqrt(b0), sqrt(b1), T)**2``;
    ``linear``: ``beta = linspace(b0, b1, T)``.
    """
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    start = float(scheduler_config.get("beta_start", 0.00085))
    end = float(scheduler_config.get("beta_end", 0.012))
    schedule = scheduler_config.get("beta_schedule", "scaled_linear")
    if scheduler_config.get("trained_betas") is not None:
        betas = torch.tensor(scheduler_config["trained_betas"], dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ConfigError(f"unsupported beta_schedule '{schedule}' (expected scaled_linear or linear)")
    return betas


def alphas_cumprod_from_config(scheduler_config: Mapping[str, Any]) -> torch.Tensor:
    """(T,) ``abar_t = prod_{s<=t} (1 - beta_s)`` (paper Eq. 1) as float64.

    Computed exactly as the one-step restorer computes it
    (:func:`honestface.models.restorer.training_alphas_cumprod`: diffusers' float32
    schedule, kept in float64 for the step), so both agree bit for bit.
    """
    if scheduler_config.get("trained_betas") is not None:
        betas = torch.tensor(scheduler_config["trained_betas"], dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0).double()
    from ..config import DiffusionConfig
    from ..models.restorer import training_alphas_cumprod

    schedule = DiffusionConfig(
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        beta_start=float(scheduler_config.get("beta_start", 0.00085)),
        beta_end=float(scheduler_config.get("beta_end", 0.012)),
        beta_schedule=str(scheduler_config.get("beta_schedule", "scaled_linear")))
    return training_alphas_cumprod(schedule)


def _check_epsilon(scheduler_config: Mapping[str, Any], report: ComponentLoadReport) -> None:
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise CheckpointError(report.source, f"the scheduler predicts '{prediction}'",
                              "an epsilon-prediction model such as SD 2.1-base (512)")


# --------------------------------------------------------------------------- models
def _diffusers_classes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    return UNet2DConditionModel, AutoencoderKL


def _empty_model(cls, config: Mapping[str, Any]):
    """The model with parameters on the meta device (no memory, no random init)."""
    clean = {key: value for key, value in config.items() if not key.startswith("_")}
    try:
        with torch.device("meta"):
            return cls.from_config(clean)
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"invalid {cls.__name__} config: {error}") from error


def build_sd21(configs: Mapping[str, Mapping[str, Any]] | None = None, *, dtype: str | torch.dtype = "float32",
               device: str | torch.device = "cpu", seed: int | None = None,
               components: Iterable[str] = ("unet", "vae")) -> SD21Models:
    """Randomly initialised SD 2.1-base models (shipped configs by default).

    For benchmarks and tests: sizes and compute are real, weights are not. ``seed`` makes
    the initialisation reproducible.
    """
    unet_cls, vae_cls = _diffusers_classes()
    configs = dict(configs) if configs is not None else sd21_configs()
    configs.setdefault("scheduler", read_sd21_config("scheduler"))
    torch_dtype = resolve_dtype(dtype)
    components = tuple(components)
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        models = {}
        for part, cls in (("unet", unet_cls), ("vae", vae_cls)):
            if part in components:
                clean = {k: v for k, v in configs[part].items() if not k.startswith("_")}
                with torch.device(device):  # initialise where the model will run (fast on GPUs)
                    model = cls.from_config(clean)
                # nn.Module.to: diffusers' override logs a spurious float32 warning on every cast
                torch.nn.Module.to(model, device=device, dtype=torch_dtype)
                models[part] = model.eval().requires_grad_(False)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    report = ComponentLoadReport(source="random initialisation", kind="random")
    vae = models.get("vae")
    return SD21Models(unet=models.get("unet"), vae=vae, scheduler_config=dict(configs["scheduler"]),
                      alphas_cumprod=alphas_cumprod_from_config(configs["scheduler"]),
                      scaling_factor=float(configs["vae"].get("scaling_factor", 0.18215)), report=report)


def _assign_weights(model, weights: Mapping[str, torch.Tensor], dtype: torch.dtype,
                    device: str | torch.device) -> None:
    converted = {key: (t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device))
                 for key, t in weights.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a buffer the state dict does not carry: cannot happen for SD layouts
        raise HonestFaceError(f"{type(model).__name__}: tensors left uninitialised: {leftover[:5]}")
    model.eval().requires_grad_(False)


# --------------------------------------------------------------------------- reading files
class _TensorFile:
    """Uniform read access to the tensors of a .safetensors or torch pickle file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self._safe = None
        self._tensors: dict[str, torch.Tensor] = {}
        if path.suffix == ".safetensors":
            self._open_safetensors()
        else:
            self._open_pickle()

    def _open_safetensors(self) -> None:
        from safetensors import safe_open
        try:
            self._safe = safe_open(str(self.path), framework="pt", device="cpu")
            self.metadata = dict(self._safe.metadata() or {})
            self._shapes = {key: tuple(self._safe.get_slice(key).get_shape()) for key in self._safe.keys()}
        except Exception as error:  # safetensors raises its own error types for every corruption
            raise CheckpointError(self.path, f"not a readable safetensors file ({error})",
                                  "an intact .safetensors checkpoint") from error

    def _open_pickle(self) -> None:
        obj = _torch_load_tensors(self.path)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            self.extra = {k: v for k, v in obj.items() if k != "state_dict"}
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise CheckpointError(self.path, f"holds a {type(obj).__name__}, not a dict of tensors",
                                  "a state dict, or a Lightning checkpoint with 'state_dict'")
        self._tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        embedded = obj.get(EMBEDDED_CONFIG_KEY, self.extra.get(EMBEDDED_CONFIG_KEY))
        if isinstance(embedded, str):
            self.metadata[EMBEDDED_CONFIG_KEY] = embedded
        self._shapes = {key: tuple(t.shape) for key, t in self._tensors.items()}

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def get(self, key: str) -> torch.Tensor:
        if self._safe is None:
            return self._tensors[key]
        try:
            return self._safe.get_tensor(key)
        except Exception as error:
            raise CheckpointError(self.path, f"tensor '{key}' cannot be read ({error})",
                                  "an intact .safetensors checkpoint") from error


def _torch_load_tensors(path: Path) -> Any:
    """``torch.load(weights_only=True)``; Lightning extras fall back to the safe unpickler."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # files written before PyTorch's zip format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({error})",
                              "an intact .ckpt/.pt file or a .safetensors file") from error
    # weights_only refuses non-tensor objects (hyper-parameters, callbacks) that Lightning
    # checkpoints may carry: rebuild only tensors and plain containers, never run the pickle.
    from .safe_pickle import restricted_load

    obj, blocked = restricted_load(path)
    logger.info("%s: skipped non-tensor objects %s (%s)", path.name, sorted(blocked), refused)
    return obj


def _embedded_configs(source: _TensorFile) -> dict[str, dict] | None:
    text = source.metadata.get(EMBEDDED_CONFIG_KEY)
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(source.path, f"embedded config is not JSON ({error})") from error
    if not isinstance(data, dict) or not {"unet", "vae"} <= set(data):
        raise CheckpointError(source.path, "embedded config lacks 'unet'/'vae'")
    data.setdefault("scheduler", read_sd21_config("scheduler"))
    return data


def describe_ldm_checkpoint(keys_and_shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short guess of which model family an LDM-style state dict belongs to."""
    prefix = ldm_keys.UNET_PREFIX
    if any(k.startswith("conditioner.embedders.") for k in keys_and_shapes) or \
            prefix + "label_emb.0.0.weight" in keys_and_shapes:
        return "Stable Diffusion XL (cross-attention dim 2048, label embedding)"
    parts = []
    probe = keys_and_shapes.get(prefix + _CROSS_ATTENTION_PROBE)
    if probe is not None:
        width = probe[-1]
        family = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x"}.get(width, "an unknown model")
        parts.append(f"{family} (cross-attention dim {width})")
    conv_in = keys_and_shapes.get(prefix + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        parts.append(f"{conv_in[1]} UNet input channels (inpainting/depth variant)")
    if not parts:
        return "not a Stable Diffusion checkpoint"
    return ", ".join(parts)


def _group_of(key: str) -> str:
    if key in SCHEDULE_BUFFERS:
        return "noise-schedule buffers"
    if key.startswith(ldm_keys.TEXT_ENCODER_PREFIX):
        return "cond_stage_model.* (text encoder)"
    if key.startswith("model_ema."):
        return "model_ema.* (EMA copy)"
    return key.split(".", 1)[0] + ".*"


def _component_names(model, config: Mapping[str, Any], component: str, label: str) -> dict[str, str]:
    try:
        return ldm_keys.ldm_names(tuple(model.state_dict()), config, component)
    except KeyError as error:
        raise ConfigError(f"{label}: the config is not an SD UNet/VAE layout ({error})") from error


def _check_component(source: _TensorFile, model, names: Mapping[str, str], config: Mapping[str, Any],
                     component: str, label: str) -> None:
    """Every tensor of ``component`` present under its LDM name with the right shape, nothing extra."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    present = set(source.keys())
    prefix = ldm_keys.UNET_PREFIX if component == "unet" else ldm_keys.VAE_PREFIX
    in_file = {k for k in present if k.startswith(prefix)}
    shapes = {k: source.shape(k) for k in present}
    family = describe_ldm_checkpoint(shapes)

    if not in_file:
        hint = ""
        if any(k.startswith(("down_blocks.", "encoder.down_blocks.")) for k in present):
            hint = "; it looks like a diffusers model file: pass its diffusers folder instead"
        raise CheckpointError(source.path, f"no {label} tensors under '{prefix}' ({family}){hint}",
                              f"an SD 2.1-base checkpoint with {label} tensors under '{prefix}'")

    missing = [names[k] for k in expected if names[k] not in present]
    wrong = []
    for key, shape in expected.items():
        name = names[key]
        if name in present:
            stored = shapes[name]
            fits = stored == shape or (ldm_keys.is_vae_attention_projection(key)
                                       and stored == shape + (1, 1))
            if not fits:
                wrong.append(f"{name}: {list(stored)} (model expects {list(shape)})")
    unexpected = sorted(in_file - set(names.values()))
    wrong.sort(key=lambda text: "attn2.to_k" not in text)  # the cross-attention width says most
    if wrong or missing or unexpected:
        cross = config.get("cross_attention_dim") if component == "unet" else None
        target = f"an SD 2.1-base-style {label}" + (f" with cross-attention dim {cross}" if cross else "")
        problems = []
        if wrong:
            problems.append(f"{len(wrong)} tensors have the wrong shape, e.g. {wrong[0]}")
        if missing:
            problems.append(f"{len(missing)} of {len(expected)} {label} tensors are missing, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected {label} tensors, e.g. {unexpected[0]}")
        raise CheckpointError(source.path, f"{'; '.join(problems)}; the file looks like {family}", target)


def _resolve_sd_path(path: str | Path, models_dir: str | Path | None) -> Path:
    candidate = Path(path).expanduser()
    if candidate.exists():
        return candidate
    if candidate.is_absolute():
        raise MissingModelFileError(candidate.name, candidate.parent, "SD 2.1-base model")
    for kind in ("diffusers", "checkpoints"):
        try:
            return find_model_file(kind, candidate, models_dir, what="SD 2.1-base model")
        except MissingModelFileError as error:
            last = error
    raise MissingModelFileError(
        str(candidate), last.folder, "SD 2.1-base model",
        f"Put a single-file checkpoint in <models>/{MODEL_FOLDERS['checkpoints']}/ or a diffusers "
        f"folder in <models>/{MODEL_FOLDERS['diffusers']}/.")


# --------------------------------------------------------------------------- loaders
def load_sd21(path: str | Path, *, config: str | Path | Mapping[str, Any] | None = None,
              dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
              models_dir: str | Path | None = None,
              components: Iterable[str] = ("unet", "vae")) -> SD21Models:
    """Load SD 2.1-base from a diffusers folder or one LDM checkpoint file.

    Args:
        path: a diffusers folder, a ``.safetensors``/``.ckpt`` file, or a name found in
            ``<models>/diffusers/`` or ``<models>/checkpoints/``.
        config: for single files only: a diffusers-layout config folder or a dict
            ``{"unet": ..., "vae": ..., "scheduler": ...}``; default: configs embedded in
            the file, else the shipped SD 2.1-base configs.
        dtype, device: of the returned models ("float32", "float16", "bfloat16").
        models_dir: models root for name lookup (default ``HONESTFACE_MODELS``).
        components: which of "unet" and "vae" to load.

    Raises:
        MissingModelFileError: the path, a sub-folder or a weight file is missing.
        CheckpointError: corrupt/truncated file, wrong model family, missing or extra tensors.
    """
    resolved = _resolve_sd_path(path, models_dir)
    if resolved.is_dir():
        if config is not None:
            raise ConfigError("config= applies to single-file checkpoints; a diffusers folder has its own configs")
        return load_sd21_diffusers(resolved, dtype=dtype, device=device, components=components)
    return load_sd21_single_file(resolved, config=config, dtype=dtype, device=device, components=components)


def load_sd21_single_file(path: str | Path, *, config: str | Path | Mapping[str, Any] | None = None,
                          dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                          components: Iterable[str] = ("unet", "vae")) -> SD21Models:
    """Load UNet and VAE from one LDM checkpoint (see :func:`load_sd21`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(path.name, path.parent, "SD 2.1-base checkpoint")
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(path, f"unsupported file type '{path.suffix}'",
                              f"one of {', '.join(SINGLE_FILE_SUFFIXES)}")
    torch_dtype = resolve_dtype(dtype)
    components = _check_components(components)
    source = _TensorFile(path)
    configs = _configs_from_argument(config) or _embedded_configs(source) or sd21_configs()
    report = ComponentLoadReport(source=path.name, kind="single-file")
    _check_epsilon(configs["scheduler"], report)
    if "768" in path.name:
        report.notes.append("the file name suggests the 768x768 v-prediction SD 2.1; HonestFace needs "
                            "the 512 base model (v2-1_512-*), which predicts noise")

    unet_cls, vae_cls = _diffusers_classes()
    models: dict[str, Any] = {}
    used: set[str] = set()
    for part, cls, label in (("unet", unet_cls, "UNet"), ("vae", vae_cls, "VAE")):
        model = _empty_model(cls, configs[part])
        names = _component_names(model, configs[part], part, label)
        used.update(names.values())
        if part not in components:
            continue
        _check_component(source, model, names, configs[part], part, label)
        weights = {key: ldm_keys.from_ldm_tensor(key, source.get(name)) for key, name in names.items()}
        _assign_weights(model, weights, torch_dtype, device)
        report.loaded[label] = (len(weights), len(names))
        models[part] = model
        del weights

    for key in source.keys():
        if key not in used:
            group = _group_of(key)
            report.ignored[group] = report.ignored.get(group, 0) + 1
    alphas = alphas_cumprod_from_config(configs["scheduler"])
    if "alphas_cumprod" in source.keys():
        stored = source.get("alphas_cumprod").to(torch.float64)
        if stored.shape != alphas.shape or not torch.allclose(stored, alphas, rtol=1e-4, atol=1e-6):
            report.notes.append("the file's alphas_cumprod differs from the scheduler config; "
                                "the config's schedule is used")
    for line in report.lines():
        logger.info(line)
    return SD21Models(unet=models.get("unet"), vae=models.get("vae"), scheduler_config=dict(configs["scheduler"]),
                      alphas_cumprod=alphas, scaling_factor=float(configs["vae"].get("scaling_factor", 0.18215)),
                      report=report)


def _check_components(components: Iterable[str]) -> tuple[str, ...]:
    components = tuple(components)
    unknown = set(components) - {"unet", "vae"}
    if unknown or not components:
        raise ConfigError(f"components must be a non-empty subset of ('unet', 'vae'), got {components}")
    return components


def _read_diffusers_weights(folder: Path, label: str) -> tuple[dict[str, torch.Tensor], str]:
    for name in DIFFUSERS_WEIGHT_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                index = json.loads(path.read_text(encoding="utf-8"))
                shards = sorted(set(index["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CheckpointError(path, f"not a valid shard index ({error})") from error
            weights: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise MissingModelFileError(shard, folder, f"SD 2.1-base {label} weight shard")
                weights.update(_read_flat_file(folder / shard))
            return weights, name
        return _read_flat_file(path), name
    raise MissingModelFileError(DIFFUSERS_WEIGHT_NAMES[0], folder, f"SD 2.1-base {label} weights")


def _read_flat_file(path: Path) -> dict[str, torch.Tensor]:
    source = _TensorFile(path)
    return {key: source.get(key) for key in source.keys()}


def load_sd21_diffusers(folder: str | Path, *, dtype: str | torch.dtype = "float32",
                        device: str | torch.device = "cpu",
                        components: Iterable[str] = ("unet", "vae")) -> SD21Models:
    """Load UNet and VAE from a diffusers folder (``unet/``, ``vae/``, ``scheduler/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingModelFileError(folder.name, folder.parent, "SD 2.1-base diffusers folder")
    torch_dtype = resolve_dtype(dtype)
    components = _check_components(components)
    configs = read_config_folder(folder, required=components)
    report = ComponentLoadReport(source=folder.name, kind="diffusers")
    _check_epsilon(configs["scheduler"], report)
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        report.notes.append("no scheduler/scheduler_config.json: the shipped SD 2.1-base schedule is used")
    unet_cls, vae_cls = _diffusers_classes()
    models: dict[str, Any] = {}
    for part, cls, label in (("unet", unet_cls, "UNet"), ("vae", vae_cls, "VAE")):
        if part not in components:
            continue
        model = _empty_model(cls, configs[part])
        weights, file_name = _read_diffusers_weights(folder / part, label)
        expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        wrong = [f"{k}: {list(weights[k].shape)} (config expects {list(s)})"
                 for k, s in expected.items() if k in weights and tuple(weights[k].shape) != s]
        where = folder / part / file_name
        if missing or unexpected or wrong:
            problems = []
            if wrong:
                problems.append(f"{len(wrong)} tensors have the wrong shape, e.g. {wrong[0]}")
            if missing:
                problems.append(f"{len(missing)} of {len(expected)} tensors missing, e.g. {missing[0]}")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[0]}")
            raise CheckpointError(where, "; ".join(problems), f"weights matching {part}/config.json")
        if part == "unet":
            width = configs["unet"].get("cross_attention_dim")
            if width != 1024:
                report.notes.append(f"UNet cross-attention dim is {width}, not SD 2.1-base's 1024")
        _assign_weights(model, weights, torch_dtype, device)
        report.loaded[label] = (len(weights), len(expected))
        models[part] = model
        del weights
    for line in report.lines():
        logger.info(line)
    return SD21Models(unet=models.get("unet"), vae=models.get("vae"), scheduler_config=dict(configs["scheduler"]),
                      alphas_cumprod=alphas_cumprod_from_config(configs["scheduler"]),
                      scaling_factor=float(configs["vae"].get("scaling_factor", 0.18215)), report=report)


# --------------------------------------------------------------------------- writers
def _model_config(model) -> dict:
    return {key: value for key, value in dict(model.config).items() if not key.startswith("_")}


def ldm_state_dict(unet, vae, scheduler_config: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """UNet + VAE (diffusers modules) as one LDM-named state dict, with the schedule buffers.

    ``betas``, ``alphas_cumprod`` and ``alphas_cumprod_prev`` are stored in float32 as the
    original checkpoints store them.
    """
    state: dict[str, torch.Tensor] = {}
    if unet is not None:
        state.update(ldm_keys.unet_to_ldm_state_dict(unet.state_dict(), unet.config))
    if vae is not None:
        state.update(ldm_keys.vae_to_ldm_state_dict(vae.state_dict(), vae.config))
    schedule = dict(scheduler_config or read_sd21_config("scheduler"))
    betas = betas_from_config(schedule)
    alphas = torch.cumprod(1.0 - betas, dim=0)
    state["betas"] = betas.float()
    state["alphas_cumprod"] = alphas.float()
    state["alphas_cumprod_prev"] = torch.cat([alphas.new_ones(1), alphas[:-1]]).float()
    return {key: tensor.detach().contiguous().cpu() for key, tensor in state.items()}


def save_sd21_single_file(path: str | Path, unet, vae, scheduler_config: Mapping[str, Any] | None = None, *,
                          embed_configs: bool = True,
                          extra_tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write UNet + VAE as one LDM checkpoint (``.safetensors`` or ``.ckpt``), like SD's release.

    With ``embed_configs`` the diffusers configs travel inside the file (safetensors
    metadata / a top-level string of the ``.ckpt``), so checkpoints of other sizes (the
    tiny test models) load without a ``config`` argument. A ``.ckpt`` is a Lightning-style
    ``{"state_dict": ..., "global_step": 0}``.
    """
    path = Path(path)
    state = ldm_state_dict(unet, vae, scheduler_config)
    if extra_tensors:
        state.update({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()})
    configs = {"unet": _model_config(unet) if unet is not None else None,
               "vae": _model_config(vae) if vae is not None else None,
               "scheduler": dict(scheduler_config or read_sd21_config("scheduler"))}
    text = json.dumps(configs, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        metadata = {"format": "pt"}
        if embed_configs:
            metadata[EMBEDDED_CONFIG_KEY] = text
        save_file(state, str(path), metadata=metadata)
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        payload: dict[str, Any] = {"state_dict": state, "global_step": 0}
        if embed_configs:
            payload[EMBEDDED_CONFIG_KEY] = text
        torch.save(payload, path)
    else:
        raise ConfigError(f"cannot write a checkpoint with suffix '{path.suffix}' (use .safetensors or .ckpt)")
    return path


def save_sd21_diffusers(folder: str | Path, unet, vae, scheduler_config: Mapping[str, Any] | None = None) -> Path:
    """Write a diffusers folder: ``unet/``, ``vae/`` (safetensors), ``scheduler/``, ``model_index.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if unet is not None:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
    if vae is not None:
        vae.save_pretrained(folder / "vae", safe_serialization=True)
    schedule = dict(scheduler_config or read_sd21_config("scheduler"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(schedule, indent=2, sort_keys=True) + "\n")
    import diffusers
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", schedule.get("_class_name", "PNDMScheduler")],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


__all__ = [
    "EMBEDDED_CONFIG_KEY",
    "SD21_CONFIG_DIR",
    "SD21Models",
    "alphas_cumprod_from_config",
    "betas_from_config",
    "build_sd21",
    "describe_ldm_checkpoint",
    "ldm_state_dict",
    "load_sd21",
    "load_sd21_diffusers",
    "load_sd21_single_file",
    "read_config_folder",
    "resolve_dtype",
    "save_sd21_diffusers",
    "save_sd21_single_file",
    "sd21_configs",
]
