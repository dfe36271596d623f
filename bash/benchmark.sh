#!/usr/bin/env bash
# CPU (or GPU) speed and memory benchmark: plain eager path vs the optimised one, in one run.
# Defaults: SPiN and U-Net at the ATLAS shape 197x233x189, 2 timed volumes and 3 timed training
# steps per path; the table goes to stdout, every figure to benchmark.json. Extra flags pass
# through, e.g. `bash bash/benchmark.sh --models spin --depth 64` or `--quick` for a smoke test.
# On a CPU with bf16 units (AVX512-BF16 / AMX) the optimised paths are also timed under bf16 autocast
# against the same fp32 plain path (`--bf16 no` leaves them out, `--bf16 yes` forces them).
# Timings are only meaningful on an otherwise idle machine: check `uptime` first.
set -euo pipefail
OUTPUT_JSON=${OUTPUT_JSON:-benchmark.json}

python -m spinseg.benchmark \
  --device cpu \
  --models spin unet \
  --height 197 --width 233 --depth 189 \
  --batch_size 8 \
  --inference_batch_size 16 \
  --fast_batch_size 8 \
  --repeats 2 \
  --train_repeats 3 \
  --output_json "$OUTPUT_JSON" \
  "$@"
