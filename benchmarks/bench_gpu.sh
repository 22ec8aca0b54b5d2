#!/usr/bin/env bash
# The GPU study of HonestFace restoration at 512x512 (SD 2.1-base sizes, random weights):
# bf16/fp16 at batch 1 with each lever (SDPA vs classic attention, channels-last,
# torch.compile default / max-autotune / reduce-overhead = CUDA graphs), a batch sweep
# (channels-last, with and without VAE slicing), the LoRA unmerged, all against the
# plain-diffusers baseline of the same run; per-face ms, faces/s, peak memory, the GPU's
# name and the targets (batch 1 <= 25 ms/face, >= 80 faces/s).
#
#   bash benchmarks/bench_gpu.sh [quick|full] [extra bench_restore.py arguments]
#
# quick (default, a few minutes): bf16; levers none, channels-last, channels-last+compile;
#        batches 16 and 64.
# full: both dtypes, every lever, batches 4-64 (compiling with max-autotune takes minutes
#       per configuration).
# Results: the markdown table on stdout and bench_gpu.json next to where it is run.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-quick}"
shift || true
python="${PYTHON:-python}"
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench_gpu.sh: no CUDA device visible to $python" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
case "$mode" in
    quick) args=(--suite gpu --dtypes bfloat16 --levers none channels-last channels-last+compile
                 --batch 16 64 --repeats 10 --warmup 3 --timeout 600) ;;
    full)  args=(--suite gpu --repeats 20 --warmup 3 --timeout 1200) ;;
    *) echo "usage: bash benchmarks/bench_gpu.sh [quick|full] [bench_restore.py arguments]" >&2; exit 2 ;;
esac
exec "$python" benchmarks/bench_restore.py "${args[@]}" --json bench_gpu.json "$@"
