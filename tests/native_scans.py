"""The moved-scan helpers the tests share; they live in :mod:`spinseg.datasets.native_scans`
(the benchmark's end-to-end phase makes its native scan with them too)."""
from spinseg.datasets.native_scans import (  # noqa: F401
    BRAIN_CENTRE_MM,
    mean_displacement_mm,
    moved_head_box,
    native_grid,
    random_affine,
    sample_on_grid,
)
