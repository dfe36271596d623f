#!/usr/bin/env bash
# Evaluate X-Net as the release did (preset xnet: docs/release_presets.md) on the ATLAS R1.2 test
# subjects (small_lesion); prints the Table 3 (small-lesion slices) row. Default checkpoint: the authors' one
# (pretrained_models/x-net/xnet_atlas_traintest.h5); override with e.g. --restore_path trained_xnet/atlas/xnet_traintest/best.pth
# (a model trained here reads its inputs as its training recipe did: evaluate it with --recipe xnet instead).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --preset xnet \
  --multimodal_scan_paths testing/atlas/traintest/small_lesion/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/small_lesion/test_ground_truths.txt \
  --small_lesion_slices_path testing/atlas/traintest/small_lesion/test_small_lesion_slices.txt \
  --restore_path pretrained_models/x-net/xnet_atlas_traintest.h5 \
  --output_path outputs/xnet/atlas_small_lesion_release \
  "$@"
