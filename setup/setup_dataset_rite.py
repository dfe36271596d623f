"""Converts the raw RITE images and vessel masks to .npy and writes the train/test path lists.

    python setup/setup_dataset_rite.py                          # data/AV_groundTruth -> data/rite_spin
    python setup/setup_dataset_rite.py --rite_dir /data/AV_groundTruth --output_dir data/rite_spin

Images are stored float32 (H, W, 3) with raw 0-255 values at their raw size (565 x 584) unless
--n_height/--n_width are given; masks uint8 {0, 1} from vessel/*.png (av/*.png non-black where missing).
Prints and writes (<output_dir>/statistics.json) the per-channel means/stds of the training images.
Problems with the input stop the run with one line and exit code 2, before anything is written.
See spinseg.datasets.rite for the layouts.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.datasets.rite import setup_main  # noqa: E402
from spinseg.errors import cli_entry  # noqa: E402



@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Runs the set-up; bad input ends with one line and exit code 2."""
    setup_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
