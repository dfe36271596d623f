#!/usr/bin/env bash
# Train kiunet on ATLAS R1.2 (published train/test split) with its recipe in src/spinseg/recipes/named.py,
# through the same trainer as SPiN. Extra flags are passed on ("$@") and override the recipe.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.train \
  --recipe kiunet \
  --train_multimodal_scan_paths training/atlas/traintest/train_scans.txt \
  --train_ground_truth_path training/atlas/traintest/train_ground_truths.txt \
  --val_multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --val_ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --checkpoint_path trained_kiunet/atlas/kiunet_traintest \
  "$@"
