"""Affine registration of a whole-head T1 scan to the MNI152 2009 template (SimpleITK), and back.

The models were trained on ATLAS R1.2, whose scans are registered to MNI152 2009 (1 mm, the
template's grid). A scan as it comes off the scanner is registered here with SimpleITK's
registration framework (Mattes mutual information, multi-resolution; a rigid stage, then a full
affine stage), so that it can be segmented on the template grid and its probabilities brought back
onto its own grid with the same transform.

* Fixed image: nilearn's copy of the ICBM152 2009a T1 template with a drawn head around it
  (:func:`template_images`), on the template grid the network runs on. Moving image: the scan as read (whole head: ATLAS R1.2 scans are
  defaced, not skull-stripped).
* The metric is evaluated only inside the template's brain mask dilated by ``BRAIN_MARGIN_MM`` (so
  the brain edge counts, but the scan's scalp, neck and face, which the template lacks, do not).
  The mask is not used to drop detections: the mask written is what the network says.
* Convention (ITK's): the transform maps template physical points to scan physical points, both in
  ITK's LPS coordinates; it is what ``antsApplyTransforms -r template -i scan -t <name>_to_mni.tfm``
  needs to bring the scan into MNI space.
* A registration is judged after it ran: the Pearson correlation of the registered scan with the
  template inside the brain mask (``MINIMUM_CORRELATION``) and the fraction of the template's brain
  that the scan's field of view covers (``MINIMUM_BRAIN_COVERAGE``); a failure raises a one-line
  :class:`~spinseg.errors.UserInputError` before anything is written.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from spinseg.errors import fail
from spinseg.io.files import atomic_path

# LPS (ITK) <-> RAS (NIfTI/nibabel) world coordinates: flip the first two axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
BRAIN_MARGIN_MM = 10.0  # the skull and the inner scalp take part in the metric
# Below these a registration is reported as failed (a T1 registered to the template correlates at
# ~0.7-0.9 inside the brain; an unrelated image or a flipped head below 0.3).
MINIMUM_CORRELATION = 0.45
MINIMUM_BRAIN_COVERAGE = 0.85
HISTOGRAM_BINS = 32
SAMPLING_FRACTION = 0.1
SAMPLING_SEED = 14
WORKING_MM = 2.0
# The smallest adult brain extent along any axis is ~130 mm (left-right); a scan thinner than this misses part of it.
MINIMUM_FIELD_OF_VIEW_MM = 110.0  # voxel size the optimiser works at  # fixed: the same scan registers to the same transform on every run


@dataclass(frozen=True)
class RegistrationConfig:
    """Multi-resolution schedule of the two stages (rigid, then affine)."""

    # Voxel size (mm) of each level of the pyramid; a template grid finer than a level is shrunk to it.
    level_mm: tuple[float, ...] = (8.0, 4.0, 2.0)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0, 1.0)
    rigid_iterations: int = 50
    affine_iterations: int = 50
    learning_rate: float = 2.0


@dataclass
class Registration:
    """Result of :func:`register_to_template`: the ITK transform (template LPS mm -> scan LPS mm),
    its 4x4 RAS matrix (template world mm -> scan world mm), quality figures and the time taken."""

    transform: object  # SimpleITK.AffineTransform
    matrix_ras: np.ndarray
    correlation: float
    brain_coverage: float
    metric_value: float
    seconds: float

    def summary(self) -> dict:
        """JSON-ready figures for the scan's report."""
        return {
            "template_to_scan_ras": np.round(self.matrix_ras, 6).tolist(),
            "correlation_in_brain": round(self.correlation, 4),
            "brain_coverage": round(self.brain_coverage, 4),
            "mattes_mutual_information": round(self.metric_value, 5),
            "seconds": round(self.seconds, 2),
        }


