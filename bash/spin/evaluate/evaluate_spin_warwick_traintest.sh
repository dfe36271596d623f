#!/usr/bin/env bash
# Evaluate SPiN on the GLaS (Warwick QU gland segmentation) test images: per-image DSC, IOU, precision and recall, averaged over images,
# scored against the ground truths at the raw image size (test_original_ground_truths.txt; the same files
# as test_ground_truths.txt unless the setup resized the images).
# Normalisation, model config and threshold: those the checkpoint records (recipe "spin_glas" for
# checkpoints that record none). Default checkpoint: the best one of
# bash/spin/train/train_spin_warwick_traintest.sh; override with e.g. --restore_path <path>.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe spin_glas \
  --multimodal_scan_paths testing/warwick/traintest/test_images.txt \
  --ground_truth_path testing/warwick/traintest/test_original_ground_truths.txt \
  --restore_path trained_spin/warwick/spin_traintest/best.pth \
  --output_path outputs/spin/warwick_traintest \
  "$@"
