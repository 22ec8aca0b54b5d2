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
      honestface/vgg16-397923af.pth            torchvision VGG16 layout, the layers the FFE uses
      insightface/models/buffalo_l/w600k_r50.onnx   ArcFace as insightface exports it (IResNet,
                                               BatchNorms folded, input "input.1" 1x3x112x112,
                                               512-d output), with few and narrow layers
      face_alignment/2DFAN4-11f355bf06.pth.tar  face-alignment's FAN as the state dict it
                                               downloads, with one hourglass stack instead of four
                                               (its network has a fixed width: 25 MB)

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


def _vgg16_state_dict(max_stage: int) -> dict[str, torch.Tensor]:
    from ..models.ide import VGG16Features

    features = VGG16Features(max_stage)
    return {f"features.{key}": value.detach().clone().contiguous()
            for key, value in features.features.state_dict().items()}


def write_tiny_arcface_onnx(path: Path, seed: int) -> Path | None:
    """A narrow IResNet exported the way insightface exports ArcFace; None without ``onnx``."""
    import importlib.util
    import warnings

    if importlib.util.find_spec("onnx") is None:
        return None
    from ..face.iresnet import IResNet

    torch.manual_seed(seed)
    network = IResNet(TINY_ARCFACE_LAYERS, num_features=512, widths=TINY_ARCFACE_WIDTHS).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False, opset_version=11,
                          input_names=["input.1"], do_constant_folding=True,
                          dynamic_axes={"input.1": {0: "batch"}})
    return path


def write_tiny_fan(path: Path, seed: int) -> Path | None:
    """face-alignment's FAN with random weights, saved as the state dict it downloads;
    None without ``face-alignment``."""
    import importlib.util

    if importlib.util.find_spec("face_alignment") is None:
        return None
    from face_alignment.models import FAN

    torch.manual_seed(seed)
    network = FAN(TINY_FAN_STACKS).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
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

    torch.manual_seed(seed + 4)
    vgg_path = root / "honestface" / config.ide.vgg_file
    torch.save(_vgg16_state_dict(max(config.ide.color_stage, config.ide.structure_stage)), vgg_path)
    written["vgg16"] = vgg_path
    arcface = write_tiny_arcface_onnx(root / ARCFACE_ONNX, seed + 5)
    if arcface is not None:
        written["arcface onnx"] = arcface
    fan = write_tiny_fan(root / FAN_WEIGHTS, seed + 6)
    if fan is not None:
        written["fan"] = fan
    for path in root.rglob("*.safetensors"):
        canonicalize_safetensors_header(path)
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
    args = parser.parse_args(argv)
    written = make_tiny_models(args.models_dir, seed=args.seed)
    for what, path in written.items():
        print(f"{what:24s} {path.relative_to(args.models_dir)}  ({_size(path) / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
