#!/usr/bin/env bash
# GPU smoke test: the CUDA paths end to end in a few minutes on one GPU.
#
#   bash bash/gpu_smoke.sh                      # on CUDA (GPU 0; torchrun check with >= 2 GPUs)
#   DEVICE=cpu STEPS=4 bash bash/gpu_smoke.sh   # the same commands on a CPU (run by tests/test_gpu_smoke.py)
#
# Builds a tiny synthetic ATLAS at full slice resolution (197x233, DEPTH slices, 3 subjects), then
# checks: training with validation and checkpoints; --resume; a resume from a checkpoint saved with
# more GPUs visible; --amp training; evaluate on DEVICE and on the CPU, optimised and plain (rows
# agree to 1e-3); predict on DEVICE; KiU-Net's memory against the recipe table (docs/gpu.md); the
# benchmark's SPiN/U-Net phases; torchrun with 2 processes (nccl on >= 2 GPUs, gloo on the CPU).
# Prints one "CHECK name: ok|FAIL" line per check (logs in $WORK) and exits 1 on any FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's spinseg
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
DEPTH=${DEPTH:-16}
WORK=${WORK:-$(mktemp -d -t spinseg-gpu-smoke-XXXXXX)}
if [[ $DEVICE == cpu ]]; then
  # A narrow SPiN so that the CPU mode stays within a few minutes on 2 cores; the GPU runs the paper's.
  MODEL_CONFIG=${MODEL_CONFIG:-tests/fixtures/spin_small_config.json}
  N_WORKERS=${N_WORKERS:-1}
  AMP_STEPS=${AMP_STEPS:-2}  # bf16 is emulated (slow) on most CPUs
else
  MODEL_CONFIG=${MODEL_CONFIG:-}
  N_WORKERS=${N_WORKERS:-2}
fi
AMP_STEPS=${AMP_STEPS:-$STEPS}
HALF=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
DATA=$WORK/data
mkdir -p "$DATA"
failures=0
echo "gpu_smoke: DEVICE=$DEVICE STEPS=$STEPS DEPTH=$DEPTH WORK=$WORK"

check() {  # check NAME FUNCTION: runs FUNCTION, logs to $WORK/NAME.log, prints one CHECK line
  local name=$1
  shift
  if "$@" >"$WORK/$name.log" 2>&1; then
    echo "CHECK $name: ok"
  else
    echo "CHECK $name: FAIL (log: $WORK/$name.log)"
    tail -n 8 "$WORK/$name.log" | sed 's/^/    /'
    failures=$((failures + 1))
  fi
}

checkpoint() { printf '%s/checkpoints/model-%08d.pth' "$1" "$2"; }

make_data() {
  python - "$DATA" "$DEPTH" <<'EOF'
import sys
from pathlib import Path
import nibabel
import numpy as np
from spinseg.constants import ATLAS_SHAPE
from spinseg.experiments.benchmark import write_synthetic_volumes

directory, depth = Path(sys.argv[1]), int(sys.argv[2])
scans, masks = write_synthetic_volumes(directory, 3, (*ATLAS_SHAPE[:2], depth), seed=0)
(directory / "scans.txt").write_text("\n".join(scans) + "\n")
(directory / "masks.txt").write_text("\n".join(masks) + "\n")
nibabel.save(nibabel.Nifti1Image(np.load(scans[0]), np.eye(4)), str(directory / "scan000.nii.gz"))
EOF
}

train() {  # train RUN_DIR MAX_STEPS [flags...]
  local run=$1 steps=$2
  shift 2
  python -m spinseg.train \
    --train_multimodal_scan_paths "$DATA/scans.txt" --train_ground_truth_path "$DATA/masks.txt" \
    --val_multimodal_scan_paths "$DATA/scans.txt" --val_ground_truth_path "$DATA/masks.txt" \
    --model_name spin --n_chunk 5 ${MODEL_CONFIG:+--model_config "$MODEL_CONFIG"} --n_batch 2 --val_batch_size 4 \
    --n_validation "$HALF" --n_checkpoint "$HALF" --n_summary "$HALF" --max_steps "$steps" \
    --n_workers "$N_WORKERS" --seed 1 --device "$DEVICE" --checkpoint_path "$run" "$@"
}

