"""Synthetic scans as they come off a scanner: kept importable by this name for the tests and the
bash/ scripts; the implementation lives in :mod:`spinseg.datasets.native_scans` (shared with the
main job's native-space check)."""
from spinseg.datasets.native_scans import (  # noqa: F401 - re-exported
    BRAIN_CENTRE_MM,
    centred_grid,
    grid_axes,
    mean_displacement_mm,
    moved_brain_centre,
    moved_head_box,
    native_grid,
    random_affine,
    sample_on_grid,
)
