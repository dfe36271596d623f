#!/usr/bin/env bash
# Evaluate KiU-Net as the release did (preset kiunet: docs/release_presets.md) on the ATLAS R1.2 test
# subjects (small_lesion); prints the Table 3 (small-lesion slices) row. Default checkpoint: the authors' one
# (pretrained_models/kiu-net/kiunet_atlas_traintest.pth); override with e.g. --restore_path trained_kiunet/atlas/kiunet_traintest/best.pth
# (a model trained here reads its inputs as its training recipe did: evaluate it with --recipe kiunet instead).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --preset kiunet \
  --multimodal_scan_paths testing/atlas/traintest/small_lesion/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/small_lesion/test_ground_truths.txt \
  --small_lesion_slices_path testing/atlas/traintest/small_lesion/test_small_lesion_slices.txt \
  --restore_path pretrained_models/kiu-net/kiunet_atlas_traintest.pth \
  --output_path outputs/kiunet/atlas_small_lesion_release \
  "$@"
