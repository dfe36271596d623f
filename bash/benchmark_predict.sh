#!/usr/bin/env bash
# predict end to end (python start, imports, model load, read, [register], segment, resample back, write the
# mask, report, lesion CSV and QC picture) for one synthetic 1 mm native scan: a sagittal 176x256x256 LIA
# whole-head T1 (the synthetic ATLAS subject moved by a random affine, intensities x12), once with --register
# and once without. The model is the paper-size SPiN with seeded random weights (speed does not depend on
# the weights). Each run is a fresh `python -m spinseg.predict` process, timed by the wall clock.
# Timings are only meaningful on an otherwise idle machine: check `uptime` first (the script prints it).
#   bash bash/benchmark_predict.sh [WORK_DIR]
set -euo pipefail
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
export PYTHONPATH="$(pwd)/src:$(pwd)/tests${PYTHONPATH:+:$PYTHONPATH}"
python - "$WORK" <<'PY'
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from native_scans import centred_grid, moved_brain_centre, random_affine, sample_on_grid
from spinseg.datasets.synthetic import generate_subject
from spinseg.models.checkpoint import save_checkpoint
from spinseg.models.registry import build_model

work = Path(sys.argv[1])
subject = generate_subject(0, seed=3)
moving = random_affine(np.random.default_rng(3))
# A scanner's sagittal MPRAGE grid: 176 x 256 x 256 at 1 mm, LIA, centred on the moved brain.
shape = (176, 256, 256)
affine = centred_grid("sagittal", moved_brain_centre(moving), shape)
nib.save(nib.Nifti1Image(sample_on_grid(subject["t1"], subject["affine"], moving, shape, affine) * 12, affine), work / "native_1mm.nii.gz")
torch.manual_seed(0)
save_checkpoint(work / "spin_random.pth", build_model("spin"))
print(f"scan {shape} and checkpoint written to {work}")
PY
uptime
for mode in register plain; do
  flags=(); [[ $mode == register ]] && flags=(--register)
  start=$(date +%s.%N)
  python -m spinseg.predict --model spin --checkpoint "$WORK/spin_random.pth" --input "$WORK/native_1mm.nii.gz" \
    --output "$WORK/out_$mode" --device cpu "${flags[@]}" > /dev/null
  end=$(date +%s.%N)
  python - "$mode" "$start" "$end" "$WORK/out_$mode/native_1mm_report.json" <<'PY'
import json, sys
mode, start, end, report = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.load(open(sys.argv[4]))
registration = report.get("registration", {}).get("seconds")
extra = f" (registration {registration:.1f} s)" if registration is not None else ""
print(f"predict end to end, {mode:8s}: {end - start:6.1f} s{extra}")
PY
done
uptime
