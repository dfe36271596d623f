"""Converts the raw GLaS (Warwick QU) BMPs to .npy images/masks and writes the train/test path lists.

    python setup/setup_dataset_warwick.py                       # data/glas (or data/warwick) -> data/warwick_spin
    python setup/setup_dataset_warwick.py --glas_dir /data/Warwick_QU --output_dir data/warwick_spin
    python setup/setup_dataset_warwick.py --n_height 512 --n_width 512   # resize (originals kept for scoring)

Images are stored float32 (H, W, 3) with raw 0-255 values, masks uint8 {0, 1} (instance labels > 0).
Prints and writes (<output_dir>/statistics.json) the per-channel means/stds of the training images.
Problems with the input stop the run with one line and exit code 2, before anything is written.
See spinseg.datasets.glas for the layouts.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.datasets.glas import setup_main  # noqa: E402
from spinseg.errors import cli_entry  # noqa: E402



@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Runs the set-up; bad input ends with one line and exit code 2."""
    setup_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
