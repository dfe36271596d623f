#!/usr/bin/env bash
# Evaluate unet on the ATLAS R1.2 test subjects (traintest) with the shared evaluation code.
# Recipe "unet" (src/spinseg/recipes/named.py) gives checkpoints that record no preprocessing theirs; pins GPU 0.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe unet \
  --multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --restore_path pretrained_models/u-net/unet_atlas_traintest.pth \
  --output_path outputs/unet/atlas_traintest \
  "$@"
