#!/usr/bin/env bash
# Evaluate SPiN on the ATLAS R1.2 test subjects: prints Table 2 (and Table 3) rows.
# Default checkpoint: the authors' published one (setup/download_pretrained_models.sh).
# Override with e.g. --restore_path trained_spin/atlas/spin_traintest/best.pth
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --model_name spin \
  --restore_path pretrained_models/spin/spin_atlas_traintest.pth \
  --n_chunk 5 \
  --dataset_normalization standard \
  --dataset_means 30.20063 \
  --dataset_stddevs 35.221165 \
  --output_path outputs/spin/atlas_traintest \
  --device auto \
  "$@"
