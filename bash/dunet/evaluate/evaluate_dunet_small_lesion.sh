#!/usr/bin/env bash
# Evaluate D-UNet as the release did (preset dunet: docs/release_presets.md) on the ATLAS R1.2 test
# subjects (small_lesion); prints the Table 3 (small-lesion slices) row. Default checkpoint: the authors' one
# (pretrained_models/dunet/dunet_atlas_traintest.hdf5); override with e.g. --restore_path trained_dunet/atlas/dunet_traintest/best.pth
# (a model trained here reads its inputs as its training recipe did: evaluate it with --recipe dunet instead).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.evaluate \
  --preset dunet \
  --multimodal_scan_paths testing/atlas/traintest/small_lesion/test_scans.txt \
  --ground_truth_path testing/atlas/traintest/small_lesion/test_ground_truths.txt \
  --small_lesion_slices_path testing/atlas/traintest/small_lesion/test_small_lesion_slices.txt \
  --restore_path pretrained_models/dunet/dunet_atlas_traintest.hdf5 \
  --output_path outputs/dunet/atlas_small_lesion_release \
  "$@"
