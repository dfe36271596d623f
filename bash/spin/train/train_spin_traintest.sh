#!/usr/bin/env bash
# SPiN on ATLAS R1.2, published train/test split, the paper's recipe (Wong et al. 2021): recipe "spin"
# in src/spinseg/recipes/named.py pins it (5 slices, batch 8, ATLAS mean/std, learning rates
# 3e-4/1e-4/5e-5 until epochs 400/1400/1600, 95% lesion slices, 8 loader workers) and this script pins GPU 0.
# Lists come from: python setup/setup_dataset_atlas.py. Extra flags are passed on ("$@") and win.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.train \
  --recipe spin \
  --train_multimodal_scan_paths training/atlas/traintest/train_scans.txt \
  --train_ground_truth_path training/atlas/traintest/train_ground_truths.txt \
  --val_multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --val_ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --checkpoint_path trained_spin/atlas/spin_traintest \
  "$@"
