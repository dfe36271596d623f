#!/usr/bin/env bash
# Evaluate xnet on the ATLAS R1.2 test subjects (traintest) with the shared evaluation code.
# Recipe "xnet" (src/spinseg/recipes/named.py) gives checkpoints that record no preprocessing theirs; pins GPU 0.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe xnet \
  --multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --restore_path trained_xnet/atlas/xnet_traintest/best.pth \
  --output_path outputs/xnet/atlas_traintest \
  "$@"
