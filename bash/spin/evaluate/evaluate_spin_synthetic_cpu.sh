#!/usr/bin/env bash
# Evaluate the CPU-trained SPiN on the synthetic ATLAS test subjects: Table 2 and 3 rows, the
# lesion-wise and size tables, report.md with plots and the worst subjects' montages.
# Recipe "spin_synthetic_cpu" pins the CPU; slices, normalisation and threshold come from the checkpoint.
set -euo pipefail
LISTS=${LISTS:-data/synthetic_atlas_lists}
CHECKPOINT=${CHECKPOINT:-trained_spin/synthetic_atlas/spin_cpu/checkpoints/model-00000600.pth}

python -m spinseg.evaluate \
  --recipe spin_synthetic_cpu \
  --multimodal_scan_paths "$LISTS/testing/atlas/traintest/test_scans.txt" \
  --ground_truth_path "$LISTS/testing/atlas/traintest/test_ground_truths.txt" \
  --restore_path "$CHECKPOINT" \
  --output_path outputs/spin/synthetic_atlas \
  "$@"
