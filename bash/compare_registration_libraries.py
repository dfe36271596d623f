"""Which registration library for ``predict --register``: SimpleITK vs ANTsPy on the same synthetic native scans.

Each case: a synthetic whole-head subject (``spinseg.datasets.synthetic``) on the 1 mm MNI grid,
moved by a known random affine (rotations <= 15 deg, shifts <= 30 mm, scale +-10%), sampled on a
native grid (sagittal 1 mm LIA or axial 0.9 x 0.9 x 5 mm) with intensities x12. Both libraries
register it to the same whole-head template with the same brain-region mask; printed per case:
seconds and the mean displacement (mm) over the template's brain between the recovered and the
true transform.

    PYTHONPATH=src python bash/compare_registration_libraries.py          # SimpleITK only
    /path/to/venv-with-antspyx/bin/python bash/compare_registration_libraries.py --ants
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from spinseg.datasets.native_scans import (
    mean_displacement_mm,
    moved_head_box,
    native_grid,
    random_affine,
    sample_on_grid,
)

from spinseg.datasets.synthetic import generate_subject
from spinseg.inference import registration
from spinseg.inference.scan import template_grid


def ants_image(volume, affine):
    """(X, Y, Z) array on a RAS affine -> ANTsImage (LPS physical space, like ITK)."""
    import ants

    lps = registration.RAS_TO_LPS @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    return ants.from_numpy(np.asarray(volume, np.float32), origin=lps[:3, 3].tolist(), spacing=spacing.tolist(),
                           direction=lps[:3, :3] / spacing)


def register_with_ants(volume, affine, grid) -> tuple[np.ndarray, float]:
    """ANTsPy 'Affine' (rigid + affine, Mattes MI, ANTs' default schedule) -> (template->scan RAS 4x4, seconds)."""
    import ants
    import SimpleITK as sitk

    template, brain = registration.template_volumes(grid)
    started = time.perf_counter()
    result = ants.registration(ants_image(template, grid.affine), ants_image(volume, affine), type_of_transform="Affine",
                               mask=ants_image(registration.metric_mask(brain, grid.affine).astype(np.float32), grid.affine),
                               outprefix=tempfile.mkdtemp() + "/")
    seconds = time.perf_counter() - started
    generic = sitk.ReadTransform(result["fwdtransforms"][0])
    transform = sitk.AffineTransform(3)
    transform.SetFixedParameters(generic.GetFixedParameters())
    transform.SetParameters(generic.GetParameters())
    return registration.transform_matrix_ras(transform), seconds


def main() -> None:
    """Prints one line per (case, library)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ants", action="store_true", help="also run ANTsPy (needs antspyx)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    arguments = parser.parse_args()
    grid = template_grid()
    _, brain = registration.template_volumes(grid)
    points = (grid.affine[:3, :3] @ np.argwhere(brain).T + grid.affine[:3, 3:4]).T
    for seed in arguments.seeds:
        subject = generate_subject(0, seed=seed)
        moving = random_affine(np.random.default_rng(seed))
        low, high = moved_head_box(subject["t1"], subject["affine"], moving)
        for kind in ("sagittal", "axial"):
            shape, affine = native_grid(kind, low, high)
            native = sample_on_grid(subject["t1"], subject["affine"], moving, shape, affine) * 12
            result = registration.register_to_template(native, affine, grid)
            print(f"seed {seed} {kind} {shape}: SimpleITK {result.seconds:.1f} s, "
                  f"{mean_displacement_mm(result.matrix_ras, moving, points):.2f} mm, correlation {result.correlation:.2f}", flush=True)
            if arguments.ants:
                matrix, seconds = register_with_ants(native, affine, grid)
                print(f"seed {seed} {kind} {shape}: ANTsPy    {seconds:.1f} s, "
                      f"{mean_displacement_mm(matrix, moving, points):.2f} mm", flush=True)


if __name__ == "__main__":
    main()
