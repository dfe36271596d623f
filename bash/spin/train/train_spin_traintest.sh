#!/usr/bin/env bash
# SPiN on ATLAS R1.2, published train/test split, the paper's recipe (Wong et al. 2021).
# Lists come from: python setup/setup_dataset_atlas.py. Extra flags are passed on ("$@").
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.train \
  --train_multimodal_scan_paths training/atlas/traintest/train_scans.txt \
  --train_ground_truth_path training/atlas/traintest/train_ground_truths.txt \
  --val_multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --val_ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --model_name spin \
  --n_batch 8 \
  --n_chunk 5 \
  --dataset_normalization standard \
  --dataset_means 30.20063 \
  --dataset_stddevs 35.221165 \
  --learning_rates 3e-4 1e-4 5e-5 \
  --learning_schedule 400 1400 1600 \
  --positive_class_sample_rates 0.95 \
  --positive_class_sample_schedule -1 \
  --augmentation_probabilities 1.00 0.50 \
  --augmentation_schedule 1400 1600 \
  --augmentation_flip_type horizontal vertical \
  --augmentation_rotate 30 \
  --augmentation_noise_type gaussian \
  --augmentation_noise_spread 1e-2 \
  --augmentation_resize_and_pad 1.00 1.10 \
  --loss_func_segmentation cross_entropy \
  --w_positive_class 1.5 \
  --n_summary 1000 \
  --n_checkpoint 1000 \
  --n_validation 1000 \
  --checkpoint_path trained_spin/atlas/spin_traintest \
  --device auto \
  --n_workers 8 \
  "$@"
