#!/usr/bin/env bash
# Evaluate SPiN on the paper's small-lesion subset (Table 3): every axial test slice whose lesions
# are all <= 100 pixels, pooled. Lists come from: python setup/setup_dataset_atlas_small_lesion.py
# Recipe "spin" gives the authors' checkpoint its preprocessing (ours record theirs). Pins GPU 0.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe spin \
  --multimodal_scan_paths testing/atlas/traintest/small_lesion/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/small_lesion/test_ground_truths.txt \
  --small_lesion_slices_path testing/atlas/traintest/small_lesion/test_small_lesion_slices.txt \
  --restore_path pretrained_models/spin/spin_atlas_traintest.pth \
  --output_path outputs/spin/atlas_small_lesion \
  "$@"
