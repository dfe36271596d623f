#!/usr/bin/env bash
# The paper's six rows (Tables 2 and 3) from the authors' checkpoints, no training: each method evaluated
# as the release evaluated it (docs/release_presets.md), the paper's numbers and the difference beside ours.
# Checkpoints: setup/download_pretrained_models.sh (pretrained_models/{spin,u-net,x-net,clci-net,dunet,kiu-net}/).
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

python -m spinseg.compare \
  --from_checkpoints pretrained_models/ \
  --test_scans testing/atlas/traintest/test_scans.txt \
  --test_ground_truths testing/atlas/traintest/test_ground_truths.txt \
  --output_dir outputs/release_rows \
  --device auto \
  "$@"
