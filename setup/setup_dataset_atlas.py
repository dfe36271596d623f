"""Converts raw ATLAS to .npy volumes and writes the train/validation/test path lists.

    python setup/setup_dataset_atlas.py                      # data/atlas/atlas_standard -> data/atlas_spin/atlas_standard
    python setup/setup_dataset_atlas.py --atlas_dir /tmp/synth --data_split_dir /tmp/synth/data_split --n_workers 2
    python setup/setup_dataset_atlas.py --format bids --atlas_dir data/ATLAS_2 --output_dir data/atlas_spin/atlas_v2

Scans are stored float32, ground truths uint8 (OR of the subject's masks). Re-running skips subjects whose
outputs are newer than their inputs. Problems with the input stop the run with one line and exit code 2.
See spinseg.datasets.setup_atlas for the layouts.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.datasets.setup_atlas import setup_main  # noqa: E402
from spinseg.errors import cli_entry  # noqa: E402

main = cli_entry(setup_main)

if __name__ == "__main__":
    main()
