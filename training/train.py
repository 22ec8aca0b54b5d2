"""Train HonestFace.

    python training/train.py --config training/configs/tiny.yaml [--resume PATH|auto]
                             [--output DIR] [--profile N] [key=value ...]
    accelerate launch --num_processes 4 training/train.py --config training/configs/paper.yaml

What is trained (paper Sec. 3, 4.1): the UNet LoRA (rank 16, alpha 16), the VRE
projection, the IDE heads and the fusion; the VAE, the VQ encoder and codebook, VGG16,
the recognisers and the heatmap model are frozen. A model config that *bundles* parts
(``bundled: [unet, vae, vq, vgg]``, with ``lora.rank: 0``; see ``configs/nano.yaml``)
trains those parts in full from their random start and stores them in the export. Each optimiser step runs the generator
on ``gradient_accumulation`` micro-batches (all losses of
:mod:`honestface.losses.objective`), then the latent discriminator on the same
micro-batches' latents (Eq. 5): G and D alternate.

Several processes (``accelerate launch`` / ``torchrun``; NCCL on GPUs, gloo on CPUs):
each rank reads its own shard of the data order; the gradients of the trainable
parameters are averaged with one all-reduce per optimiser step, so every rank keeps the
same weights. Checkpoints (``<output>/checkpoints/step-N``) hold everything needed to
continue exactly (see :mod:`training.state`); ``--resume auto`` takes the newest. At the
end the model is exported to ``<output>/<train.export_name>``, the inference checkpoint
format of :mod:`honestface.loaders.checkpoint`. TensorBoard logs go to ``<output>/logs``.
``--profile N`` runs N steps, saves nothing and reports step time, peak memory and the
data loader's throughput (:mod:`training.cost`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from honestface.config import HonestFaceConfig
from honestface.errors import ConfigError, HonestFaceError
from honestface.losses import TrainingObjective
from honestface.models.honestface import HonestFaceModel
from training import state as ckpt
from training.config import TrainConfig, load_config
from training.data import EpochSampler, build_datasets, collate, identity_name, infinite_batches

logger = logging.getLogger("honestface.train")


# ----------------------------------------------------------------------------- model


def _set_dotted(config: HonestFaceConfig, key: str, value: Any) -> None:
    target = config
    parts = key.split(".")
    for part in parts[:-1]:
        target = getattr(target, part)
    if not hasattr(target, parts[-1]):
        raise ConfigError(f"model.overrides: unknown model config key '{key}'")
    current = getattr(target, parts[-1])
    setattr(target, parts[-1], tuple(value) if isinstance(current, tuple) else value)


def build_model(section, seed: int) -> HonestFaceModel:
    """The generator with a fresh (or loaded) LoRA adapter, identical on every rank."""
    torch.manual_seed(seed)
    if section.init == "random":
        from honestface.models.honestface import build_diffusers

        config = HonestFaceConfig.from_preset(section.preset)
        for key, value in section.overrides.items():
            _set_dotted(config, key, value)
        config.validate()
        unet, vae = build_diffusers(config, seed)
        if section.vae:
            vae = load_pretrained_vae(section.vae, config)
        model = HonestFaceModel(config, unet, vae, vgg_state_dict=None, lora=True)
    else:
        model = build_model_from_files(section)
        if getattr(model.restorer, "lora_config", None) is None and model.config.lora.rank > 0:
            model.restorer.add_lora(model.config.lora)
        if section.init == "checkpoint":
            # the automatic-fidelity estimator may be added to (or changed in) a finished model
            for key, value in section.overrides.items():
                if not key.startswith("fidelity."):
                    current = model.config
                    for part in key.split("."):
                        current = getattr(current, part, None)
                    same = (list(current) == list(value)) if isinstance(current, (list, tuple)) and \
                        isinstance(value, (list, tuple)) else current == value
                    if not same:  # the checkpoint's own value repeated is fine
                        raise ConfigError(f"model.overrides: '{key}' cannot change a checkpoint's model (it has "
                                          f"{current!r}); only the fidelity settings can")
                    continue
                _set_dotted(model.config, key, value)
            model.config.validate()
            if model.config.fidelity.enabled and model.fidelity is None:
                from honestface.models.fidelity import FidelityEstimator

                model.fidelity = FidelityEstimator(model.config.fidelity)
    model.set_trainable()
    parts = {"unet": model.unet, "vae": model.vae, "vq": model.vre.vq,
             "vgg": getattr(model.ide.feature_extractor, "vgg", None)}  # no FFE (FIE-only IDE): no VGG
    for name in section.freeze:
        if parts[name] is None:
            raise ConfigError(f"model.freeze: this model has no {name}")
        parts[name].requires_grad_(False)
    if section.train_only:
        modules = model.trainable_modules()
        unknown = sorted(set(section.train_only) - set(modules) - {"lora"})
        if unknown:
            raise ConfigError(f"model.train_only: {unknown} not among this model's trainable parts "
                              f"{sorted(modules) + ['lora']}")
        model.requires_grad_(False)
        for name in section.train_only:
            for parameter in (model.restorer.lora_parameters() if name == "lora" else modules[name].parameters()):
                parameter.requires_grad_(True)
    if section.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        # the frozen VAE decoder sits between the loss and the LoRA: recompute it as well
        if hasattr(model.vae, "enable_gradient_checkpointing"):
            model.vae.enable_gradient_checkpointing()
    return model


def load_pretrained_vae(folder: str | Path, config: HonestFaceConfig) -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` folder (stage 1) for the model of ``config``, whose VAE
    config takes the folder's (same architecture required; the scaling factor may differ)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.vae: {folder} is not a diffusers VAE folder (no config.json); "
                          "train one with training/train_autoencoder.py")
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    loaded = dict(vae.config)
    for key, value in config.vae.items():
        if key.startswith("_") or key == "scaling_factor":
            continue
        mine = list(value) if isinstance(value, (list, tuple)) else value
        theirs = list(loaded.get(key)) if isinstance(loaded.get(key), (list, tuple)) else loaded.get(key)
        if mine != theirs:
            raise ConfigError(f"model.vae: {folder} has {key}={theirs!r}, the model config {mine!r}")
    config.vae = {**config.vae, "scaling_factor": float(loaded["scaling_factor"])}
    logger.info("VAE from %s (scaling factor %.5f)", folder, config.vae["scaling_factor"])
    return vae


def build_model_from_files(section) -> HonestFaceModel:
    """SD 2.1-base (+ OSDFace release or HonestFace checkpoint) with an unmerged LoRA adapter.

    - ``init: sd21``: SD 2.1-base; fresh LoRA and heads; the frozen VQ encoder of the VRE
      comes from ``model.osdface`` when given (else it stays random, with a warning): the
      release folder, or any folder holding an ``associate_2.ckpt`` such as the output
      folder of stage-1 VRE training (the from-scratch recipe).
    - ``init: osdface``: also the release's LoRA and VRE projection (the paper's start).
    - ``init: checkpoint``: the config and trainable weights of a HonestFace checkpoint,
      the VQ encoder from ``model.osdface``.
    """
    from honestface.loaders import model_files
    from honestface.loaders.osdface import OSDFACE_FILES, VQ_FILE, find_osdface_folder

    models_dir = section.models_dir
    # only init osdface reads the release's LoRA and projection; the others take its VQ
    # checkpoint alone, so a stage-1 output folder (train_autoencoder.py) serves as well
    needed = OSDFACE_FILES if section.init == "osdface" else (VQ_FILE,)
    osdface = find_osdface_folder(section.osdface, models_dir, files=needed) if section.osdface else None
    if section.init == "checkpoint":
        files = model_files.resolve_model_files(sd21=section.sd21, checkpoint=section.checkpoint, osdface_dir=osdface,
                                                models_dir=models_dir, vgg=section.vgg, require_vq=False)
        return model_files.build_model(files, merge_lora=False)

    def configured(unet_config: dict | None = None, vae_config: dict | None = None) -> HonestFaceConfig:
        config = HonestFaceConfig.from_preset(section.preset)
        if unet_config is not None:
            config.unet, config.vae = unet_config, vae_config
            config.token_dim = int(unet_config["cross_attention_dim"])
        for key, value in section.overrides.items():
            _set_dotted(config, key, value)
        return config

    vgg = None
    if configured().ide.use_ffe:  # an IDE without the FFE has no VGG16
        vgg = model_files.library_finder(models_dir)(section.vgg or configured().ide.vgg_file,
                                                     "VGG16 weights of the facial feature extractor")
    # init osdface: the release file decides which modules carry LoRA (and its rank), as at inference
    files = model_files.ModelFiles(config=lambda unet, vae: configured(unet, vae).validate(), sd21=section.sd21,
                                   osdface_dir=osdface, vgg=vgg, models_dir=models_dir,
                                   osdface_parts=("vq", "projection", "lora") if section.init == "osdface" else ("vq",))
    return model_files.build_model(files, merge_lora=False)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Named trainable parameters of a module (the discriminator's checkpoint content)."""
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def _load_named(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    from honestface.errors import CheckpointError

    params = dict(module.named_parameters())
    wanted = {name for name, p in params.items() if p.requires_grad}
    if set(state) != wanted:
        raise CheckpointError(source, f"discriminator keys differ ({len(state)} in file, {len(wanted)} in model)")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# ----------------------------------------------------------------------------- helpers


def lr_lambda(optim, max_steps: int):
    def factor(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        if optim.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def average_gradients(parameters: Sequence[torch.nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks with one coalesced all-reduce (missing grads count as 0)."""
    if world_size <= 1 or not parameters:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def start_accelerator(loop):
    """Torch's CPU threads and accelerate's ``Accelerator`` for a ``train:`` section (mixed
    precision, CPU only); -> (accelerator, rank, world size, is the main process)."""
    from accelerate import Accelerator

    if loop.num_threads > 0:
        torch.set_num_threads(loop.num_threads)
    accelerator = Accelerator(mixed_precision=loop.mixed_precision, cpu=loop.cpu)
    return accelerator, accelerator.process_index, accelerator.num_processes, accelerator.is_main_process


def validate_and_checkpoint(loop, step: int, validate, save_checkpoint, writer) -> dict[str, float]:
    """The schedule after an optimiser step (every training program here): validate every
    ``loop.val_every`` steps and at the end (metrics to TensorBoard and the log), checkpoint
    every ``loop.checkpoint_every`` steps and at the end. Returns the metrics when it validated."""
    final = step == loop.max_steps
    metrics: dict[str, float] = {}
    if loop.val_every and (step % loop.val_every == 0 or final):
        metrics = validate()
        if metrics and writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(name, value, step)
            logger.info("validation at step %d: %s", step, metrics)
    if (loop.checkpoint_every and step % loop.checkpoint_every == 0) or final:
        save_checkpoint()
    return metrics


def image_grid(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (B, 3, H, W) rows into one (3, rows*H, B*W) image."""
    return torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs the loop (:meth:`run`)."""

    def __init__(self, config: TrainConfig, output_dir: str | Path | None = None, resume: str | None = None) -> None:
        self.config = config
        self.output = Path(output_dir or config.output_dir)
        loop = config.train
        self.accelerator, self.rank, self.world, self.is_main = start_accelerator(loop)
        self.device = self.accelerator.device
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            with open(self.output / "config.json", "w", encoding="utf-8") as handle:
                json.dump(config.to_dict(), handle, indent=1)

        # identical initial weights on every rank, then per-rank random streams
        self.model = build_model(config.model, config.seed).to(self.device)
        self.objective = TrainingObjective.build(
            config.losses, self.model.unet, self.model.restorer.alphas_cumprod.float(),
            models_dir=config.model.models_dir, device=self.device,
            heatmap_options=self._aligned_options(config.losses.mfa_landmarks))
        #: faces looked at by a landmark backend, and those without landmarks (this process)
        self.landmark_faces = self.landmark_misses = 0
        self.landmarks = self._backend("landmark", config.model.landmarks,
                                       {**config.model.landmark_options,
                                        **self._aligned_options(config.model.landmarks)})
        self.identity = self._backend("identity", config.model.identity, config.model.identity_options)
        if self.identity is not None and int(self.identity.embedding_dim) != self.model.config.ide.identity_dim:
            raise ConfigError(f"model.identity '{config.model.identity}' gives {self.identity.embedding_dim}-d "
                              f"embeddings but the model takes {self.model.config.ide.identity_dim}-d "
                              "(model.overrides: ide.identity_dim)")
        ckpt.seed_everything(config.seed * 1000 + self.rank)

        self.g_params = [p for p in self.model.trainable_parameters() if p.requires_grad]
        optim = config.optim
        self.opt_g = torch.optim.AdamW(self.g_params, lr=optim.lr, betas=optim.betas,
                                       weight_decay=optim.weight_decay, eps=optim.eps)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lr_lambda(optim, loop.max_steps))
        self.discriminator = self.objective.discriminator
        self.d_params: list[torch.nn.Parameter] = []
        self.opt_d = self.sched_d = None
        if self.discriminator is not None:
            self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
            self.opt_d = torch.optim.AdamW(self.d_params, lr=optim.disc_lr, betas=optim.betas,
                                           weight_decay=optim.weight_decay, eps=optim.eps)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, lr_lambda(optim, loop.max_steps))

        if not config.data.synthetic_lq:
            raise ConfigError("data.synthetic_lq: false gives the restorer clean inputs: it is for the stage-1 "
                              "autoencoder programs; set it true (degradation.clean_probability for clean inputs)")
        self.train_set, self.val_set = build_datasets(config.data)
        if self.train_set.config.image_size != self.model.config.image_size:
            raise ConfigError(f"data.image_size {config.data.image_size} != model image size "
                              f"{self.model.config.image_size}")
        self.sampler = EpochSampler(len(self.train_set), seed=config.seed, rank=self.rank, world_size=self.world)
        self.step = 0
        #: landmarks / identity embedding of each reference file (deterministic backends,
        #: and references are read without augmentation: computed once per file)
        self._reference_cache: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        resumed = bool(resume) and self._resume(resume)
        if self.model.config.ide.center_identity and not resumed:
            self._set_identity_center()
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output / "logs"))
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- backends
    def _aligned_options(self, landmark_backend: str) -> dict[str, Any]:
        """Options that make a landmark backend fit the aligned face box instead of detecting."""
        if self.config.data.aligned_faces and landmark_backend in ("dlib", "fan"):
            return {"detect": False}
        return {}

    def _count_landmarks(self, found: Sequence[bool]) -> None:
        self.landmark_faces += len(found)
        self.landmark_misses += sum(1 for flag in found if not flag)

    def _miss_rate_exceeded(self) -> bool:
        loop = self.config.train
        if self.landmark_faces < max(1, loop.landmark_miss_min_faces):
            return False
        return self.landmark_misses / self.landmark_faces > loop.max_landmark_miss_rate

    def _backend(self, kind: str, name: str, options: dict[str, Any]):
        if not name or name == "none":
            return None
        from honestface.face import load_identity_backend, load_landmark_backend

        factory = load_landmark_backend if kind == "landmark" else load_identity_backend
        return factory(name, models_dir=self.config.model.models_dir, device=str(self.device), **dict(options))

    # ------------------------------------------------------------------ resume
    def _resume(self, resume: str) -> bool:
        path = ckpt.latest_checkpoint(self.output) if resume == "auto" else Path(resume)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output)
            return False
        data = ckpt.read_checkpoint(path, self.rank)
        trainer = data["trainer"]
        self.model.load_trainable_state_dict(data["trainable"], source=str(path))
        if self.discriminator is not None:
            if data["discriminator"] is None:
                raise ConfigError(f"{path} has no discriminator but the adversarial loss is on")
            _load_named(self.discriminator, data["discriminator"], str(path))
        optimizers = data["optimizers"]
        self.opt_g.load_state_dict(optimizers["generator"])
        self.sched_g.load_state_dict(optimizers["generator_scheduler"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(optimizers["discriminator"])
            self.sched_d.load_state_dict(optimizers["discriminator_scheduler"])
        self.sampler.load_state_dict(trainer["sampler"][min(self.rank, len(trainer["sampler"]) - 1)])
        if data["rng"] is not None:
            ckpt.set_rng_state(data["rng"])
        else:
            logger.warning("%s has no RNG state for rank %d: random streams restart", path, self.rank)
        self.step = int(trainer["step"])
        logger.info("resumed from %s at step %d", path, self.step)
        before = trainer.get("config", {}).get("train", {}).get("max_steps")
        if before is not None and int(before) != self.config.train.max_steps and self.config.optim.scheduler != "constant":
            logger.warning("train.max_steps changed from %s to %d: the %s learning-rate schedule is stretched "
                           "from step %d on", before, self.config.train.max_steps, self.config.optim.scheduler,
                           self.step)
        return True

    def _set_identity_center(self, count: int = 256) -> None:
        """``ide.center_identity``: the mean identity embedding of ``count`` training images
        (a seeded choice, the same on every rank), stored in the model."""
        if self.identity is None:
            raise ConfigError("model.overrides ide.center_identity needs an identity backend (model.identity)")
        items = self.train_set.items
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.config.seed))[:count]
        paths, images = [], []
        for index in order.tolist():
            identity_index, file_index = items[index]
            path = self.train_set.identities[identity_index].files[file_index]
            image = self.train_set._read(path)
            if image is not None:
                paths.append(str(path))
                images.append(image)
        if not images:
            raise ConfigError("no readable training image to compute the identity centre from")
        _, embeddings = self._reference_features(torch.stack(images), paths)
        center = embeddings.mean(dim=0)
        self.model.ide.identity_encoder.identity_center.copy_(center.to(self.device))
        logger.info("identity centre: mean of %d training embeddings (norm %.3f)", len(images), float(center.norm()))

    def save_checkpoint(self) -> Path:
        final = ckpt.checkpoint_dir(self.output, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main and tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        ckpt.write_rank_files(tmp, self.rank)
        samplers = self._gather_sampler_states()
        if self.is_main:
            optimizers = {"generator": self.opt_g.state_dict(), "generator_scheduler": self.sched_g.state_dict()}
            if self.opt_d is not None:
                optimizers["discriminator"] = self.opt_d.state_dict()
                optimizers["discriminator_scheduler"] = self.sched_d.state_dict()
            trainer = {"step": self.step, "world_size": self.world, "sampler": samplers,
                       "config": self.config.to_dict()}
            ckpt.write_main_files(tmp, self.model,
                                  trainable_state(self.discriminator) if self.discriminator is not None else None,
                                  optimizers, trainer)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            ckpt.finalize(tmp, final, self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return final

    def weights_digest(self) -> list[str]:
        """SHA-256 of the trainable weights (generator and discriminator) on every rank."""
        import hashlib

        digest = hashlib.sha256()
        tensors = list(self.model.trainable_state_dict().items())
        if self.discriminator is not None:
            tensors += sorted(trainable_state(self.discriminator).items())
        for name, value in tensors:
            digest.update(name.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        own = digest.hexdigest()
        if self.world == 1:
            return [own]
        import torch.distributed as dist

        digests: list[Any] = [None] * self.world
        dist.all_gather_object(digests, own)
        return digests

    def _any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def _gather_sampler_states(self) -> list[dict[str, int]]:
        own = self.sampler.state_dict()
        if self.world == 1:
            return [own]
        import torch.distributed as dist

        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, own)
        return states

    # ----------------------------------------------------------------- forward
    @torch.no_grad()
    def _reference_features(self, images: torch.Tensor, paths: Sequence[str]
                            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Landmarks (M, 68, 2) and identity embeddings (M, D) of reference images
        (M, 3, S, S), from the per-file cache where possible (None without a backend)."""
        todo = [i for i, path in enumerate(paths) if not path or path not in self._reference_cache]
        if todo:
            chosen = images[todo]
            points = self.landmarks.landmarks(chosen).float().cpu() if self.landmarks is not None else None
            if points is not None:
                self._count_landmarks(torch.isfinite(points).flatten(1).all(dim=1).tolist())
            vectors = (self.identity.embed(chosen.to(self.device)).float().cpu()
                       if self.identity is not None else None)
            fresh = {}
            for row, i in enumerate(todo):
                fresh[i] = (None if points is None else points[row], None if vectors is None else vectors[row])
                if paths[i]:
                    self._reference_cache[paths[i]] = fresh[i]
        rows = [fresh[i] if i in todo else self._reference_cache[path] for i, path in enumerate(paths)]
        landmarks = torch.stack([r[0] for r in rows]) if self.landmarks is not None else None
        embeddings = torch.stack([r[1] for r in rows]) if self.identity is not None else None
        return landmarks, embeddings

    def _conditioning(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Landmarks and identity embeddings of the references (frozen backends, no grad)."""
        refs, mask = batch["references"], batch["reference_mask"]
        lq_landmarks = ref_landmarks = embeddings = None
        if refs.shape[1] == 0 or not bool(mask.any()):
            return {"lq_landmarks": None, "reference_landmarks": None, "identity_embeddings": None}
        with torch.no_grad():
            flat = refs.flatten(0, 1)
            real = mask.flatten()
            paths = [p for row in batch.get("reference_paths", [[""] * refs.shape[1]] * refs.shape[0]) for p in row]
            real_paths = [paths[i] for i in torch.nonzero(real).flatten().tolist()]
            points, vectors = self._reference_features(flat[real], real_paths)
            if self.landmarks is not None:
                lq_landmarks = self.landmarks.landmarks(batch["lq"]).float()
                self._count_landmarks(torch.isfinite(lq_landmarks).flatten(1).all(dim=1).tolist())
                all_points = torch.full((flat.shape[0], 68, 2), float("nan"))
                all_points[real] = points
                ref_landmarks = all_points.view(refs.shape[0], refs.shape[1], 68, 2)
            if self.identity is not None:
                all_vectors = torch.zeros(flat.shape[0], vectors.shape[-1])
                all_vectors[real] = vectors
                embeddings = all_vectors.view(refs.shape[0], refs.shape[1], -1)
        return {"lq_landmarks": lq_landmarks, "reference_landmarks": ref_landmarks,
                "identity_embeddings": embeddings}

    def _model_forward(self, batch: dict[str, Any]):
        # The model encodes the references with model.encode_references, the restore
        # pipeline's road too (there once per reference set, here every step: weights change).
        cond = self._conditioning(batch)
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        with self.accelerator.autocast():
            return self.model(move(batch["lq"]), move(batch["references"]), move(batch["reference_mask"]),
                              move(cond["lq_landmarks"]), move(cond["reference_landmarks"]),
                              move(cond["identity_embeddings"]))

    def train_step(self, stream) -> dict[str, float]:
        """One optimiser step of G, then one of D. Returns the logged values."""
        loop = self.config.train
        accumulation = loop.gradient_accumulation
        self.model.train()
        self.objective.train()
        logged: dict[str, float] = {}
        latents: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(accumulation):
            batch = next(stream)
            gt = batch["gt"].to(self.device)
            output = self._model_forward(batch)
            mfa_on = self.objective.mfa_active(self.step)
            found: list[bool] = []
            mask = self.objective.mfa_masks(batch["lq"].to(self.device), found) if mfa_on else None
            self._count_landmarks(found)
            with self.accelerator.autocast():
                terms = self.objective.generator_losses(output.image, gt, output.latent_restored, mask,
                                                       step=self.step, lq=batch["lq"].to(self.device),
                                                       fidelity=output.fidelity)
            (terms["total"] / accumulation).backward()
            for name, value in terms.items():
                logged[f"loss/{name}"] = logged.get(f"loss/{name}", 0.0) + float(value.detach()) / accumulation
            if self.discriminator is not None:
                with torch.no_grad(), self.accelerator.autocast():
                    real = self.model.restorer.encode(gt * 2.0 - 1.0)
                latents.append((output.latent_restored.detach(), real.detach()))
        average_gradients(self.g_params, self.world)
        if self.config.optim.max_grad_norm > 0:
            logged["grad_norm/generator"] = float(torch.nn.utils.clip_grad_norm_(self.g_params,
                                                                                 self.config.optim.max_grad_norm))
        self.opt_g.step()
        self.sched_g.step()
        self.opt_g.zero_grad(set_to_none=True)

        if self.discriminator is not None:
            self.opt_d.zero_grad(set_to_none=True)  # drop what the G step left on D
            for fake, real in latents:
                with self.accelerator.autocast():
                    loss_d = self.objective.discriminator_losses(fake, real)
                (loss_d / accumulation).backward()
                value = float(loss_d.detach()) / accumulation
                logged["loss/discriminator"] = logged.get("loss/discriminator", 0.0) + value
            average_gradients(self.d_params, self.world)
            if self.config.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.d_params, self.config.optim.max_grad_norm)
            self.opt_d.step()
            self.sched_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        logged["landmarks/faces"] = float(self.landmark_faces)
        logged["landmarks/missed"] = float(self.landmark_misses)
        logged["landmarks/miss_rate"] = self.landmark_misses / max(1, self.landmark_faces)
        logged["lr/generator"] = self.sched_g.get_last_lr()[0]
        if self.sched_d is not None:
            logged["lr/discriminator"] = self.sched_d.get_last_lr()[0]
        return logged

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Restore part of the val split; log a grid and PSNR / A-LD (eyes) / Deg."""
        if self.val_set is None or not self.is_main:
            return {}
        from honestface.metrics.pixel import psnr

        loop = self.config.train
        with torch.random.fork_rng(devices=[]):  # validation must not shift the training RNG
            was_training = self.model.training
            self.model.eval()
            keys = [(i, i) for i in range(min(len(self.val_set), loop.val_batches * loop.val_batch_size))]
            results: dict[str, list[float]] = {"psnr": [], "psnr_lq": [], "ald_eyes": [], "deg": []}
            grid_rows = None
            for start in range(0, len(keys), loop.val_batch_size):
                batch = collate([self.val_set[k] for k in keys[start:start + loop.val_batch_size]])
                output = self._model_forward(batch)
                restored = output.image.float().cpu().clamp(0, 1)
                gt, lq = batch["gt"], batch["lq"]
                results["psnr"] += psnr(restored, gt).tolist()
                if output.fidelity is not None:  # what the pipeline returns: x + w (R - x)
                    from honestface.models.fidelity import blend_fidelity

                    blended = blend_fidelity(lq, restored, output.fidelity.float().cpu()).clamp(0, 1)
                    results.setdefault("psnr_fidelity", []).extend(psnr(blended, gt).tolist())
                    results.setdefault("fidelity_weight", []).extend(output.fidelity.float().cpu().tolist())
                results["psnr_lq"] += psnr(lq, gt).tolist()
                results["ald_eyes"] += self._ald(restored, gt)
                results["deg"] += self._deg(restored, gt)
                if grid_rows is None:
                    grid_rows = [lq, restored, gt]
            self.model.train(was_training)
        metrics = {}
        for name, values in results.items():
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                metrics[f"val/{name}"] = sum(finite) / len(finite)
        if grid_rows is not None:
            grid = image_grid(grid_rows)
            if self.writer is not None:
                self.writer.add_image("val/lq_restored_gt", grid, self.step)
            from honestface.image_io import save_image

            save_image(grid, self.output / "samples" / f"step-{self.step:08d}.png")
        return metrics

    def _val_backend(self, kind: str):
        attribute = f"_val_{kind}"
        if not hasattr(self, attribute):
            loop = self.config.train
            name = loop.val_landmarks if kind == "landmark" else loop.val_identity
            options = {}
            if kind == "landmark":
                options = self._aligned_options(name) or ({"aligned_fallback": True} if name == "dlib" else {})
            setattr(self, attribute, self._backend(kind, name, options))
        return getattr(self, attribute)

    def _ald(self, restored: torch.Tensor, gt: torch.Tensor) -> list[float]:
        backend = self._val_backend("landmark")
        if backend is None:
            return []
        from honestface.errors import HonestFaceError as _Error
        from honestface.metrics.landmark import ald_eyes

        a, b = backend.landmarks(restored).double(), backend.landmarks(gt).double()
        values = []
        for i in range(a.shape[0]):
            try:
                values.append(float(ald_eyes(a[i], b[i])))
            except _Error:  # degenerate landmarks of a failed fit: no value for this face
                continue
        return values

    def _deg(self, restored: torch.Tensor, gt: torch.Tensor) -> list[float]:
        backend = self._val_backend("identity")
        if backend is None:
            return []
        from honestface.metrics.identity import identity_angle_degrees

        return identity_angle_degrees(backend.embed(restored).float().cpu(), backend.embed(gt).float().cpu()).tolist()

    # ------------------------------------------------------------------- export
    def export(self) -> Path | None:
        """Write the inference checkpoint (HonestFace ``.safetensors``) of the current weights."""
        if not self.is_main:
            return None
        from honestface.loaders.checkpoint import save_checkpoint

        path = self.output / self.config.train.export_name
        tmp = path.with_name(path.stem + ".partial.safetensors")
        dtype = getattr(torch, self.config.train.export_dtype)
        # which people the model never saw, so evaluations can stay on held-out identities
        heldout = sorted(identity_name(i) for i in self.val_set.identities) if self.val_set is not None else []
        trained_with = self.model.config.color_correction
        self.model.config.color_correction = self.config.train.export_color_correction or trained_with
        try:
            save_checkpoint(self.model, tmp, extra_metadata={"training_step": str(self.step),
                                                             "heldout_identities": json.dumps(heldout)},
                            dtype=None if dtype == torch.float32 else dtype)
        finally:
            self.model.config.color_correction = trained_with
        tmp.replace(path)
        return path

    # --------------------------------------------------------------------- loop
    def log(self, values: dict[str, float]) -> None:
        if self.world > 1:  # average the scalar values over ranks for the log
            import torch.distributed as dist

            names = sorted(k for k in values if k.startswith("loss/"))
            tensor = torch.tensor([values[k] for k in names], dtype=torch.float64, device=self.device)
            dist.all_reduce(tensor)
            for name, value in zip(names, (tensor / self.world).tolist()):
                values[name] = value
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, self.step)

    def run(self) -> dict[str, Any]:
        loop = self.config.train
        stream = infinite_batches(self.train_set, self.sampler, loop.batch_size, loop.num_workers)
        started, samples = time.perf_counter(), 0
        last: dict[str, float] = {}
        while self.step < loop.max_steps:
            last = self.train_step(stream)
            self.step += 1
            samples += loop.batch_size * loop.gradient_accumulation * self.world
            bad = sorted(name for name, value in last.items() if not math.isfinite(value))
            if self._any_rank(bool(bad)):  # every rank stops together, none hangs in a collective
                raise HonestFaceError(f"non-finite {bad or 'loss on another rank'} at step {self.step}: "
                                      "training diverged")
            if self._any_rank(self._miss_rate_exceeded()):
                raise HonestFaceError(
                    f"landmarks were not found in {self.landmark_misses} of {self.landmark_faces} faces "
                    f"({100 * self.landmark_misses / max(1, self.landmark_faces):.1f}%, limit "
                    f"{100 * loop.max_landmark_miss_rate:.1f}%) by step {self.step}: their MFA masks are "
                    "zero and Eq. 6 falls back to the first reference. Use aligned crops "
                    "(data.aligned_faces: true) or raise train.max_landmark_miss_rate")
            if self.is_main:
                self.history.append({"step": self.step, **{k: v for k, v in last.items() if k.startswith("loss/")}})
            if loop.log_every and self.step % loop.log_every == 0:
                self.log(dict(last))
                if self.is_main:
                    losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in last.items() if k.startswith("loss/"))
                    logger.info("step %d %s", self.step, losses)
            validate_and_checkpoint(loop, self.step, self.validate, self.save_checkpoint, self.writer)
        elapsed = time.perf_counter() - started
        exported = self.export()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        self.accelerator.wait_for_everyone()
        digests = self.weights_digest()
        if len(set(digests)) > 1:
            raise HonestFaceError(f"the trainable weights differ between ranks: {digests}")
        summary = {"steps": self.step, "seconds": elapsed, "samples_per_second": samples / max(elapsed, 1e-9),
                   "export": str(exported) if exported else None, "world_size": self.world,
                   "weights_sha256": digests, "last": last}
        if self.is_main:
            # a resumed run continues the history of the steps before it
            path = self.output / "history.json"
            earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
            first = self.history[0]["step"] if self.history else self.step + 1
            with open(path, "w", encoding="utf-8") as handle:
                json.dump([row for row in earlier if row["step"] < first] + self.history, handle)
        return summary


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--resume", help="checkpoint folder, or 'auto' for the newest in the output folder")
    parser.add_argument("--output", help="output folder (overrides output_dir)")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="run N steps, save nothing, report step time, peak memory and data-loader samples/s")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    return parser.parse_intermixed_args(argv)  # overrides may come before and after the options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile is not None and args.profile < 1:
        print("train.py: error: --profile needs a number of steps >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        trainer = Trainer(config, output_dir=args.output, resume=args.resume)
        if args.profile is not None:
            return _profile(trainer, args.profile)
        summary = trainer.run()
    except HonestFaceError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    if trainer.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "last"}))
        path = trainer.output / "summary.json"
        if summary["samples_per_second"] > 0 or not path.is_file():  # a re-export keeps the run's summary
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=1)
    return 0


def _profile(trainer: Trainer, steps: int) -> int:
    from training.cost import format_profile, profile_training

    report = profile_training(trainer, steps)
    if trainer.writer is not None:
        trainer.writer.close()
    if trainer.is_main:
        print(format_profile(report))
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
