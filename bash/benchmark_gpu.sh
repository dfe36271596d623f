#!/usr/bin/env bash
# The prepared single-GPU benchmark: every model that imports, full ATLAS slices (197x233), bf16
# autocast, one whole 189-slice volume per inference timing, so that the run (start-up included)
# stays under 5 minutes on one GPU. Phases run in one process (peaks come from
# torch.cuda.max_memory_allocated, reset per phase). Writes ${OUT:-.}/benchmark_gpu.json.
# Extra flags pass through and win, e.g. `--device cpu --quick` to check the script on a CPU.
set -euo pipefail
OUT=${OUT:-.}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

timeout 290 python -m spinseg.benchmark \
  --device cuda \
  --amp \
  --height 197 --width 233 --depth 189 \
  --batch_size 8 \
  --inference_batch_size 32 \
  --fast_batch_size 32 \
  --repeats 2 \
  --train_repeats 5 \
  --volumes 2 \
  --isolate no \
  --end_to_end no \
  --output_json "$OUT/benchmark_gpu.json" \
  "$@"