def sitk_image(volume: np.ndarray, affine: np.ndarray):
    """(X, Y, Z) array on a NIfTI (RAS) 4x4 affine -> SimpleITK image with the same world geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    return image


def sitk_array(image) -> np.ndarray:
    """SimpleITK image -> float32 (X, Y, Z) array (the inverse of :func:`sitk_image`'s transpose)."""
    import SimpleITK as sitk

    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def transform_matrix_ras(transform) -> np.ndarray:
    """4x4 RAS matrix of an ITK affine transform given in LPS (template mm -> scan mm)."""
    matrix = np.eye(4)
    linear = np.asarray(transform.GetMatrix(), dtype=float).reshape(3, 3)
    centre = np.asarray(transform.GetCenter(), dtype=float)
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(transform.GetTranslation(), dtype=float) + centre - linear @ centre
    return RAS_TO_LPS @ matrix @ RAS_TO_LPS


@functools.lru_cache(maxsize=2)
def template_images(shape: tuple[int, int, int], affine_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The whole-head MNI152 2009 template and its brain mask on a grid: ((X, Y, Z) float32, (X, Y, Z) bool).

    The head is :func:`spinseg.datasets.synthetic.load_head_model`'s: nilearn's bundled ICBM152
    2009a T1 (brain-extracted, no download) with CSF, skull and scalp layers drawn around the
    brain, so that a whole-head scan meets dark-bright-dark layers where it expects them.
    Resampled (trilinear) when the grid is not one the head model is built on.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    from spinseg.datasets.synthetic import load_head_model

    affine = np.frombuffer(affine_bytes, dtype=float).reshape(4, 4)
    head = load_head_model(shape)
    if not np.allclose(head.affine, affine, atol=1e-3):
        head = load_head_model(None)
    volumes = [head.t1, head.white_matter + head.gray_matter]
    if tuple(head.shape) != tuple(shape) or not np.allclose(head.affine, affine, atol=1e-3):
        volumes = [np.asarray(resample_from_to(nib.Nifti1Image(volume, head.affine), (shape, affine), order=1).dataobj,
                              dtype=np.float32) for volume in volumes]
    # Brain = tissue (grey + white matter) with holes (ventricles, deep CSF) filled.
    return volumes[0], ndimage.binary_fill_holes(volumes[1] > 0.25)


def template_volumes(grid) -> tuple[np.ndarray, np.ndarray]:
    """:func:`template_images` for a :class:`~spinseg.inference.scan.Grid`, through the on-disk cache
    (:func:`cached_template_images`)."""
    return cached_template_images(tuple(int(n) for n in grid.shape), np.asarray(grid.affine, dtype=float).tobytes())


def template_cache_directory() -> Path:
    """Where built template heads are kept: ``$SPINSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/spinseg``, else ``~/.cache/spinseg``."""
    if os.environ.get("SPINSEG_CACHE_DIR"):
        return Path(os.environ["SPINSEG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spinseg"


def template_cache_key(shape: tuple[int, int, int], affine_bytes: bytes) -> str:
    """A name for the template head of a grid that changes whenever what builds it may have changed:
    the grid, nilearn's template files (size, time) and the two modules that build it (time)."""
    from spinseg.datasets import synthetic

    sources = [Path(__file__), Path(synthetic.__file__)]
    sources += sorted(synthetic.template_directory().glob(synthetic.TEMPLATE_FILE.format("*")))
    stamps = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in sources if path.is_file()]
    digest = hashlib.sha256(repr((shape, affine_bytes, stamps)).encode()).hexdigest()[:20]
    return f"template_head_{'x'.join(map(str, shape))}_{digest}.npz"


@functools.lru_cache(maxsize=2)
def cached_template_images(shape: tuple[int, int, int], affine_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """:func:`template_images`, kept on disk between runs (:func:`template_cache_directory`).

    Building the head takes ~0.8 s of every predict run (three gzip NIfTI reads, a distance
    transform, resampling); reading it back, a few ms. A cache file that cannot be read is rebuilt;
    one that cannot be written is skipped (the result is the same, only slower next time).
    """
    path = template_cache_directory() / template_cache_key(shape, affine_bytes)
    try:
        with np.load(path) as stored:
            head, brain = stored["head"], stored["brain"]
        if head.shape == brain.shape == tuple(shape) and head.dtype == np.float32 and brain.dtype == bool:
            return head, brain
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or unreadable: build it
    head, brain = template_images(shape, affine_bytes)
    try:
        with atomic_path(path, suffix=".npz") as temporary:
            np.savez(temporary, head=head, brain=brain)
    except OSError:
        pass  # read-only or full cache folder: nothing is lost but time
    return head, brain


def metric_mask(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain mask dilated by ``BRAIN_MARGIN_MM`` (X, Y, Z) as uint8: where the metric is sampled."""
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing)
    return (distance <= BRAIN_MARGIN_MM).astype(np.uint8)


def _stage(fixed, moving, mask, transform, iterations: int, config: RegistrationConfig):
    """One multi-resolution Mattes-MI stage optimising ``transform`` in place; returns the metric value."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, SAMPLING_SEED)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    # Regular-step descent halves its step when the direction turns: robust from a start some cm off.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=config.learning_rate, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.5,
    )
    # Scales from physical shift: one step moves any voxel by about the same number of mm,
    # whether the parameter is a translation, an angle or a matrix entry.
    method.SetOptimizerScalesFromPhysicalShift()
    template_voxel_mm = float(np.min(fixed.GetSpacing()))
    method.SetShrinkFactorsPerLevel([max(1, round(level / template_voxel_mm)) for level in config.level_mm])
    method.SetSmoothingSigmasPerLevel(list(config.smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


def register_to_template(
    volume: np.ndarray, affine: np.ndarray, template_grid, name="input", config: RegistrationConfig | None = None,
) -> Registration:
    """Affinely registers a whole-head T1 (X, Y, Z) on ``affine`` to the MNI template on ``template_grid``.

    Returns the :class:`Registration`; a result whose correlation with the template or brain
    coverage is too low raises a one-line ``UserInputError`` naming ``name``.
    """
    import SimpleITK as sitk

    config = config or RegistrationConfig()
    started = time.perf_counter()
    check_field_of_view(volume.shape, affine, name)
    # The optimiser runs on ~2 mm copies of both images (block averages of the scan): a 1 mm head
    # has 8x the voxels to smooth at every level for no gain at a 2 mm accuracy goal.
    working = working_grid(template_grid)
    working_template, working_brain = template_volumes(working)
    fixed = sitk_image(working_template, working.affine)
    moving = block_average(sitk_image(volume, affine))
    mask = sitk.Cast(sitk_image(metric_mask(working_brain, working.affine), working.affine), sitk.sitkUInt8)
    # Start from the centres of mass (head vs brain: off by some cm, well within the coarse level's reach).
    rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = sitk.Euler3DTransform(rigid)
    _stage(fixed, moving, mask, rigid, config.rigid_iterations, config)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(rigid.GetCenter())
    transform.SetMatrix(rigid.GetMatrix())
    transform.SetTranslation(rigid.GetTranslation())
    metric_value = _stage(fixed, moving, mask, transform, config.affine_iterations, config)
    registration = Registration(transform, transform_matrix_ras(transform), 0.0, 0.0, metric_value, 0.0)
    # Judged on the working grid too: a 2 mm sample of the brain says as much as the 1 mm one.
    registered = to_template(volume, affine, registration, working)
    registration.correlation = brain_correlation(registered, working_template, working_brain)
    registration.brain_coverage = field_of_view_coverage(volume.shape, affine, registration, working, working_brain)
    registration.seconds = time.perf_counter() - started
    check_registration(registration, name)
    return registration


def working_factors(grid) -> np.ndarray:
    """Whole sub-sampling factors (3,) that take ``grid``'s voxels to about ``WORKING_MM``."""
    spacing = np.sqrt((np.asarray(grid.affine)[:3, :3] ** 2).sum(axis=0))
    return np.maximum(1, np.round(WORKING_MM / spacing)).astype(int)


def on_working_grid(volume: np.ndarray, grid) -> np.ndarray:
    """A (X, Y, Z) volume on ``grid`` -> its values at the points of ``working_grid(grid)`` (every f-th voxel)."""
    factors = working_factors(grid)
    return volume[:: factors[0], :: factors[1], :: factors[2]]


def working_grid(grid):
    """``grid`` (a :class:`~spinseg.inference.scan.Grid`) sub-sampled by whole factors to about ``WORKING_MM`` voxels
    (corner-aligned: voxel 0 stays, as the template head model's grids are built)."""
    from spinseg.inference.scan import Grid

    factors = working_factors(grid)
    affine = np.asarray(grid.affine, dtype=float).copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(factors)
    return Grid(tuple(int((n - 1) // f + 1) for n, f in zip(grid.shape, factors)), affine)


def block_average(image):
    """SimpleITK image -> block averages of whole factors of voxels, to about ``WORKING_MM`` voxels (anti-aliased)."""
    import SimpleITK as sitk

    factors = [max(1, round(WORKING_MM / spacing)) for spacing in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def brain_correlation(registered: np.ndarray, template: np.ndarray, brain: np.ndarray) -> float:
    """Pearson correlation of two (X, Y, Z) volumes inside ``brain`` (0 when either is constant there)."""
    first, second = registered[brain].astype(np.float64), template[brain].astype(np.float64)
    if first.std() == 0 or second.std() == 0:
        return 0.0
    return float(np.corrcoef(first, second)[0, 1])


def field_of_view_coverage(shape, affine: np.ndarray, registration: Registration, template_grid, brain: np.ndarray) -> float:
    """Fraction of the template's brain voxels whose registered position lies inside the scan's grid."""
    brain_indices = np.argwhere(brain).T.astype(float)
    template_world = template_grid.affine[:3, :3] @ brain_indices + template_grid.affine[:3, 3:4]
    scan_world = registration.matrix_ras[:3, :3] @ template_world + registration.matrix_ras[:3, 3:4]
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    scan_indices = inverse[:3, :3] @ scan_world + inverse[:3, 3:4]
    inside = np.all((scan_indices > -0.5) & (scan_indices < np.asarray(shape[:3])[:, None] - 0.5), axis=0)
    return float(inside.mean()) if inside.size else 0.0


def check_field_of_view(shape, affine: np.ndarray, name) -> None:
    """Raises a one-line ``UserInputError`` when the scan's box is too thin along an axis to hold a whole brain."""
    extents = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)) * np.asarray(shape[:3])
    if extents.min() < MINIMUM_FIELD_OF_VIEW_MM:
        raise fail(name, f"registration to MNI152 impossible: the field of view is {extents.min():.0f} mm along voxel axis "
                         f"{int(np.argmin(extents))} (a brain needs {MINIMUM_FIELD_OF_VIEW_MM:.0f} mm); give a whole-head T1")


def check_registration(registration: Registration, name) -> None:
    """Raises a one-line ``UserInputError`` when the field of view or the correlation says the registration failed."""
    if registration.brain_coverage < MINIMUM_BRAIN_COVERAGE:
        raise fail(name, f"registration to MNI152 failed: the field of view covers {100 * registration.brain_coverage:.0f}% "
                         f"of the brain (need {100 * MINIMUM_BRAIN_COVERAGE:.0f}%); give a whole-head T1")
    if registration.correlation < MINIMUM_CORRELATION:
        raise fail(name, f"registration to MNI152 failed: correlation with the template {registration.correlation:.2f} "
                         f"< {MINIMUM_CORRELATION} inside the brain; is this a T1-weighted head scan?")


def to_template(volume: np.ndarray, affine: np.ndarray, registration: Registration, template_grid) -> np.ndarray:
    """(X, Y, Z) scan -> (X', Y', Z') on the template grid through the registration (trilinear, 0 outside)."""
    import SimpleITK as sitk

    reference = sitk_image(np.zeros(template_grid.shape, np.float32), template_grid.affine)
    resampled = sitk.Resample(sitk_image(volume, affine), reference, registration.transform, sitk.sitkLinear, 0.0)
    return sitk_array(resampled)


def from_template(volume: np.ndarray, template_grid, registration: Registration, shape, affine: np.ndarray) -> np.ndarray:
    """(X', Y', Z') on the template grid -> (X, Y, Z) on the scan's grid (inverse transform, trilinear, 0 outside)."""
    import SimpleITK as sitk

    reference = sitk_image(np.zeros(tuple(shape[:3]), np.float32), affine)
    resampled = sitk.Resample(sitk_image(volume, template_grid.affine), reference,
                              registration.transform.GetInverse(), sitk.sitkLinear, 0.0)
    return sitk_array(resampled)


def template_to_scan_mm(registration: Registration, points_mm: np.ndarray) -> np.ndarray:
    """Template world mm (N, 3) -> scan world mm (N, 3)."""
    matrix = registration.matrix_ras
    return np.asarray(points_mm, dtype=float) @ matrix[:3, :3].T + matrix[:3, 3]


def scan_to_template_mm(registration: Registration, points_mm: np.ndarray) -> np.ndarray:
    """Scan world mm (N, 3) -> template (MNI) world mm (N, 3)."""
    inverse = np.linalg.inv(registration.matrix_ras)
    return np.asarray(points_mm, dtype=float) @ inverse[:3, :3].T + inverse[:3, 3]


def write_transform(registration: Registration, path) -> None:
    """Writes the transform as an ITK text transform file (``.tfm``; ANTs, ITK-SNAP and 3D Slicer read it)."""
    import SimpleITK as sitk

    sitk.WriteTransform(registration.transform, str(path))
