"""Stage 1: train an image autoencoder on its own, before the restorer is trained on top of it.

    python training/train_autoencoder.py --config training/configs/nano_vae.yaml [--resume auto]
    accelerate launch --num_processes 4 training/train_autoencoder.py --config ...

The paper's restorer works in the latent space of SD 2.1's VAE, which was trained as an
autoencoder and stays frozen: a clean face goes through it almost unchanged, so the
one-step model only has to learn the *change* a face needs. A model trained from scratch
(``training/configs/nano.yaml``) needs such an autoencoder too; this program trains it.

``model.kind``:

- ``kl``: a diffusers ``AutoencoderKL`` (``model.config``: its diffusers config) trained on
  the ground-truth faces of the data set with an L1 / MSE reconstruction loss and a small KL
  term (latents are sampled from the posterior while training, the mode is used for
  validation, as at inference). The export is a diffusers folder ``<output>/vae/``
  (``config.json`` + ``diffusion_pytorch_model.safetensors``) whose ``scaling_factor`` is
  ``1 / std`` of the latents of training faces, as SD's was chosen; ``model.vae`` of the main
  trainer's config starts from it.
- ``vq-hq`` / ``vq-lq``: stage 1 of the VRE (OSDFace's LQ embedder, paper Eq. 7), see
  :mod:`training.vq`: the HQ dictionary, a VQ autoencoder of clean faces, then the LQ
  dictionary on the synthetic LQ of the same faces with DAEFR's association loss. The
  export is a checkpoint in the release's ``associate_2.ckpt`` format:
  ``<output>/hq_dictionary.ckpt`` (``vq-hq``, for ``vq-lq``'s ``model.hq_dictionary``) and
  ``<output>/associate_2.ckpt`` (``vq-lq``): the main trainer's ``model.osdface`` takes
  that output folder, as does ``honestface restore --osdface``.

Checkpoints (``<output>/checkpoints/step-N``: ``autoencoder.safetensors``, ``optimizers.pt``,
``rng-rank<R>.pt``, ``trainer.json``) are written atomically and resume exactly (weights,
optimiser, RNG states of every rank, data order), like the main trainer's; TensorBoard
logs go to ``<output>/logs``; validation reports PSNR of the reconstruction of held-out
identities (the data split of ``data.val_fraction`` / ``data.split_seed``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from honestface.config import section_reader, strict_from_dict
from honestface.errors import ConfigError, HonestFaceError
from training import state as ckpt
from training.config import LoopSection, OptimSection, read_config_dict
from training.data import DataConfig, EpochSampler, build_datasets, infinite_batches
from training.train import average_gradients, image_grid, lr_lambda, start_accelerator, validate_and_checkpoint
from training.vq import VQ_KINDS, VQTask, check_vq_section, vre_config

logger = logging.getLogger("honestface.train_autoencoder")

MODEL_FILE = "autoencoder.safetensors"
KINDS = ("kl", *VQ_KINDS)


@dataclass
class AutoencoderSection:
    """What is trained.

    Attributes:
        kind: ``"kl"`` (diffusers ``AutoencoderKL``), ``"vq-hq"`` / ``"vq-lq"`` (the VRE's
            HQ / LQ dictionary, :mod:`training.vq`).
        config: ``kl``: the diffusers config of the autoencoder.
        l1: weight of the mean absolute reconstruction error (images in [-1, 1]).
        mse: weight of the mean squared reconstruction error.
        kl: ``kl``: weight of the KL divergence of the posterior from N(0, I) (mean over
            latent elements). Small: it only keeps the latents from drifting in scale.
        scaling_samples: ``kl``: training faces whose latent standard deviation sets the
            exported ``scaling_factor`` (0 keeps the config's).

    VQ kinds only (:mod:`training.vq`):
        vre_preset: the dictionaries' sizes are the VRE's of this HonestFace preset
            (``sd21``: the release's; ``tiny``: the CPU test model's).
        vre: changes to those sizes (:class:`~honestface.config.VREConfig` keys); stage 2
            must use the same (``model.overrides`` with ``vre.`` keys).
        hq_dictionary: ``vq-lq``: the ``vq-hq`` run's ``hq_dictionary.ckpt``.
        train_hq: ``vq-lq``: the HQ autoencoder learns too while the association loss is
            on (DAEFR's association stage); False keeps it frozen.
        init: start weights from a checkpoint of this format (``vq-hq``: its ``vqvae.*``
            part; ``vq-lq``: its ``vqvae_LQ.*`` part and ``logit_scale``).
        perceptual: weight of LPIPS-VGG (0 without its files). codebook, commitment: the
            VQ-VAE terms. association: DAEFR's HQ-LQ contrast (``vq-lq``).
        pretrained: LPIPS from its files (False: random networks, tests only).
        start_steps: per loss name, the optimiser step from which it counts
            (``{association: N}``: OSDFace's LQ dictionary learns alone first).
        models_dir: where the LPIPS files are looked up (``HONESTFACE_MODELS`` when empty).
    """

    kind: str = "kl"
    config: dict[str, Any] = field(default_factory=dict)
    l1: float = 1.0
    mse: float = 0.0
    kl: float = 1e-6
    scaling_samples: int = 256
    vre_preset: str = "sd21"
    vre: dict[str, Any] = field(default_factory=dict)
    hq_dictionary: str | None = None
    train_hq: bool = True
    init: str | None = None
    perceptual: float = 1.0
    codebook: float = 1.0
    commitment: float = 0.25
    association: float = 1.0
    pretrained: bool = True
    start_steps: dict[str, int] = field(default_factory=dict)
    models_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.kind in VQ_KINDS:
            check_vq_section(self)
            return
        if not self.config:
            raise ConfigError("model.config: the autoencoder's diffusers config is required")
        if min(self.l1, self.mse, self.kl) < 0 or self.l1 + self.mse <= 0:
            raise ConfigError("model.l1 / model.mse / model.kl must be >= 0, with l1 + mse > 0")


@dataclass
class AutoencoderTrainConfig:
    seed: int = 0
    output_dir: str = "runs/autoencoder"
    model: AutoencoderSection = field(default_factory=lambda: AutoencoderSection(config={"_": 0}))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: LoopSection = field(default_factory=LoopSection)

    def __post_init__(self) -> None:
        if self.model.kind not in VQ_KINDS:
            return
        if self.model.kind == "vq-lq" and not self.data.synthetic_lq:
            raise ConfigError("kind vq-lq learns from the synthetic LQ of the faces: set data.synthetic_lq: true")
        resolution = vre_config(self.model.vre_preset, self.model.vre).resolution
        if self.data.image_size != resolution:
            raise ConfigError(f"data.image_size {self.data.image_size} != {resolution}, the resolution of the "
                              f"VRE of preset '{self.model.vre_preset}': set data.image_size to {resolution}")

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "output_dir": self.output_dir, "model": asdict(self.model),
                "data": self.data.to_dict(), "optim": {**asdict(self.optim), "betas": list(self.optim.betas)},
                "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoencoderTrainConfig":
        sections = {"model": section_reader(AutoencoderSection, "config section 'model'"),
                    "optim": section_reader(OptimSection, "config section 'optim'"),
                    "train": section_reader(LoopSection, "config section 'train'"),
                    "data": DataConfig.from_dict}
        if "model" not in data:
            raise ConfigError("the config needs a 'model' section (kind and the autoencoder's config)")
        return strict_from_dict(cls, data, "the autoencoder training config", sections)


def build_autoencoder(section: AutoencoderSection, seed: int) -> torch.nn.Module:
    """The autoencoder of ``section.kind`` with seeded random weights (the same on every rank);
    for the VQ kinds a :class:`~training.vq.VQTask` (the dictionaries and their losses)."""
    torch.manual_seed(seed)
    if section.kind in VQ_KINDS:
        return VQTask(section, section.models_dir)
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config({k: v for k, v in section.config.items() if not k.startswith("_")})


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of (B, 3, H, W) tensors in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


class AutoencoderTrainer:
    """Builds everything from an :class:`AutoencoderTrainConfig` and runs the loop."""

    def __init__(self, config: AutoencoderTrainConfig, output_dir: str | Path | None = None,
                 resume: str | None = None) -> None:
        self.config = config
        self.output = Path(output_dir or config.output_dir)
        loop = config.train
        self.accelerator, self.rank, self.world, self.is_main = start_accelerator(loop)
        self.device = self.accelerator.device
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(config.to_dict(), indent=1), encoding="utf-8")
        self.model = build_autoencoder(config.model, config.seed).to(self.device)
        self.vq = config.model.kind in VQ_KINDS
        ckpt.seed_everything(config.seed * 1000 + self.rank)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=optim.lr, betas=optim.betas,
                                           weight_decay=optim.weight_decay, eps=optim.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(optim, loop.max_steps))
        self.train_set, self.val_set = build_datasets(config.data)
        self.sampler = EpochSampler(len(self.train_set), seed=config.seed, rank=self.rank, world_size=self.world)
        self.step = 0
        if resume:
            self._resume(resume)
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output / "logs"))

    # ------------------------------------------------------------------ state
    def _resume(self, resume: str) -> None:
        from safetensors.torch import load_file

        path = ckpt.latest_checkpoint(self.output) if resume == "auto" else Path(resume)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output)
            return
        trainer_file = path / "trainer.json"
        if not trainer_file.is_file():
            raise ConfigError(f"{path} is not an autoencoder training checkpoint (no trainer.json)")
        trainer = json.loads(trainer_file.read_text(encoding="utf-8"))
        if trainer.get("config", {}).get("model", {}).get("kind") != self.config.model.kind:
            raise ConfigError(f"{path} holds a '{trainer.get('config', {}).get('model', {}).get('kind')}' "
                              f"autoencoder, this config trains '{self.config.model.kind}'")
        self.model.load_state_dict(load_file(str(path / MODEL_FILE)), strict=True)
        optimizers = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(optimizers["optimizer"])
        self.scheduler.load_state_dict(optimizers["scheduler"])
        self.sampler.load_state_dict(trainer["sampler"][min(self.rank, len(trainer["sampler"]) - 1)])
        rng_file = path / f"rng-rank{self.rank}.pt"
        if rng_file.is_file():
            ckpt.set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
        else:
            logger.warning("%s has no RNG state for rank %d: random streams restart", path, self.rank)
        self.step = int(trainer["step"])
        logger.info("resumed from %s at step %d", path, self.step)

    def _gather(self, value: Any) -> list[Any]:
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def save_checkpoint(self) -> Path:
        final = ckpt.checkpoint_dir(self.output, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        ckpt.write_rank_files(tmp, self.rank)
        samplers = self._gather(self.sampler.state_dict())
        if self.is_main:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                      str(tmp / MODEL_FILE))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "optimizers.pt")
            trainer = {"step": self.step, "world_size": self.world, "sampler": samplers,
                       "config": self.config.to_dict()}
            (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1, sort_keys=True), encoding="utf-8")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            ckpt.finalize(tmp, final, self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return final

    # ------------------------------------------------------------------ loop
    def losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction and KL losses of a (B, 3, H, W) batch in [0, 1]."""
        section = self.config.model
        x = images * 2.0 - 1.0
        with self.accelerator.autocast():
            posterior = self.model.encode(x).latent_dist
            recon = self.model.decode(posterior.sample()).sample.float()
        error = recon - x
        terms = {"l1": error.abs().mean(), "mse": error.pow(2).mean(),
                 "kl": 0.5 * (posterior.mean.float().pow(2) + posterior.var.float() - 1.0
                              - posterior.logvar.float()).mean()}
        terms["total"] = section.l1 * terms["l1"] + section.mse * terms["mse"] + section.kl * terms["kl"]
        return terms

    def batch_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Loss terms (with ``"total"``) and logged statistics of one micro-batch."""
        if not self.vq:
            return self.losses(batch["gt"].to(self.device)), {}
        lq = batch["lq"].to(self.device) if self.config.model.kind == "vq-lq" else None
        with self.accelerator.autocast():
            return self.model.losses(batch["gt"].to(self.device), lq, self.step)

    def train_step(self, stream) -> dict[str, float]:
        loop = self.config.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, float] = {}
        for _ in range(loop.gradient_accumulation):
            batch = next(stream)
            terms, stats = self.batch_losses(batch)
            (terms["total"] / loop.gradient_accumulation).backward()
            values = {f"loss/{name}": float(value.detach()) for name, value in terms.items()} | stats
            for name, value in values.items():
                logged[name] = logged.get(name, 0.0) + value / loop.gradient_accumulation
        average_gradients(self.params, self.world)
        if self.config.optim.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        logged["lr"] = self.scheduler.get_last_lr()[0]
        return logged

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode (posterior mode) and decode (B, 3, H, W) images in [0, 1] (VQ kinds: the
        trained dictionary's autoencoder, nearest codes)."""
        if self.vq:
            return self.model.reconstruct(images.to(self.device)).cpu()
        self.model.eval()
        x = images.to(self.device) * 2.0 - 1.0
        latent = self.model.encode(x).latent_dist.mode()
        return ((self.model.decode(latent).sample.float().clamp(-1, 1) + 1.0) / 2.0).cpu()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_set is None or not self.is_main:
            return {}
        loop = self.config.train
        values, shown = [], None
        # what the autoencoder reconstructs: the clean face, or its LQ for the LQ dictionary
        key = "lq" if self.config.model.kind == "vq-lq" else "gt"
        count = min(len(self.val_set), loop.val_batches * loop.val_batch_size)
        for start in range(0, count, loop.val_batch_size):
            samples = [self.val_set[i] for i in range(start, min(count, start + loop.val_batch_size))]
            target = torch.stack([sample[key] for sample in samples])
            recon = self.reconstruct(target)
            values.append(psnr(recon, target))
            if shown is None:
                shown = image_grid([target[:8], recon[:8]])
        metrics = {"val/psnr": float(torch.cat(values).mean())}
        if self.writer is not None and shown is not None:
            self.writer.add_image("val/gt_reconstruction", shown, self.step)
        return metrics

    @torch.no_grad()
    def latent_std(self) -> float:
        """Standard deviation of posterior-mode latents of training faces (seeded choice)."""
        count = min(self.config.model.scaling_samples, len(self.train_set))
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(self.config.seed))[:count]
        self.model.eval()
        latents = []
        for chunk in order.split(self.config.train.val_batch_size):
            gt = torch.stack([self.train_set[(int(i), 0)]["gt"] for i in chunk]).to(self.device)
            latents.append(self.model.encode(gt * 2.0 - 1.0).latent_dist.mode().float().cpu())
        return float(torch.cat(latents).std())

    def export(self) -> Path | None:
        """``<output>/vae``: a diffusers folder with the scaling factor of these latents (VQ
        kinds: ``<output>/hq_dictionary.ckpt`` or ``<output>/associate_2.ckpt``)."""
        if not self.is_main:
            return None
        if self.vq:
            return self.model.export(self.output, step=self.step, epoch=self.sampler.epoch,
                                     hyper_parameters={"training_config": self.config.to_dict()})
        target = self.output / "vae"
        if self.config.model.scaling_samples > 0:
            scale = 1.0 / max(self.latent_std(), 1e-6)
            self.model.register_to_config(scaling_factor=scale)
            logger.info("scaling factor %.5f (1 / std of the latents of %d training faces)", scale,
                        min(self.config.model.scaling_samples, len(self.train_set)))
        self.model.save_pretrained(str(target), safe_serialization=True)
        return target

    def run(self) -> dict[str, Any]:
        loop = self.config.train
        stream = infinite_batches(self.train_set, self.sampler, loop.batch_size, loop.num_workers)
        started, samples, last = time.perf_counter(), 0, {}
        metrics: dict[str, float] = {}
        while self.step < loop.max_steps:
            last = self.train_step(stream)
            self.step += 1
            samples += loop.batch_size * loop.gradient_accumulation * self.world
            if not all(math.isfinite(v) for v in last.values()):
                raise HonestFaceError(f"non-finite loss at step {self.step}: training diverged "
                                      "(lower optim.lr or model.kl)")
            if loop.log_every and self.step % loop.log_every == 0 and self.writer is not None:
                for name, value in last.items():
                    self.writer.add_scalar(name, value, self.step)
                logger.info("step %d %s", self.step,
                            " ".join(f"{k[5:]}={v:.5f}" for k, v in last.items() if k.startswith("loss/")))
            metrics = validate_and_checkpoint(loop, self.step, self.validate, self.save_checkpoint,
                                              self.writer) or metrics
        elapsed = time.perf_counter() - started
        exported = self.export()
        if self.writer is not None:
            self.writer.close()
        self.accelerator.wait_for_everyone()
        return {"steps": self.step, "seconds": elapsed, "samples_per_second": samples / max(elapsed, 1e-9),
                "export": str(exported) if exported else None, "world_size": self.world,
                "validation": metrics, "last": last}


def load_autoencoder_config(path: str | Path | None, overrides: Sequence[str] = ()) -> AutoencoderTrainConfig:
    return AutoencoderTrainConfig.from_dict(read_config_dict(path, overrides))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="YAML config (training/configs/*_vae.yaml, stage1_vre_*.yaml)")
    parser.add_argument("--resume", help="checkpoint folder, or 'auto' for the newest in the output folder")
    parser.add_argument("--output", help="output folder (overrides output_dir)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        trainer = AutoencoderTrainer(load_autoencoder_config(args.config, args.overrides),
                                     output_dir=args.output, resume=args.resume)
        summary = trainer.run()
    except HonestFaceError as error:
        print(f"train_autoencoder.py: error: {error}", file=sys.stderr)
        return 1
    if trainer.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "last"}))
        (trainer.output / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