check_training() {
  train "$WORK/run" "$STEPS" | tee "$WORK/train.out" &&
    test -f "$(checkpoint "$WORK/run" "$HALF")" && test -f "$(checkpoint "$WORK/run" "$STEPS")" &&
    test -f "$WORK/run/best.pth" && grep -q "validation dice=" "$WORK/train.out"
}

check_resume() {
  train "$WORK/run" $((STEPS + 2)) --resume | tee "$WORK/resume.out" &&
    grep -q "resuming from" "$WORK/resume.out" && test -f "$(checkpoint "$WORK/run" $((STEPS + 2)))"
}

check_resume_more_gpus() {
  # As if saved by rank 0 of an 8-GPU torchrun: 8 CUDA RNG states; this machine sees fewer.
  mkdir -p "$WORK/run_8gpu/checkpoints" &&
    python - "$(checkpoint "$WORK/run" "$STEPS")" "$(checkpoint "$WORK/run_8gpu" "$STEPS")" <<'EOF' &&
import sys
import torch
checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
state = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(16, dtype=torch.uint8)
checkpoint["rng_state"]["cuda"] = [state.clone() for _ in range(8)]
torch.save(checkpoint, sys.argv[2])
EOF
    train "$WORK/run_8gpu" $((STEPS + 2)) --resume && test -f "$(checkpoint "$WORK/run_8gpu" $((STEPS + 2)))"
}

check_amp() {
  train "$WORK/run_amp" "$AMP_STEPS" --amp --n_validation 0 --n_checkpoint "$AMP_STEPS" | tee "$WORK/amp.out" &&
    test -f "$(checkpoint "$WORK/run_amp" "$AMP_STEPS")" && grep -Eq "last loss [0-9]" "$WORK/amp.out"
}

evaluate() {  # evaluate OUTPUT_DIR DEVICE [flags...]
  local output=$1 device=$2
  shift 2
  python -m spinseg.evaluate --multimodal_scan_paths "$DATA/scans.txt" --ground_truth_path "$DATA/masks.txt" \
    --model_name spin --n_chunk 5 ${MODEL_CONFIG:+--model_config "$MODEL_CONFIG"} \
    --restore_path "$(checkpoint "$WORK/run" "$STEPS")" --metrics release --batch_size 4 \
    --device "$device" --output_path "$output" "$@"
}

check_evaluate_devices() {
  evaluate "$WORK/eval_device" "$DEVICE" && evaluate "$WORK/eval_device_plain" "$DEVICE" --plain_inference &&
    evaluate "$WORK/eval_cpu" cpu && evaluate "$WORK/eval_cpu_plain" cpu --plain_inference &&
    python - "$WORK"/eval_device "$WORK"/eval_device_plain "$WORK"/eval_cpu "$WORK"/eval_cpu_plain <<'EOF'
import json, sys
from pathlib import Path
tables = [json.loads((Path(folder) / "per_subject.json").read_text()) for folder in sys.argv[1:]]
for table in tables[1:]:
    assert len(table) == len(tables[0]) > 0
    for row, reference in zip(table, tables[0]):
        for key, value in reference.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert abs(row[key] - value) <= 1e-3, (key, row[key], value)
print(f"{len(tables)} evaluations, {len(tables[0])} rows each, agree to 1e-3")
EOF
}

check_predict() {
  python -m spinseg.predict --model spin ${MODEL_CONFIG:+--model_config "$MODEL_CONFIG"} \
    --checkpoint "$(checkpoint "$WORK/run" "$STEPS")" --input "$DATA/scan000.nii.gz" --output "$WORK/predict" \
    --device "$DEVICE" --batch_size 4 &&
    python - "$WORK/predict" "$DEPTH" <<'EOF'
import sys
from pathlib import Path
import nibabel
from spinseg.constants import ATLAS_SHAPE
masks = [path for path in Path(sys.argv[1]).iterdir() if "prob" not in path.name and path.name.endswith((".nii", ".nii.gz"))]
assert len(masks) == 1, masks
assert nibabel.load(str(masks[0])).shape == (*ATLAS_SHAPE[:2], int(sys.argv[2]))
EOF
}

