#!/usr/bin/env bash
# SPiN on RITE (retinal vessel segmentation), train/test split (training set -> test set, which also serves for validation as in the paper).
# Lists and statistics come from: python setup/setup_dataset_rite.py. Extra flags are passed on ("$@").
# Recipe: the release's rite recipe (SPiN paper configuration, n_chunk 1, RGB input, batch 8, uniformly random
# 128x128 training crops of the whole image, learning rates 3e-4/1e-4/5e-5 until epochs 100/200/300,
# augmentation probability 1.0 until epoch 150 then 0.5), except that the normalisation uses per-channel
# means/stds of the training images (read from statistics.json; the release passed one pooled value, which
# statistics.json also records as pooled_mean/pooled_stddev: override with --dataset_means/--dataset_stddevs).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

STATISTICS=${STATISTICS:-data/rite_spin/statistics.json}
if [[ ! -f "$STATISTICS" ]]; then
  echo "error: $STATISTICS: not found; run python setup/setup_dataset_rite.py first (or set STATISTICS=...)" >&2
  exit 2
fi
read -r -a MEANS <<< "$(python -c 'import json, sys; print(*json.load(open(sys.argv[1]))["means"])' "$STATISTICS")"
read -r -a STDDEVS <<< "$(python -c 'import json, sys; print(*json.load(open(sys.argv[1]))["stddevs"])' "$STATISTICS")"

python -m spinseg.train \
  --train_multimodal_scan_paths training/rite/traintest/train_images.txt \
  --train_ground_truth_path training/rite/traintest/train_ground_truths.txt \
  --val_multimodal_scan_paths testing/rite/traintest/test_images.txt \
  --val_ground_truth_path testing/rite/traintest/test_ground_truths.txt \
  --model_name spin \
  --model_config '{"input_channels": 3}' \
  --n_batch 8 \
  --n_chunk 1 \
  --crop_shape 128 128 \
  --dataset_normalization standard \
  --dataset_means "${MEANS[@]}" \
  --dataset_stddevs "${STDDEVS[@]}" \
  --learning_rates 3e-4 1e-4 5e-5 \
  --learning_schedule 100 200 300 \
  --positive_class_sample_rates 0.0 \
  --positive_class_sample_schedule -1 \
  --augmentation_probabilities 1.00 0.50 \
  --augmentation_schedule 150 300 \
  --augmentation_flip_type horizontal vertical \
  --augmentation_rotate 30 \
  --augmentation_noise_type gaussian \
  --augmentation_noise_spread 1e-2 \
  --augmentation_resize_and_pad 1.00 1.10 \
  --loss_func_segmentation cross_entropy \
  --w_positive_class 1.5 \
  --n_summary 1000 \
  --n_checkpoint 500 \
  --n_validation 500 \
  --checkpoint_path trained_spin/rite/spin_traintest \
  --device auto \
  --n_workers 8 \
  "$@"
