#!/usr/bin/env bash
# The main job on a fresh machine, no GPU and no data needed:
#   install -> synthetic ATLAS (30 subjects, R1.2 raw layout) -> setup (the real ATLAS setup script)
#   -> small-lesion subset -> train SPiN on the CPU -> evaluate -> Table 2 / Table 3 rows.
set -euo pipefail
cd "$(dirname "$0")/.."
N_SUBJECTS=${N_SUBJECTS:-30}
RAW=data/synthetic_atlas/atlas_standard
PREPARED=data/synthetic_atlas_spin/atlas_standard
export LISTS=data/synthetic_atlas_lists
start=$(date +%s)

bash bash/install.sh
python setup/make_synthetic_atlas.py --output_dir "$RAW" --n_subjects "$N_SUBJECTS" --seed 0 --n_workers 2
python setup/setup_dataset_atlas.py --atlas_dir "$RAW" --output_dir "$PREPARED" \
  --data_split_dir "$RAW/data_split" --lists_dir "$LISTS" --n_workers 2
python setup/setup_dataset_atlas_small_lesion.py --data_dir "$PREPARED" --lists_dir "$LISTS"
bash bash/spin/train/train_spin_synthetic_cpu.sh
bash bash/spin/evaluate/evaluate_spin_synthetic_cpu.sh

cat <<EOM

Finished in $(( $(date +%s) - start )) s. Where things are:
  table rows and lesion tables   outputs/spin/synthetic_atlas/results.txt
  report with plots and montages outputs/spin/synthetic_atlas/report.md
  checkpoints                    trained_spin/synthetic_atlas/spin_cpu/checkpoints/
  tensorboard logs               tensorboard --logdir trained_spin/synthetic_atlas/spin_cpu/tensorboard
  synthetic raw data (R1.2)      $RAW
EOM
