#!/usr/bin/env bash
# The main job's training and evaluation (recipe spin_synthetic_cpu) once per seed, then Table 2 / Table 3 as
# mean ± sd and the Table 3 DSC range over the seeds. Needs the synthetic ATLAS of bash/run_synthetic_atlas.sh.
# About 3 x (training + evaluation) of the main job.   SEEDS="1 2 3" bash bash/spin/seed_spread_synthetic_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-"1 2 3"}
folders=()
for seed in $SEEDS; do
  bash bash/spin/train/train_spin_synthetic_cpu.sh --seed "$seed" --checkpoint_path "trained_spin/synthetic_atlas/seeds/seed_$seed"
  CHECKPOINT="trained_spin/synthetic_atlas/seeds/seed_$seed/checkpoints/model-00000600.pth" \
    bash bash/spin/evaluate/evaluate_spin_synthetic_cpu.sh --output_path "outputs/spin/synthetic_atlas/seeds/seed_$seed"
  folders+=("outputs/spin/synthetic_atlas/seeds/seed_$seed")
done
python -m spinseg.experiments.seeds "${folders[@]}" --output outputs/spin/synthetic_atlas/seeds/seeds.md
