#!/usr/bin/env bash
# The main job on a fresh machine, no GPU and no data needed:
#   install -> synthetic ATLAS (30 subjects, R1.2 raw layout) -> setup (the real ATLAS setup script)
#   -> small-lesion subset -> train SPiN on the CPU -> evaluate -> Table 2 / Table 3 rows
#   -> native-space check (a held-out subject moved off MNI space, segmented by predict --register).
set -euo pipefail
cd "$(dirname "$0")/.."
N_SUBJECTS=${N_SUBJECTS:-30}
RAW=data/synthetic_atlas/atlas_standard
PREPARED=data/synthetic_atlas_spin/atlas_standard
export LISTS=data/synthetic_atlas_lists
# The checkpoint the evaluate script scores (its default): the run's last, step 600.
export CHECKPOINT=${CHECKPOINT:-trained_spin/synthetic_atlas/spin_cpu/checkpoints/model-00000600.pth}
start=$(date +%s)

bash bash/install.sh
python setup/make_synthetic_atlas.py --output_dir "$RAW" --n_subjects "$N_SUBJECTS" --seed 0 --n_workers 2
python setup/setup_dataset_atlas.py --atlas_dir "$RAW" --output_dir "$PREPARED" \
  --data_split_dir "$RAW/data_split" --lists_dir "$LISTS" --n_workers 2
python setup/setup_dataset_atlas_small_lesion.py --data_dir "$PREPARED" --lists_dir "$LISTS"
bash bash/spin/train/train_spin_synthetic_cpu.sh
bash bash/spin/evaluate/evaluate_spin_synthetic_cpu.sh
# The trained model on a scan that is not in MNI space: one held-out subject moved by a seeded random
# affine (<= 15 deg, <= 30 mm, +-10%) onto a sagittal 176x256x256 1 mm LIA grid, intensities x12, through
# predict --register; Dice there against Dice on the unmoved MNI-space subject (spinseg.experiments.native_check).
python -m spinseg.cli.native_check --atlas_dir "$RAW" --checkpoint "$CHECKPOINT" --device cpu \
  --output_json outputs/spin/synthetic_atlas/native_check.json

cat <<EOM

Finished in $(( $(date +%s) - start )) s. Where things are:
  table rows and lesion tables   outputs/spin/synthetic_atlas/results.txt
  report with plots and montages outputs/spin/synthetic_atlas/report.md
  native-space check (Dice)      outputs/spin/synthetic_atlas/native_check.json
  checkpoints                    trained_spin/synthetic_atlas/spin_cpu/checkpoints/
  tensorboard logs               tensorboard --logdir trained_spin/synthetic_atlas/spin_cpu/tensorboard
  synthetic raw data (R1.2)      $RAW
EOM
