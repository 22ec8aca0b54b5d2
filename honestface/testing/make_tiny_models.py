"""Write a ComfyUI-style models folder of tiny random models, in the real file formats.

    python -m honestface.testing.make_tiny_models MODELS_DIR [--seed 0]

Layout written (every file in the format the real release uses, only smaller)::

    MODELS_DIR/
      checkpoints/tiny-sd21-base.safetensors   SD 2.1-style single file, original LDM key
                                               names (model.diffusion_model.*, first_stage_model.*)
                                               with the configs in its metadata
      diffusers/tiny-sd21-base/                the same UNet/VAE as a diffusers folder
      honestface/osdface-tiny/                 OSDFace release set: pytorch_lora_weights.safetensors,
                                               embedding_change_weights.pth, associate_2.ckpt
                                               (Lightning checkpoint with a non-tensor object)
      honestface/honestface-tiny.safetensors   HonestFace checkpoint (config in the metadata)
      honestface/vgg16-397923af.pth            torchvision VGG16 layout (``features.*``, all
                                               five stages: the FFE, DISTS and LPIPS trunk)
      honestface/lpips_vgg.pth                 the lpips package's v0.1 VGG head (lin{i}.model.1.weight)
      honestface/dists_weights.pt              DISTS alpha/beta (1, 1475, 1, 1), as DISTS_pytorch ships
      insightface/models/buffalo_l/w600k_r50.onnx   ArcFace as insightface exports it (IResNet,
                                               BatchNorms folded, input "input.1" 1x3x112x112,
                                               512-d output), with few and narrow layers
      face_alignment/2DFAN4-11f355bf06.pth.tar  face-alignment's FAN as the state dict it
                                               downloads, with one hourglass stack instead of four
                                               (its network has a fixed width: 25 MB)
      insightface/models/arcface_torch/ms1mv3_arcface_r50_fp16/backbone.pth   arcface_torch IResNet
                                               state dict
      insightface/models/adaface/adaface_ir50_ms1mv2.ckpt   AdaFace Lightning checkpoint (``model.*``
                                               backbone, ``head.kernel``, a non-tensor object)

Together these are every file ``training/configs/paper.yaml`` loads, so its structure
(every loss on, MFA with FAN, OSDFace initialisation) runs from files at tiny size.
:func:`make_paper_models` writes the same set at the real sizes (random weights, for
memory and speed measurements of a full-size run).

The tiny model is :meth:`HonestFaceConfig.from_preset("tiny") <honestface.config.HonestFaceConfig.from_preset>`
with the ``dlib`` identity backend (128-d descriptors from the ``face_recognition_models``
package), so the command line and the ComfyUI nodes run end to end offline. Weights
are random (LoRA ``B`` matrices too, so the adapter changes the output) and fully
determined by ``--seed``: two runs with the same seed write identical files.

dlib's landmark and descriptor models need no file here (they come from the
``face_recognition_models`` package); the tiny ArcFace file serves the ``arcface-onnx``
and ``arcface-torch`` identity backends (written when the ``onnx`` package is installed),
the tiny FAN the ``fan`` landmark backend (written when ``face-alignment`` is installed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..config import HonestFaceConfig
from ..loaders.sd21 import build_sd21, save_sd21_diffusers, save_sd21_single_file
from .tiny_sd import tiny_sd21_configs

#: Names inside the models folder (relative paths), as the tests and workflows use them.
SD_CHECKPOINT = "checkpoints/tiny-sd21-base.safetensors"
SD_DIFFUSERS = "diffusers/tiny-sd21-base"
OSDFACE_FOLDER = "honestface/osdface-tiny"
HONESTFACE_CHECKPOINT = "honestface/honestface-tiny.safetensors"
ARCFACE_ONNX = "insightface/models/buffalo_l/w600k_r50.onnx"
FAN_WEIGHTS = "face_alignment/2DFAN4-11f355bf06.pth.tar"
#: Hourglass stacks of the tiny FAN (2DFAN4 has 4).
TINY_FAN_STACKS = 1
ARCFACE_TORCH = "insightface/models/arcface_torch/ms1mv3_arcface_r50_fp16/backbone.pth"
ADAFACE_CKPT = "insightface/models/adaface/adaface_ir50_ms1mv2.ckpt"
LPIPS_HEAD = "honestface/lpips_vgg.pth"
DISTS_HEAD = "honestface/dists_weights.pt"
#: Stages of the tiny AdaFace (IR-50 has (3, 4, 14, 3) blocks of widths (64, 128, 256, 512));
#: the widths must differ from stage to stage, as the loader tells stages apart by them.
TINY_ADAFACE_LAYERS = (1, 1, 1, 1)
TINY_ADAFACE_WIDTHS = (8, 16, 24, 32)
#: IResNet stages of the tiny ArcFace (r50 has (3, 4, 14, 3) blocks of widths (64, 128, 256, 512)).
TINY_ARCFACE_LAYERS = (1, 1, 1, 1)
TINY_ARCFACE_WIDTHS = (8, 16, 16, 32)
#: Identity backend of the tiny HonestFace checkpoint and its embedding size.
TINY_IDENTITY_BACKEND = "dlib"
TINY_IDENTITY_DIM = 128


class TrainingHyperParameters:
    """A non-tensor object inside ``associate_2.ckpt``, as Lightning stores OmegaConf
    containers: ``torch.load(weights_only=True)`` refuses it, so readers must use the
    restricted unpickler (which never imports or runs it)."""

    def __init__(self, **values) -> None:
        self.values = values


def tiny_honestface_config() -> HonestFaceConfig:
    """The ``"tiny"`` preset with the offline dlib identity backend."""
    config = HonestFaceConfig.from_preset("tiny")
    config.identity_backend = TINY_IDENTITY_BACKEND
    config.ide.identity_dim = TINY_IDENTITY_DIM
    return config.validate()


def _randomize_lora(model, generator: torch.Generator) -> None:
    """peft starts ``lora_B`` at zero; give it small random values so the adapter matters."""
    with torch.no_grad():
        for name, parameter in model.restorer.unet.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def _vgg16_state_dict(max_stage: int = 4) -> dict[str, torch.Tensor]:
    from ..models.vgg import VGG16Features

    features = VGG16Features(max_stage)
    return {f"features.{key}": value.detach().clone().contiguous()
            for key, value in features.features.state_dict().items()}


def write_perceptual_files(root: Path, seed: int) -> dict[str, Path]:
    """VGG16 trunk, LPIPS lin layers and DISTS alpha/beta in their released formats.

    The heads are non-negative, as the trained ones are (LPIPS clamps its lin weights,
    DISTS takes alpha/beta as they are and normalises by their sum).
    """
    from ..losses.perceptual import DISTS_CHANNELS
    from ..models.vgg import VGG16_STAGE_CHANNELS

    torch.manual_seed(seed)
    written = {}
    vgg_path = root / "honestface" / "vgg16-397923af.pth"
    vgg_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_vgg16_state_dict(4), vgg_path)
    written["vgg16"] = vgg_path
    generator = torch.Generator().manual_seed(seed + 1)
    lins = {f"lin{i}.model.1.weight": torch.rand(1, channels, 1, 1, generator=generator) / channels ** 0.5
            for i, channels in enumerate(VGG16_STAGE_CHANNELS)}
    torch.save(lins, root / LPIPS_HEAD)
    written["lpips head"] = root / LPIPS_HEAD
    total = sum(DISTS_CHANNELS)
    heads = {name: (0.1 + 0.01 * torch.randn(1, total, 1, 1, generator=generator)).abs() for name in ("alpha", "beta")}
    torch.save(heads, root / DISTS_HEAD)
    written["dists head"] = root / DISTS_HEAD
    return written


def write_fan(path: Path, seed: int, full_size: bool = False) -> Path | None:
    """face-alignment's FAN as the state dict it downloads (random weights and BatchNorm
    statistics): 2DFAN4's four hourglass stacks with ``full_size``, else
    :data:`TINY_FAN_STACKS`. None without ``face-alignment``."""
    import importlib.util

    if importlib.util.find_spec("face_alignment") is None:
        return None
    from face_alignment.models import FAN

    from .random_weights import randomize_batchnorm_statistics

    torch.manual_seed(seed)
    network = FAN(4 if full_size else TINY_FAN_STACKS).eval()
    randomize_batchnorm_statistics(network, mean_std=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_arcface_torch(path: Path, seed: int, full_size: bool = False) -> Path:
    """An arcface_torch ``backbone.pth``: the IResNet's plain state dict."""
    from ..face.iresnet import IResNet
    from .random_weights import randomize_batchnorm_statistics

    torch.manual_seed(seed)
    network = IResNet() if full_size else IResNet(TINY_ARCFACE_LAYERS, num_features=512, widths=TINY_ARCFACE_WIDTHS)
    randomize_batchnorm_statistics(network.eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def write_adaface(path: Path, seed: int, full_size: bool = False) -> Path:
    """An AdaFace release ``.ckpt``: Lightning dict, backbone under ``state_dict`` as
    ``model.*`` next to the margin head's ``head.kernel``, and a non-tensor object."""
    from ..face.adaface import AdaFaceIR
    from .random_weights import randomize_batchnorm_statistics

    torch.manual_seed(seed)
    network = AdaFaceIR() if full_size else AdaFaceIR(TINY_ADAFACE_LAYERS, TINY_ADAFACE_WIDTHS)
    randomize_batchnorm_statistics(network.eval())
    state = {f"model.{k}": v.detach().clone() for k, v in network.state_dict().items()}
    state["head.kernel"] = torch.randn(network.num_features, 16)  # class centres, unused
    checkpoint = {"epoch": 25, "global_step": 0, "pytorch-lightning_version": "1.4.4", "state_dict": state,
                  "hyper_parameters": TrainingHyperParameters(arch="ir_50", head="adaface", m=0.4, h=0.333)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_training_files(root: Path, seed: int, full_size: bool = False) -> dict[str, Path]:
    """Every pretrained file of the training losses and backends except SD 2.1 / OSDFace."""
    written = write_perceptual_files(root, seed)
    arcface = write_tiny_arcface_onnx(root / ARCFACE_ONNX, seed + 1, full_size=full_size)
    if arcface is not None:
        written["arcface onnx"] = arcface
    written["arcface_torch"] = write_arcface_torch(root / ARCFACE_TORCH, seed + 2, full_size)
    written["adaface"] = write_adaface(root / ADAFACE_CKPT, seed + 3, full_size)
    fan = write_fan(root / FAN_WEIGHTS, seed + 4, full_size)
    if fan is not None:
        written["fan"] = fan
    return written


def write_tiny_arcface_onnx(path: Path, seed: int, full_size: bool = False) -> Path | None:
    """A narrow IResNet exported the way insightface exports ArcFace; None without ``onnx``."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("onnx") is None:
        return None
    from ..face.iresnet import IResNet

    torch.manual_seed(seed)
    network = (IResNet() if full_size else
               IResNet(TINY_ARCFACE_LAYERS, num_features=512, widths=TINY_ARCFACE_WIDTHS)).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, opset_version=11,
                          input_names=["input.1"], do_constant_folding=True,
                          dynamic_axes={"input.1": {0: "batch"}})
    return path


def make_tiny_models(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny models folder (see the module doc); returns {what: path}."""
    from ..loaders.checkpoint import save_checkpoint
    from ..loaders.osdface import save_osdface
    from ..models.honestface import HonestFaceModel

    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    sd_configs = tiny_sd21_configs()
    sd = build_sd21(sd_configs, seed=seed)
    written["sd21 single file"] = save_sd21_single_file(root / SD_CHECKPOINT, sd.unet, sd.vae, sd.scheduler_config)
    written["sd21 diffusers folder"] = save_sd21_diffusers(root / SD_DIFFUSERS, sd.unet, sd.vae, sd.scheduler_config)

    config = tiny_honestface_config()
    torch.manual_seed(seed + 1)
    model = HonestFaceModel(config, sd.unet, sd.vae, vgg_state_dict=None, lora=True)
    _randomize_lora(model, torch.Generator().manual_seed(seed + 2))
    # the VQ decoder and the HQ VQGAN are in the released file too; loaders must skip them
    generator = torch.Generator().manual_seed(seed + 3)
    ignored = {
        "vqvae_LQ.decoder.conv_in.weight": torch.randn(8, config.vre.z_channels, 3, 3, generator=generator),
        "vqvae.quantize.embedding.weight": torch.randn(config.vre.codebook_size, config.vre.embed_dim,
                                                       generator=generator),
    }
    hyper = TrainingHyperParameters(lr=4.5e-6, embed_dim=config.vre.embed_dim, n_embed=config.vre.codebook_size)
    files = save_osdface(model, root / OSDFACE_FOLDER, hyper_parameters=hyper, extra_state=ignored)
    written.update({f"osdface {name}": path for name, path in files.items()})
    written["honestface checkpoint"] = save_checkpoint(model, root / HONESTFACE_CHECKPOINT)

    written.update(write_training_files(root, seed + 4))
    for path in root.rglob("*.safetensors"):
        canonicalize_safetensors_header(path)
    return written


#: Names :func:`make_paper_models` writes, the defaults of ``training/configs/paper.yaml``.
PAPER_SD_CHECKPOINT = "checkpoints/v2-1_512-ema-pruned.safetensors"
PAPER_OSDFACE_FOLDER = "honestface/OSDFace"


def make_paper_models(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Every file ``training/configs/paper.yaml`` loads, at the real sizes, random weights.

    SD 2.1-base as a single file (about 3.5 GB), the OSDFace release of the ``sd21``
    preset (LoRA rank 16 on peft's 257 UNet modules, full VQ encoder), full VGG16 trunk,
    ArcFace R50 (ONNX and arcface_torch), AdaFace IR-50 and FAN-4. For measuring memory
    and time of the real configuration, never for results.
    """
    from ..loaders.osdface import save_osdface
    from ..models.honestface import HonestFaceModel

    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    sd = build_sd21(None, seed=seed)
    written["sd21 single file"] = save_sd21_single_file(root / PAPER_SD_CHECKPOINT, sd.unet, sd.vae,
                                                        sd.scheduler_config)
    config = HonestFaceConfig.from_preset("sd21")
    torch.manual_seed(seed + 1)
    model = HonestFaceModel(config, sd.unet, sd.vae, vgg_state_dict=None, lora=True)
    _randomize_lora(model, torch.Generator().manual_seed(seed + 2))
    hyper = TrainingHyperParameters(lr=4.5e-6, embed_dim=config.vre.embed_dim, n_embed=config.vre.codebook_size)
    files = save_osdface(model, root / PAPER_OSDFACE_FOLDER, hyper_parameters=hyper)
    written.update({f"osdface {name}": path for name, path in files.items()})
    del model, sd
    written.update(write_training_files(root, seed + 4, full_size=True))
    return written


def canonicalize_safetensors_header(path: str | Path) -> None:
    """Rewrite a .safetensors header with sorted keys, in place.

    safetensors writes its metadata map in hash order, so two writes of the same tensors
    and metadata can differ in bytes. Sorting keeps the header's length (same entries),
    so only the header bytes change and the file stays valid.
    """
    import json
    import struct

    path = Path(path)
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        raw = handle.read(length)
        header = json.loads(raw)
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if len(text) > length:  # cannot happen for a header safetensors wrote compactly
            return
        handle.seek(8)
        handle.write(text + b" " * (length - len(text)))


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m honestface.testing.make_tiny_models",
        description="Write a ComfyUI-style models folder of tiny random models in the real file formats.")
    parser.add_argument("models_dir", type=Path, help="models folder to write (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random weight (default 0)")
    parser.add_argument("--paper-full-size", action="store_true",
                        help="write the files of training/configs/paper.yaml at their real sizes instead "
                             "(random weights, about 4.5 GB; for memory and speed measurements)")
    args = parser.parse_args(argv)
    make = make_paper_models if args.paper_full_size else make_tiny_models
    written = make(args.models_dir, seed=args.seed)
    for what, path in written.items():
        print(f"{what:24s} {path.relative_to(args.models_dir)}  ({_size(path) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
