"""How often a face detector misses the degraded training faces (why training uses none).

    python benchmarks/landmark_miss_rate.py --data ../shared/data/celeba
    python benchmarks/landmark_miss_rate.py --data DIR --config training/configs/paper.yaml --samples 400

Training samples are built exactly as the training program builds them (the config's
``data`` section, its degradation ranges and image size; identity split and per-sample
seeds of :class:`training.data.EpochSampler`). For each sample, dlib's HOG detector (the
face boxes FAN used before landmarks came from the aligned face box) runs on the
degraded LQ and on the clean GT; a sample with no detected face is a miss. Reported:
miss rates with a 95% Wilson interval, and, on the GT faces that were detected, how far
dlib's 68 points fitted in the fixed aligned face box lie from those fitted in the
detected box (mean point distance over the inter-ocular distance).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PAPER = REPO_ROOT / "training" / "configs" / "paper.yaml"


def wilson_interval(misses: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = misses / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def measure(data: str, config_path: str | Path, samples: int, seed: int) -> dict:
    import numpy as np
    import torch

    from honestface.face._images import to_uint8_hwc
    from honestface.face.dlib_backend import DlibFaceDetector, DlibLandmarks, _aligned_box, fit_shape
    from training.config import apply_overrides, parse_yaml
    from training.data import DataConfig, EpochSampler, build_datasets

    torch.set_num_threads(1)
    # only the data section matters here (the model files of the config need not exist)
    section = parse_yaml(Path(config_path).read_text(encoding="utf-8")).get("data") or {}
    data_config = DataConfig.from_dict(apply_overrides({"data": section}, [f"data.roots=[{data}]"])["data"])
    train_set, _ = build_datasets(data_config)
    sampler = EpochSampler(len(train_set), seed=seed)
    detector = DlibFaceDetector(with_landmarks=False)
    landmarks = DlibLandmarks(detector=detector)
    counts = {"lq_missed": 0, "gt_missed": 0, "samples": 0}
    errors = []
    started = time.perf_counter()
    for index, sample_seed in sampler:
        if counts["samples"] >= samples:
            break
        sample = train_set[(index, sample_seed)]
        lq, gt = to_uint8_hwc(sample["lq"])[0], to_uint8_hwc(sample["gt"])[0]
        counts["samples"] += 1
        counts["lq_missed"] += not detector._boxes(lq)
        boxes = detector._boxes(gt)
        if not boxes:
            counts["gt_missed"] += 1
            continue
        box = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
        detected = fit_shape(landmarks._predictor, gt, box)
        aligned = fit_shape(landmarks._predictor, gt, _aligned_box(*gt.shape[:2]))
        inter_ocular = np.linalg.norm(detected[36:42].mean(0) - detected[42:48].mean(0))
        errors.append(float(np.linalg.norm(detected - aligned, axis=1).mean() / inter_ocular))
    n = counts["samples"]
    result = {
        "config": str(Path(config_path).name), "data": data, "samples": n,
        "image_size": data_config.image_size, "degradation": data_config.degradation.to_dict(),
        "lq_miss_rate": counts["lq_missed"] / n, "lq_miss_rate_95": wilson_interval(counts["lq_missed"], n),
        "gt_miss_rate": counts["gt_missed"] / n, "gt_miss_rate_95": wilson_interval(counts["gt_missed"], n),
        "aligned_box_vs_detected_nme_mean": float(np.mean(errors)) if errors else float("nan"),
        "aligned_box_vs_detected_nme_p95": float(np.percentile(errors, 95)) if errors else float("nan"),
        "seconds": time.perf_counter() - started,
    }
    result.update({k: v for k, v in counts.items() if k != "samples"})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="identity-folder root of aligned faces")
    parser.add_argument("--config", default=str(PAPER), help="training config whose data section is used")
    parser.add_argument("--samples", type=int, default=300, help="training samples to test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order and degradations")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = measure(args.data, args.config, args.samples, args.seed)
    low, high = result["lq_miss_rate_95"]
    print(f"{result['samples']} samples at {result['image_size']} px, degradation of {result['config']}")
    print(f"  HOG misses on the degraded LQ: {result['lq_missed']} ({100 * result['lq_miss_rate']:.1f}%, "
          f"95% CI {100 * low:.1f}-{100 * high:.1f}%)")
    print(f"  HOG misses on the clean GT:    {result['gt_missed']} ({100 * result['gt_miss_rate']:.1f}%)")
    print(f"  dlib points, aligned box vs detected box on the GT: mean NME "
          f"{result['aligned_box_vs_detected_nme_mean']:.3f}, p95 {result['aligned_box_vs_detected_nme_p95']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
