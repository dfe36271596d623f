#!/usr/bin/env bash
# predict end to end against the release's own slice loop, each program a fresh process timed by the wall clock
# (spinseg.experiments.end_to_end): --register on a synthetic sagittal 1 mm native scan (176x256x256 LIA, moved by
# a random affine, intensities x12), and ours vs the release loop on the same subject on the MNI grid. Paper-size
# SPiN with seeded random weights unless a checkpoint is given (--checkpoint spin=PATH). Timings are only
# meaningful on an otherwise idle machine: the table prints the load average at start and end.
#   bash bash/benchmark_predict.sh [--end_to_end_repeats N] [--checkpoint spin=PATH] [--output_json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m spinseg.benchmark --end_to_end only --models spin "$@"
