#!/usr/bin/env bash
# SPiN (paper architecture, 5,263,808 parameters) on the synthetic ATLAS, a CPU recipe that fits
# in minutes: 96x96 crops instead of whole 197x233 slices, 600 steps instead of 42,400, a higher
# first learning rate (1e-3, then 3e-4) and 70% lesion slices (95% in the paper) so that crops
# also show healthy tissue. Everything else is the paper's recipe. Extra flags pass through.
set -euo pipefail
LISTS=${LISTS:-data/synthetic_atlas_lists}

python -m spinseg.train \
  --train_multimodal_scan_paths "$LISTS/training/atlas/traintest/train_scans.txt" \
  --train_ground_truth_path "$LISTS/training/atlas/traintest/train_ground_truths.txt" \
  --model_name spin \
  --n_batch 8 \
  --n_chunk 5 \
  --crop_shape 96 96 \
  --dataset_normalization standard \
  --dataset_means 30.20063 \
  --dataset_stddevs 35.221165 \
  --learning_rates 1e-3 3e-4 \
  --learning_schedule 120 200 \
  --positive_class_sample_rates 0.70 \
  --positive_class_sample_schedule -1 \
  --augmentation_probabilities 1.00 0.50 \
  --augmentation_schedule 160 200 \
  --augmentation_flip_type horizontal vertical \
  --augmentation_rotate 30 \
  --augmentation_noise_type gaussian \
  --augmentation_noise_spread 1e-2 \
  --augmentation_resize_and_pad 1.00 1.10 \
  --w_positive_class 1.5 \
  --n_summary 50 \
  --n_checkpoint 200 \
  --n_validation 0 \
  --checkpoint_path trained_spin/synthetic_atlas/spin_cpu \
  --device cpu \
  --n_workers 0 \
  --seed 1 \
  "$@"
