#!/usr/bin/env bash
# Evaluate SPiN on the RITE (retinal vessel segmentation) test images: per-image DSC, IOU, precision and recall, averaged over images,
# scored against the ground truths at the raw image size (test_original_ground_truths.txt; the same files
# as test_ground_truths.txt unless the setup resized the images).
# Normalisation: the training statistics in statistics.json (as the training recipe). Default checkpoint:
# the best one of bash/spin/train/train_spin_rite_traintest.sh; override with e.g. --restore_path <path>.
set -euo pipefail
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}

STATISTICS=${STATISTICS:-data/rite_spin/statistics.json}
if [[ ! -f "$STATISTICS" ]]; then
  echo "error: $STATISTICS: not found; run python setup/setup_dataset_rite.py first (or set STATISTICS=...)" >&2
  exit 2
fi
read -r -a MEANS <<< "$(python -c 'import json, sys; print(*json.load(open(sys.argv[1]))["means"])' "$STATISTICS")"
read -r -a STDDEVS <<< "$(python -c 'import json, sys; print(*json.load(open(sys.argv[1]))["stddevs"])' "$STATISTICS")"

python -m spinseg.evaluate \
  --multimodal_scan_paths testing/rite/traintest/test_images.txt \
  --ground_truth_path testing/rite/traintest/test_original_ground_truths.txt \
  --model_name spin \
  --model_config '{"input_channels": 3}' \
  --restore_path trained_spin/rite/spin_traintest/best.pth \
  --n_chunk 1 \
  --dataset_normalization standard \
  --dataset_means "${MEANS[@]}" \
  --dataset_stddevs "${STDDEVS[@]}" \
  --output_path outputs/spin/rite_traintest \
  --device auto \
  "$@"
