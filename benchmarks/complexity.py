"""Parameters and MACs of HonestFace and OSDFace at inference (paper Table 3a).

    python benchmarks/complexity.py --model honestface --json complexity-honestface.json
    python benchmarks/complexity.py --model osdface --json complexity-osdface.json
    python benchmarks/complexity.py --model honestface --references 4 --recognizer r50

Every part is built at SD 2.1-base sizes (``--preset sd21``; ``tiny`` for tests) with
random weights - the counts do not depend on the values - and run once on one 512x512
face. Parameters are ``numel`` of each part's parameters; MACs are
``FLOPs / 2`` of PyTorch's own counter, :class:`torch.utils.flop_counter.FlopCounterMode`,
which counts matrix products and convolutions (not normalisations, activations or
element-wise operations).

Attention: FlopCounterMode has formulas for the CUDA kernels of
``scaled_dot_product_attention`` but not for every backend (the CPU's fused kernel is
missed silently), so the counting runs under the MATH backend, where attention is two
counted ``bmm`` per head; the ``attention`` column gives those MACs.

The large parts (UNet, VAE, the VRE's VQ encoder, the recogniser) are built on the
``meta`` device: no memory and no time for weights. The IDE decides by values (which
references are real) and runs on the CPU at its real size (16 M parameters).

Parts:
- ``VRE``: OSDFace's VQ encoder and codebook + the token projection, on the LQ face.
- ``IDE``: FFE (VGG16 up to relu3_3 on two 64 px eye patches, heads, projection) + FIE
  (attention pooling), per reference set of ``--references`` faces (HonestFace only).
- ``recognizer``: X_FR, the ArcFace IResNet that gives the FIE its identity embeddings,
  on each reference at 112 px (``--recognizer r100|r50|none``; HonestFace only).
- ``fusion``: the prompt operator (``concat``: no parameters, no MACs).
- ``VAE encoder`` / ``UNet`` / ``VAE decoder``: SD 2.1-base, the LoRA merged (as the
  loaders do for inference, so it adds nothing).

Writes ``{"params": N, "macs": N, "parts": {name: {"params": N, "macs": N,
"attention_macs": N}}, "settings": {...}}`` with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: IResNet depth of each ``--recognizer`` (insightface's ArcFace backbones)
RECOGNIZERS = {"r100": "r100", "r50": "r50", "none": None}
#: Table 3a of the paper: parameters and MACs at 512x512
PAPER = {"honestface": {"params": 1_059e6, "macs": 2_282e9}, "osdface": {"params": 978.4e6, "macs": 2_132e9}}


@dataclass
class PartCount:
    params: int
    macs: int
    attention_macs: int

    def to_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs, "attention_macs": self.attention_macs}


def count_params(modules: nn.Module | list[nn.Module]) -> int:
    """Number of parameters (shared ones once) of one module or several."""
    modules = modules if isinstance(modules, list) else [modules]
    seen = {id(p): p.numel() for module in modules for p in module.parameters()}
    return int(sum(seen.values()))


def count_macs(fn: Callable[[], object]) -> tuple[int, int]:
    """(MACs, attention MACs) of calling ``fn``: FLOPs / 2 of ``FlopCounterMode``.

    Attention runs under the MATH backend of ``scaled_dot_product_attention`` (two
    counted ``bmm`` per head on every device); its MACs are the ``bmm`` and ``baddbmm``
    counts (the networks counted here have no other batched matrix products).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    counter = FlopCounterMode(display=False)
    # Not under no_grad: the counter's module tracker needs autograd, and
    # nn.MultiheadAttention's inference fast path would count its projections as bmm.
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    by_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for op, v in by_op.items() if str(op).split(".")[1] in ("bmm", "baddbmm"))
    return int(counter.get_total_flops()) // 2, int(attention) // 2


