#!/usr/bin/env bash
# SPiN on GLaS (Warwick QU gland segmentation), train/test split (training set -> test set, which also serves for validation as in the paper).
# Lists and statistics come from: python setup/setup_dataset_warwick.py. Extra flags are passed on ("$@") and win.
# Recipe "spin_glas" (src/spinseg/recipes/named.py) pins the release's warwick recipe (SPiN paper configuration,
# n_chunk 1, RGB input, batch 8, uniformly random 128x128 training crops of the whole image, learning rates
# 3e-4/1e-4/5e-5 until epochs 100/200/300, augmentation probability 1.0 until epoch 150 then 0.5), except that
# the normalisation uses per-channel means/stds of the training images, read from data/warwick_spin/statistics.json
# (STATISTICS=... for another file; the release passed one pooled value, which statistics.json also records
# as pooled_mean/pooled_stddev: override with --dataset_means/--dataset_stddevs).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.train \
  --recipe spin_glas \
  ${STATISTICS:+--dataset_statistics "$STATISTICS"} \
  --train_multimodal_scan_paths training/warwick/traintest/train_images.txt \
  --train_ground_truth_path training/warwick/traintest/train_ground_truths.txt \
  --val_multimodal_scan_paths testing/warwick/traintest/test_images.txt \
  --val_ground_truth_path testing/warwick/traintest/test_ground_truths.txt \
  --checkpoint_path trained_spin/warwick/spin_traintest \
  "$@"
