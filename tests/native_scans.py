"""The moved-scan helpers the tests share; they live in :mod:`spinseg.datasets.native_scans`
(the benchmark's end-to-end phase and the main job's native check make their native scans with them
too). Plus the ~3 mm template grid the native-space tests patch in."""
from spinseg.datasets.native_scans import (  # noqa: F401
    BRAIN_CENTRE_MM,
    mean_displacement_mm,
    moved_head_box,
    native_grid,
    random_affine,
    sample_on_grid,
)

# The template grid a test can afford: the MNI152 2009 box at ~3 mm (a corner-aligned down-sampling),
# monkeypatched in as ``spinseg.inference.scan.template_grid``.
COARSE_MNI_SHAPE = (66, 78, 63)


def coarse_template():
    """The MNI template box at ~3 mm, on the synthetic head model's own corner-aligned grid (no resampling needed)."""
    from spinseg.datasets.synthetic import load_head_model
    from spinseg.inference.scan import Grid

    return Grid(COARSE_MNI_SHAPE, load_head_model(COARSE_MNI_SHAPE).affine)