def _recognizer(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    from honestface.face.iresnet import IRESNET_LAYERS, IResNet

    return IResNet(layers=IRESNET_LAYERS[name]).eval()


def measure(model: str = "honestface", preset: str = "sd21", references: int = 1,
            recognizer: str = "r100") -> dict:
    """Parameters and MACs per part and in total (see the module doc).

    Args:
        model: ``"honestface"`` or ``"osdface"`` (VRE + SD 2.1-base, no IDE).
        preset: model config preset (``"sd21"``: the paper's sizes; ``"tiny"``: tests).
        references: reference faces of the IDE and the recogniser (HonestFace).
        recognizer: X_FR's IResNet depth, ``"r100"``, ``"r50"`` or ``"none"``.
    """
    from honestface.config import HonestFaceConfig
    from honestface.models.honestface import HonestFaceModel, build_diffusers
    from honestface.models.ide import IdentityEmbedder
    from honestface.models.restorer import training_alphas_cumprod

    if model not in PAPER:
        raise SystemExit(f"--model must be one of {sorted(PAPER)}, got '{model}'")
    if recognizer not in RECOGNIZERS:
        raise SystemExit(f"--recognizer must be one of {sorted(RECOGNIZERS)}, got '{recognizer}'")
    if references < 1:
        raise SystemExit("--references must be >= 1")
    config = HonestFaceConfig.from_preset(preset)
    size = config.image_size
    meta = torch.device("meta")
    with meta:
        unet, vae = build_diffusers(config, seed=None)
        honest = HonestFaceModel(config, unet, vae, lora=False).eval()
        network = _recognizer(RECOGNIZERS[recognizer]) if model == "honestface" else None
    lq = torch.zeros(1, 3, size, size, device=meta)  # [-1, 1] as the model passes it on
    restorer = honest.restorer
    restorer.alphas_cumprod = training_alphas_cumprod(config.diffusion)  # read as a number: on the CPU
    latent = restorer.encode(lq)
    prompt = torch.zeros(1, config.vre.num_tokens, config.token_dim, device=meta)
    parts: dict[str, PartCount] = {}

    def add(name: str, modules: nn.Module | list[nn.Module], fn: Callable[[], object]) -> None:
        parts[name] = PartCount(count_params(modules), *count_macs(fn))

    add("VRE", honest.vre, lambda: honest.vre(lq))
    if model == "honestface":
        ide = IdentityEmbedder(config.ide, config.token_dim).eval()  # values decide: on the CPU
        refs = torch.rand(1, references, 3, size, size)
        mask = torch.ones(1, references, dtype=torch.bool)
        embeddings = torch.randn(1, references, config.ide.identity_dim)
        add("IDE", ide, lambda: ide(refs, mask, None, None, embeddings))
        if network is not None:
            crops = torch.zeros(references, 3, 112, 112, device=meta)
            add(f"recognizer ({recognizer})", network, lambda: network(crops))
        tokens = torch.zeros(1, config.vre.num_tokens, config.token_dim, device=meta)
        p_f = torch.zeros(1, config.ide.num_feature_tokens, config.token_dim, device=meta)
        p_i = torch.zeros(1, config.ide.num_identity_tokens, config.token_dim, device=meta)
        add("fusion", honest.fusion, lambda: honest.fusion(p_f, p_i, tokens))
    add("VAE encoder", [vae.encoder, vae.quant_conv], lambda: restorer.encode(lq))
    add("UNet", unet, lambda: restorer.denoise(latent, prompt))
    add("VAE decoder", [vae.decoder, vae.post_quant_conv], lambda: restorer.decode(latent))
    return {
        "params": sum(p.params for p in parts.values()),
        "macs": sum(p.macs for p in parts.values()),
        "parts": {name: part.to_dict() for name, part in parts.items()},
        "settings": {"model": model, "preset": preset, "image_size": size,
                     "references": references if model == "honestface" else 0,
                     "recognizer": recognizer if model == "honestface" else "none",
                     "counter": "torch.utils.flop_counter.FlopCounterMode, MACs = FLOPs / 2",
                     "torch": torch.__version__},
    }


def format_table(result: dict) -> str:
    """The parts, the total and, at the paper's sizes, the paper's figures beside them."""
    lines = [f"{'part':<20} {'params (M)':>11} {'MACs (G)':>10} {'of which attention (G)':>23}"]
    for name, part in result["parts"].items():
        lines.append(f"{name:<20} {part['params'] / 1e6:>11.2f} {part['macs'] / 1e9:>10.1f} "
                     f"{part['attention_macs'] / 1e9:>23.1f}")
    attention = sum(p["attention_macs"] for p in result["parts"].values())
    lines.append(f"{'total':<20} {result['params'] / 1e6:>11.2f} {result['macs'] / 1e9:>10.1f} "
                 f"{attention / 1e9:>23.1f}")
    settings = result["settings"]
    paper = PAPER[settings["model"]]
    if settings["preset"] == "sd21":
        lines.append(f"{'paper (Table 3a)':<20} {paper['params'] / 1e6:>11.1f} {paper['macs'] / 1e9:>10.0f}")
        lines.append(f"{'difference':<20} {100 * (result['params'] / paper['params'] - 1):>+10.1f}% "
                     f"{100 * (result['macs'] / paper['macs'] - 1):>+9.1f}%")
    lines.append(f"{settings['image_size']}x{settings['image_size']} input, {settings['references']} reference(s), "
                 f"recognizer {settings['recognizer']}; MACs = FLOPs / 2 of {settings['counter'].split(',')[0]}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PAPER), default="honestface")
    parser.add_argument("--preset", choices=("sd21", "tiny"), default="sd21",
                        help="model sizes: sd21 (the paper's) or tiny (tests)")
    parser.add_argument("--references", type=int, default=1, help="reference faces (HonestFace; default 1)")
    parser.add_argument("--recognizer", choices=sorted(RECOGNIZERS), default="r100",
                        help="ArcFace IResNet giving the FIE its embeddings (HonestFace; default r100)")
    parser.add_argument("--json", type=Path, help="write the counts to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = measure(args.model, args.preset, args.references, args.recognizer)
    print(format_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
