#!/usr/bin/env bash
# Evaluate SPiN on the RITE (retinal vessel segmentation) test images: per-image DSC, IOU, precision and recall, averaged over images,
# scored against the ground truths at the raw image size (test_original_ground_truths.txt; the same files
# as test_ground_truths.txt unless the setup resized the images).
# Normalisation, model config and threshold: those the checkpoint records (recipe "spin_rite" for
# checkpoints that record none). Default checkpoint: the best one of
# bash/spin/train/train_spin_rite_traintest.sh; override with e.g. --restore_path <path>.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe spin_rite \
  --multimodal_scan_paths testing/rite/traintest/test_images.txt \
  --ground_truth_path testing/rite/traintest/test_original_ground_truths.txt \
  --restore_path trained_spin/rite/spin_traintest/best.pth \
  --output_path outputs/spin/rite_traintest \
  "$@"
