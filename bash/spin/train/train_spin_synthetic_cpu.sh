#!/usr/bin/env bash
# SPiN (paper architecture, 5,263,808 parameters) on the synthetic ATLAS, a CPU recipe that fits
# in minutes: recipe "spin_synthetic_cpu" (src/spinseg/recipes/named.py) pins 96x96 crops instead
# of whole 197x233 slices, 600 steps instead of 42,400, a higher first learning rate (1e-3, then
# 3e-4), 70% lesion slices (95% in the paper) so that crops also show healthy tissue, the CPU and
# no loader workers. Everything else is the paper's recipe. Extra flags pass through ("$@") and win.
set -euo pipefail
LISTS=${LISTS:-data/synthetic_atlas_lists}

python -m spinseg.train \
  --recipe spin_synthetic_cpu \
  --train_multimodal_scan_paths "$LISTS/training/atlas/traintest/train_scans.txt" \
  --train_ground_truth_path "$LISTS/training/atlas/traintest/train_ground_truths.txt" \
  --checkpoint_path trained_spin/synthetic_atlas/spin_cpu \
  "$@"
