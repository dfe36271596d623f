#!/usr/bin/env bash
# Evaluate CLCI-Net as the release did (preset clcinet: docs/release_presets.md) on the ATLAS R1.2 test
# subjects (small_lesion); prints the Table 3 (small-lesion slices) row. Default checkpoint: the authors' one
# (pretrained_models/clci-net/clcinet_atlas_traintest.h5); override with e.g. --restore_path trained_clcinet/atlas/clcinet_traintest/best.pth
# (a model trained here reads its inputs as its training recipe did: evaluate it with --recipe clcinet instead).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --preset clcinet \
  --multimodal_scan_paths testing/atlas/traintest/small_lesion/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/small_lesion/test_ground_truths.txt \
  --small_lesion_slices_path testing/atlas/traintest/small_lesion/test_small_lesion_slices.txt \
  --restore_path pretrained_models/clci-net/clcinet_atlas_traintest.h5 \
  --output_path outputs/clcinet/atlas_small_lesion_release \
  "$@"
