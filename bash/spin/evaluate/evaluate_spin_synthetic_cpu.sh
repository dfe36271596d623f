#!/usr/bin/env bash
# Evaluate the CPU-trained SPiN on the synthetic ATLAS test subjects: Table 2 and 3 rows, the
# lesion-wise and size tables, report.md with plots and the worst subjects' montages.
set -euo pipefail
LISTS=${LISTS:-data/synthetic_atlas_lists}
CHECKPOINT=${CHECKPOINT:-trained_spin/synthetic_atlas/spin_cpu/checkpoints/model-00000600.pth}

python -m spinseg.evaluate \
  --multimodal_scan_paths "$LISTS/testing/atlas/traintest/test_scans.txt" \
  --ground_truth_path "$LISTS/testing/atlas/traintest/test_ground_truths.txt" \
  --model_name spin \
  --restore_path "$CHECKPOINT" \
  --n_chunk 5 \
  --dataset_normalization standard \
  --dataset_means 30.20063 \
  --dataset_stddevs 35.221165 \
  --output_path outputs/spin/synthetic_atlas \
  --device cpu \
  "$@"
