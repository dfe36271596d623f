#!/usr/bin/env bash
# Evaluate SPiN on the ATLAS R1.2 test subjects: prints Table 2 (and Table 3) rows.
# Default checkpoint: the authors' published one (setup/download_pretrained_models.sh), which records
# no preprocessing: recipe "spin" gives it (5 slices, ATLAS mean/std, threshold 0.5). Our checkpoints
# record theirs, e.g. --restore_path trained_spin/atlas/spin_traintest/best.pth. Pins GPU 0.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --recipe spin \
  --multimodal_scan_paths testing/atlas/traintest/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/test_ground_truths.txt \
  --restore_path pretrained_models/spin/spin_atlas_traintest.pth \
  --output_path outputs/spin/atlas_traintest \
  "$@"
