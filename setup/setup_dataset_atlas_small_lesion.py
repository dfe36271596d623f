"""Writes the small-lesion test subset: axial slices whose every 8-connected lesion has <= 100 pixels.

    python setup/setup_dataset_atlas_small_lesion.py
    python setup/setup_dataset_atlas_small_lesion.py --data_dir /tmp/spin --lists_dir /tmp/lists

Reads testing/atlas/traintest/test_{ground_truths,scans}.txt (written by setup_dataset_atlas.py) and writes,
per subject, <data_dir>/<cohort>/<subject>/<subject>_small_lesion_slices.txt (slice indices, one per line)
and <subject>_small_lesion_map.npy (uint8 ground truth on those slices, 0 elsewhere), and the line-paired lists
testing/atlas/traintest/small_lesion/test_{scans,ground_truths,small_lesion_maps,small_lesion_slices}.txt.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.datasets.setup_atlas import small_lesion_main  # noqa: E402
from spinseg.errors import cli_entry  # noqa: E402

main = cli_entry(small_lesion_main)

if __name__ == "__main__":
    main()
