#!/usr/bin/env bash
# Train and evaluate SPiN and the five baselines on the same data with the same budget, then print
# Table 2 and Table 3 side by side (outputs/comparison/comparison.md, bar chart, detection-vs-size).
# Default: the synthetic ATLAS made by bash/run_synthetic_atlas.sh, a CPU budget (~1 hour, 2 cores):
# 300 steps of 8 96x96 crops per model, 2 test subjects, KiU-Net with 2 levels (16, 32 filters)
# because its 3-level over-complete branch costs ~6 s per 197x233 slice on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTS=${LISTS:-data/synthetic_atlas_lists}

python -m spinseg.compare \
  --models spin unet dunet clcinet kiunet xnet \
  --train_scans "$LISTS/training/atlas/traintest/train_scans.txt" \
  --train_ground_truths "$LISTS/training/atlas/traintest/train_ground_truths.txt" \
  --test_scans "$LISTS/testing/atlas/traintest/test_scans.txt" \
  --test_ground_truths "$LISTS/testing/atlas/traintest/test_ground_truths.txt" \
  --max_steps 300 \
  --crop_shape 96 96 \
  --n_batch 8 \
  --max_test_subjects 2 \
  --model_overrides '{"kiunet": {"n_filters": [16, 32]}}' \
  --output_dir outputs/comparison \
  --device cpu \
  --n_workers 0 \
  "$@"