check_kiunet_memory() {
  # CUDA: one training step of KiU-Net's recipe, peak allocation against the meta-device count of
  # docs/gpu.md (within 25%, and under 24 GB). CPU: the count alone against 24 GB.
  python - "$DEVICE" <<'EOF'
import sys
import torch
from spinseg.experiments.memory import GIB, meta_model, recipe_memory
from spinseg.models import build_model
from spinseg.experiments.benchmark import model_setup

estimate = recipe_memory("kiunet")
print(f"KiU-Net recipe: training {estimate.train_input} {estimate.train_gib:.2f} GiB (meta count), "
      f"validation {estimate.inference_input} {estimate.inference_gib:.2f} GiB")
assert estimate.train_gib * 1.2 < 24e9 / GIB and estimate.inference_gib * 1.2 < 24e9 / GIB
if sys.argv[1] != "cpu":
    device = torch.device(sys.argv[1] if ":" in sys.argv[1] else "cuda:0")
    config, _, _ = model_setup("kiunet")
    model = build_model("kiunet", **config).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    torch.cuda.reset_peak_memory_stats(device)
    images = torch.randn(estimate.train_input, device=device)
    for _ in range(2):  # the second step holds Adam's moments too
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), (images > 0).float())
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    measured = torch.cuda.max_memory_allocated(device) / GIB
    print(f"measured peak {measured:.2f} GiB on {torch.cuda.get_device_name(device)}")
    assert abs(measured - estimate.train_gib) <= 0.25 * estimate.train_gib, (measured, estimate.train_gib)
EOF
}

check_benchmark() {
  # On a GPU this also runs predict end to end against the release loop once; the CPU mode leaves that
  # to tests/test_benchmark.py (three passes over a full volume would double the smoke test's time).
  local size=(--depth "$DEPTH" --repeats 1 --train_repeats 2 --volumes 2 --end_to_end_repeats 1)
  [[ $DEVICE == cpu ]] && size=(--quick --isolate no --bf16 no --end_to_end no)
  python -m spinseg.benchmark --device "$DEVICE" --models spin unet "${size[@]}" --output_json "$WORK/benchmark.json" &&
    python -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['passed'] and r['tf32'] is False, r.get('failed_models')" "$WORK/benchmark.json"
}

check_torchrun() {
  local port=$(( 29500 + RANDOM % 1000 ))
  python -m torch.distributed.run --nproc_per_node=2 --nnodes=1 --master_addr=127.0.0.1 --master_port=$port \
    -m spinseg.train \
    --train_multimodal_scan_paths "$DATA/scans.txt" --train_ground_truth_path "$DATA/masks.txt" \
    --model_name spin --n_chunk 5 ${MODEL_CONFIG:+--model_config "$MODEL_CONFIG"} --n_batch 4 \
    --n_validation 0 --n_checkpoint "$STEPS" --max_steps "$STEPS" --n_workers 0 --seed 1 \
    --device "$DEVICE" --checkpoint_path "$WORK/run_ddp" | tee "$WORK/ddp.out" &&
    grep -q "2 process(es)" "$WORK/ddp.out" && test -f "$(checkpoint "$WORK/run_ddp" "$STEPS")"
}

check data make_data
check training check_training
check resume check_resume
check resume_more_gpus check_resume_more_gpus
check amp_training check_amp
check evaluate_devices check_evaluate_devices
check predict check_predict
check kiunet_memory check_kiunet_memory
check benchmark check_benchmark
gpus=0
[[ $DEVICE != cpu ]] && gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ $DEVICE == cpu ]]; then
  check torchrun_gloo check_torchrun
elif (( gpus >= 2 )); then
  check torchrun_nccl check_torchrun
else
  echo "CHECK torchrun_nccl: skipped ($gpus GPU visible, needs 2)"
fi

echo "gpu_smoke: $failures check(s) failed; logs in $WORK"
(( failures == 0 ))
