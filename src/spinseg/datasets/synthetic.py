"""A synthetic ATLAS: the MNI152 2009 template, deformed per subject, with painted stroke-like lesions.

Each subject is the nilearn copy of the ICBM152 2009a template (197x233x189, 1 mm; no download)
with a synthetic head around the brain (dark CSF/skull, bright scalp) so the whole-volume statistics
resemble ATLAS R1.2 (mean ~30.2, std ~35.2), then:

1. 1-4 T1-hypointense lesions painted in template space: one primary lesion (volume log-uniform in
   1,000-40,000 mm^3, centre drawn from white matter or mixed tissue) and 0-3 satellites
   (5-500 mm^3, centre anywhere in tissue). A lesion is the top-V voxels of "ellipsoid falloff +
   smoothed noise" inside tissue, so its outline is irregular; its core is near CSF intensity with
   some heterogeneity and a soft edge.
2. A smooth random displacement field (a few mm; sums of products of low-frequency cosines) warps
   the image (linear interpolation) and the lesion mask (linear, thresholded at 0.5) together.
3. A smooth multiplicative bias field, a global intensity scale, and Rician noise.

The binary painted (and warped) lesion is the ground truth. Volumes are given in mm^3 so that a
down-sampled grid (``shape``) keeps the same anatomy; at 1 mm, mm^3 are voxels.
Subject ``index`` is generated from ``numpy.random.SeedSequence([seed, index])``, so any worker
order gives the same bytes.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from spinseg.constants import (
    ATLAS_MASK_SUFFIX,
    ATLAS_MEAN,
    ATLAS_SHAPE,
    ATLAS_STD,
    ATLAS_T1_SUFFIX,
)
from spinseg.datasets.small_lesion import small_lesion_slices
from spinseg.datasets.splits import write_split
from spinseg.errors import UserInputError, fail
from spinseg.io.files import atomic_path, write_json
from spinseg.lesions import label_components

TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
R12 = "r1.2"
BIDS = "bids"
PRIMARY_VOLUME_MM3 = (1_000.0, 40_000.0)
SATELLITE_VOLUME_MM3 = (5.0, 500.0)
MAX_SATELLITES = 3
# Held-out (test) subjects get this many extra small lesions (5-100 mm^3, mostly <= 100 pixels per slice)
# so that the Table 3 figure rests on dozens of small lesions rather than a handful; training subjects
# are unchanged (a test subject's later random draws, texture, warp and noise, differ from before).
TEST_SMALL_LESIONS = 8
TEST_SMALL_LESION_VOLUME_MM3 = (5.0, 100.0)
# Intensities relative to white matter (= 1) before scaling to ATLAS units.
LESION_CORE_LEVEL = 0.25  # near CSF in the template (ventricles ~0.3 of WM)
HEAD_LAYERS_MM = ((2.5, 0.2), (7.5, 0.1), (14.0, 0.8), (24.0, 0.45))  # (outer edge mm, level): CSF, skull, scalp, soft tissue
DISPLACEMENT_MM = 3.0
BIAS_STRENGTH = 0.12
NOISE_FRACTION = (0.015, 0.035)  # Rician sigma as a fraction of the white-matter level


def template_directory() -> Path:
    """The folder of nilearn's bundled data (found without importing nilearn, which is slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("nilearn is not installed; it provides the MNI152 template")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@dataclass(frozen=True)
class HeadModel:
    """The template on the output grid: intensities, tissue maps and lesion-centre candidates.

    ``t1``: (H, W, D) float32 head, white matter = 1; ``white_matter``/``gray_matter``: (H, W, D)
    float32 probabilities; ``tissue``: bool mask where lesions may lie; ``affine``: 4x4;
    ``spacing``: mm per voxel (3,); ``scale``: factor to ATLAS-like units; ``*_candidates``: flat
    indices of voxels a lesion centre may be drawn from.
    """

    t1: np.ndarray
    white_matter: np.ndarray
    gray_matter: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    spacing: np.ndarray
    scale: float
    white_matter_candidates: np.ndarray
    tissue_candidates: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (H, W, D)."""
        return tuple(self.t1.shape)

    @property
    def voxel_volume(self) -> float:
        """mm^3 per voxel."""
        return float(np.prod(self.spacing))


def _resample(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resamples a (H, W, D) volume onto ``shape`` with corner-aligned linear interpolation."""
    if tuple(volume.shape) == tuple(shape):
        return volume
    factors = np.array(volume.shape, dtype=float) / np.array(shape, dtype=float)
    # Anti-alias before shrinking; linear interpolation alone would alias the cortex.
    sigmas = np.where(factors > 1, 0.4 * factors, 0.0)
    smoothed = ndimage.gaussian_filter(volume, sigmas) if np.any(sigmas > 0) else volume
    axes = [np.linspace(0, old - 1, new, dtype=np.float32) for old, new in zip(volume.shape, shape)]
    coordinates = np.stack(np.meshgrid(*axes, indexing="ij"))
    return ndimage.map_coordinates(smoothed, coordinates, order=1, mode="nearest").astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_head_model(shape: tuple[int, int, int] | None = None) -> HeadModel:
    """Builds (once per process and shape) the template head on a (H, W, D) grid (default 1 mm)."""
    directory = template_directory()
    images = {}
    for name in ("t1", "wm", "gm"):
        path = directory / TEMPLATE_FILE.format(name)
        if not path.is_file():
            raise fail(path, "MNI152 template missing from the nilearn installation")
        images[name] = nib.load(path)
    affine = images["t1"].affine.copy()
    full_shape = images["t1"].shape
    shape = tuple(int(size) for size in (shape or full_shape))
    if len(shape) != 3 or min(shape) < 8:
        raise UserInputError(f"--shape {shape}: expected three sizes of at least 8")
    t1 = _resample(np.asarray(images["t1"].dataobj, dtype=np.float32), shape)
    white_matter = _resample(np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0, shape)
    gray_matter = _resample(np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0, shape)
    # Corner-aligned resampling: voxel 0 stays voxel 0, the last voxel stays the last voxel.
    step = (np.array(full_shape, dtype=float) - 1) / np.maximum(np.array(shape, dtype=float) - 1, 1)
    affine[:3, :3] = affine[:3, :3] @ np.diag(step)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))

    white_matter_level = float(np.median(t1[white_matter > 0.9])) if np.any(white_matter > 0.9) else float(t1.max())
    relative = t1 / white_matter_level
    # The template is brain-extracted (background exactly 0): build a head around it so the
    # whole-volume statistics look like ATLAS, whose scans keep skull and scalp.
    brain = ndimage.binary_fill_holes(t1 > 0.05 * white_matter_level)
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing).astype(np.float32)
    shell = np.zeros(shape, dtype=np.float32)
    inner = 0.0
    for outer, level in HEAD_LAYERS_MM:
        shell[(distance > inner) & (distance <= outer)] = level
        inner = outer
    shell = ndimage.gaussian_filter(shell, 1.0 / spacing)
    head = np.where(brain, relative, shell).astype(np.float32)

    tissue = (white_matter + gray_matter > 0.5) & brain
    scale = _atlas_scale(head)
    return HeadModel(
        t1=head,
        white_matter=white_matter,
        gray_matter=gray_matter,
        tissue=tissue,
        affine=affine,
        spacing=spacing,
        scale=scale,
        white_matter_candidates=np.flatnonzero((white_matter > 0.6) & tissue),
        tissue_candidates=np.flatnonzero(tissue),
    )


def _atlas_scale(head: np.ndarray) -> float:
    """Least-squares factor k so that k*mean and k*std are both close (relatively) to ATLAS's."""
    mean_ratio, std_ratio = float(head.mean()) / ATLAS_MEAN, float(head.std()) / ATLAS_STD
    return (mean_ratio + std_ratio) / (mean_ratio**2 + std_ratio**2)


def _smooth_field(rng: np.random.Generator, shape, spacing, n_terms: int, wavelengths_mm) -> np.ndarray:
    """A smooth (H, W, D) float32 field with unit-ish amplitude: sum of products of 1-D cosines.

    Products of 1-D waves are cheap to evaluate on a full grid (broadcasting, no 3-D filtering).
    """
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(n_terms):
        factors = []
        for axis, size in enumerate(shape):
            wavelength = rng.uniform(*wavelengths_mm) / spacing[axis]
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.cos(2 * np.pi * np.arange(size, dtype=np.float32) / wavelength + phase).astype(np.float32)
            factors.append(wave)
        amplitude = np.float32(rng.uniform(-1, 1))
        field += amplitude * factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    return field / np.float32(max(1.0, np.sqrt(n_terms / 3)))


def _box_around(center, half_size, shape) -> tuple[slice, slice, slice]:
    return tuple(slice(max(0, c - h), min(s, c + h + 1)) for c, h, s in zip(center, half_size, shape))


def _paint_blob(rng: np.random.Generator, model: HeadModel, center, volume_voxels: int) -> tuple[tuple, np.ndarray]:
    """An irregular lesion of about ``volume_voxels`` voxels around ``center``, inside tissue.

    Returns (box slices, bool mask of the box). The lesion is the top-V voxels of an ellipsoidal
    falloff plus smoothed noise, then its largest connected piece.
    """
    radius = (3.0 * volume_voxels / (4.0 * np.pi)) ** (1.0 / 3.0)
    axes_scale = rng.uniform(0.7, 1.4, size=3)
    axes_scale /= np.prod(axes_scale) ** (1.0 / 3.0)
    half_size = np.full(3, int(np.ceil(2.2 * radius * axes_scale.max())) + 2)
    box = _box_around(center, half_size, model.shape)
    grids = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) - c for b, c in zip(box, center)], indexing="ij")
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    offsets = np.stack(grids, axis=-1) @ rotation.astype(np.float32)
    distance = np.sqrt(((offsets / (radius * axes_scale).astype(np.float32)) ** 2).sum(axis=-1))
    noise = ndimage.gaussian_filter(rng.standard_normal(distance.shape).astype(np.float32), max(1.0, radius / 3))
    noise /= max(float(noise.std()), 1e-6)
    score = -distance + 0.35 * noise
    score[~model.tissue[box]] = -np.inf
    available = int(np.isfinite(score).sum())
    count = max(1, min(int(round(volume_voxels)), available))
    threshold = np.partition(score.ravel(), score.size - count)[score.size - count]
    blob = (score >= threshold) & np.isfinite(score)
    labels, n_labels = ndimage.label(blob)
    if n_labels > 1:
        sizes = np.bincount(labels.ravel())[1:]
        blob = labels == (1 + int(np.argmax(sizes)))
    return box, blob


def _pick_center(rng: np.random.Generator, model: HeadModel, candidates: np.ndarray) -> tuple[int, int, int]:
    flat = int(candidates[rng.integers(len(candidates))])
    return tuple(int(v) for v in np.unravel_index(flat, model.shape))


def _paint_lesions(rng: np.random.Generator, model: HeadModel, image: np.ndarray, index: int, seed: int,
                   extra_small_lesions: int) -> tuple[np.ndarray, list[int]]:
    """Step 1: lesions painted into ``image`` (in place) in template space, so the warp moves image
    and mask together; returns (lesion mask (H, W, D) bool, target voxel counts). The
    ``extra_small_lesions`` come from their own stream (seed, index, 1)."""
    lesion = np.zeros(model.shape, dtype=bool)
    n_satellites = int(rng.integers(0, MAX_SATELLITES + 1))
    volumes_mm3 = [float(np.exp(rng.uniform(*np.log(PRIMARY_VOLUME_MM3))))]
    volumes_mm3 += [float(np.exp(rng.uniform(*np.log(SATELLITE_VOLUME_MM3)))) for _ in range(n_satellites)]
    target_voxels = [max(1, int(round(volume / model.voxel_volume))) for volume in volumes_mm3]
    for number, voxels in enumerate(target_voxels):
        if number == 0 and rng.uniform() < 0.7:
            candidates = model.white_matter_candidates  # most strokes sit in white matter
        else:
            candidates = model.tissue_candidates
        center = _pick_center(rng, model, candidates)
        box, blob = _paint_blob(rng, model, center, voxels)
        lesion[box] |= blob
    _paint_extra_small_lesions(lesion, model, index, seed, extra_small_lesions)
    if lesion.any():
        # Work in the lesions' bounding box (plus room for the soft edge) to keep this cheap.
        box = ndimage.find_objects(lesion.astype(np.uint8))[0]
        box = tuple(slice(max(0, b.start - 4), min(s, b.stop + 4)) for b, s in zip(box, model.shape))
        local = lesion[box].astype(np.float32)
        alpha = np.clip(1.6 * ndimage.gaussian_filter(local, 0.7), 0.0, 1.0)
        texture = ndimage.gaussian_filter(rng.standard_normal(local.shape).astype(np.float32), 1.5)
        texture /= max(float(texture.std()), 1e-6)
        core = LESION_CORE_LEVEL * (1.0 + rng.uniform(0.0, 0.4)) * (1.0 + 0.2 * texture)
        image[box] = image[box] * (1.0 - alpha) + np.clip(core, 0.05, 0.7) * alpha
    return lesion, target_voxels


def _warp(rng: np.random.Generator, model: HeadModel, image: np.ndarray, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 2: a smooth warp of a few mm, applied to image and mask with the same coordinates."""
    displacement = [
        _smooth_field(rng, model.shape, model.spacing, 4, (60.0, 200.0)) * np.float32(DISPLACEMENT_MM / spacing)
        for spacing in model.spacing
    ]
    grid = np.meshgrid(*[np.arange(size, dtype=np.float32) for size in model.shape], indexing="ij", sparse=True)
    coordinates = [g + d for g, d in zip(grid, displacement)]
    image = ndimage.map_coordinates(image, coordinates, order=1, mode="nearest")
    if lesion.any():
        margin = int(np.ceil(DISPLACEMENT_MM / model.spacing.min())) + 2
        box = ndimage.find_objects(lesion.astype(np.uint8))[0]
        box = tuple(slice(max(0, b.start - margin), min(s, b.stop + margin)) for b, s in zip(box, model.shape))
        local_coordinates = [c[box] for c in coordinates]
        warped = ndimage.map_coordinates(lesion.astype(np.float32), local_coordinates, order=1, mode="constant")
        lesion = np.zeros(model.shape, dtype=bool)
        lesion[box] = warped >= 0.5
    del coordinates, displacement
    return image, lesion


def _acquire(rng: np.random.Generator, model: HeadModel, image: np.ndarray) -> np.ndarray:
    """Step 3: bias field, global scale and Rician noise, as a scanner adds them."""
    bias = np.exp(BIAS_STRENGTH * _smooth_field(rng, model.shape, model.spacing, 3, (150.0, 400.0)))
    scale = np.float32(model.scale * rng.uniform(0.9, 1.1))
    image = image * bias * scale
    sigma = np.float32(rng.uniform(*NOISE_FRACTION) * scale)
    real = image + sigma * rng.standard_normal(model.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(model.shape, dtype=np.float32)
    image = np.sqrt(real * real + imaginary * imaginary).astype(np.float32)
    return image


def generate_subject(index: int, seed: int = 0, shape: tuple[int, int, int] | None = None,
                     extra_small_lesions: int = 0) -> dict:
    """Generates subject ``index`` for ``seed`` on a (H, W, D) grid (default the full ATLAS grid).

    ``extra_small_lesions`` adds that many small lesions (:data:`TEST_SMALL_LESION_VOLUME_MM3`), placed
    from their own stream (seed, index, 1); the held-out subjects of :func:`write_synthetic_atlas` get them.

    Returns ``{"t1": (H, W, D) float32, "mask": (H, W, D) uint8 in {0, 1}, "affine": (4, 4),
    "lesion_volumes": list of target voxel counts}``. Same (index, seed, shape) -> same bytes.
    """
    model = load_head_model(None if shape is None else tuple(shape))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    image = model.t1.copy()
    lesion, target_voxels = _paint_lesions(rng, model, image, index, seed, extra_small_lesions)
    image, lesion = _warp(rng, model, image, lesion)
    image = _acquire(rng, model, image)
    return {
        "t1": image,
        "mask": lesion.astype(np.uint8),
        "affine": model.affine,
        "lesion_volumes": target_voxels,
    }


def _paint_extra_small_lesions(lesion: np.ndarray, model: HeadModel, index: int, seed: int, count: int) -> None:
    """Paints ``count`` small lesions into ``lesion`` (H, W, D) in place, from stream (seed, index, 1)."""
    if count <= 0:
        return
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    for _ in range(count):
        volume = float(np.exp(rng.uniform(*np.log(TEST_SMALL_LESION_VOLUME_MM3))))
        center = _pick_center(rng, model, model.tissue_candidates)
        box, blob = _paint_blob(rng, model, center, max(1, int(round(volume / model.voxel_volume))))
        lesion[box] |= blob


def subject_id(index: int, data_format: str = R12) -> str:
    """ID of synthetic subject ``index``: R1.2 cohorts c0003-c0011 like ATLAS, or ``sub-r001sNNN``."""
    if data_format == BIDS:
        return f"sub-r001s{index + 1:03d}"
    return f"c{3 + index % 9:04d}s{1 + index // 9:04d}t01"


def _save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(volume, affine)
    image.header.set_data_dtype(volume.dtype)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    with atomic_path(path) as temporary:
        nib.save(image, temporary)


def subject_files(output_dir: str | os.PathLike, index: int, data_format: str = R12) -> tuple[Path, list[Path]]:
    """(T1 path, mask paths) that :func:`write_subject` writes for subject ``index``.

    R1.2 subjects with ``index % 5 == 4`` get their mask split into two overlapping files
    (``_LesionSmooth_stx`` and ``_LesionSmooth_1_stx``) so the OR-merge of setup is exercised.
    """
    output_dir = Path(output_dir)
    name = subject_id(index, data_format)
    if data_format == BIDS:
        folder = output_dir / "Training" / "R001" / name / "ses-1" / "anat"
        stem = f"{name}_ses-1_space-MNI152NLin2009aSym"
        return folder / f"{stem}_T1w.nii.gz", [folder / f"{stem}_label-L_desc-T1lesion_mask.nii.gz"]
    folder = output_dir / name[:5] / name
    masks = [folder / f"{name}{ATLAS_MASK_SUFFIX}.nii.gz"]
    if index % 5 == 4:
        masks.append(folder / f"{name}_LesionSmooth_1_stx.nii.gz")
    return folder / f"{name}{ATLAS_T1_SUFFIX}.nii.gz", masks


def write_subject(output_dir: str | os.PathLike, index: int, seed: int = 0,
                  shape: tuple[int, int, int] | None = None, data_format: str = R12, extra_small_lesions: int = 0) -> dict:
    """Generates and writes subject ``index`` (atomic gzip NIfTI files); returns its summary dict."""
    subject = generate_subject(index, seed, shape, extra_small_lesions)
    scan_path, mask_paths = subject_files(output_dir, index, data_format)
    t1, mask, affine = subject["t1"], subject["mask"], subject["affine"]
    if len(mask_paths) == 2:
        # Two overlapping halves along the first axis: a sum would give 2 in the overlap, OR gives 1.
        xs = np.flatnonzero(mask.any(axis=(1, 2)))
        middle = int(np.median(xs)) if len(xs) else mask.shape[0] // 2
        first, second = np.zeros_like(mask), np.zeros_like(mask)
        first[: middle + 1] = mask[: middle + 1]
        second[max(0, middle - 1):] = mask[max(0, middle - 1):]
        parts = [first, second]
    else:
        parts = [mask]
    for path, part in zip(mask_paths, parts):
        _save_nifti(path, part, affine)
    # The scan goes last: a subject folder with a T1 is then always complete.
    _save_nifti(scan_path, t1, affine)
    _, n_components = label_components(mask > 0, 26)
    return {
        "subject": subject_id(index, data_format),
        "shape": list(t1.shape),
        "mean": float(t1.mean(dtype=np.float64)),
        "std": float(t1.std(dtype=np.float64)),
        "lesion_voxels": int(mask.sum()),
        "lesion_components": int(n_components),
        "target_lesion_voxels": subject["lesion_volumes"],
        "small_lesion_slices": int(len(small_lesion_slices(mask))),
        "mask_files": len(mask_paths),
    }


def _write_subject_task(arguments) -> dict:
    return write_subject(*arguments)


def make_splits(subjects: list[str], seed: int, test_fraction: float, n_folds: int) -> dict[str, dict[str, list[str]]]:
    """Seeded splits of ``subjects``: ``{"traintest": {...}, "<K>fold/fold_k": {...}}``.

    ``traintest`` holds ``round(n * test_fraction)`` test subjects (at least 1 when the fraction is
    positive and n >= 2); the K folds partition all subjects into validation parts, as the
    published ATLAS 6 folds do.
    """
    n = len(subjects)
    if not 0.0 <= test_fraction < 1.0:
        raise UserInputError(f"--test_fraction {test_fraction}: expected 0 <= fraction < 1")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    order = [subjects[i] for i in rng.permutation(n)]
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    splits = {"traintest": {"train": sorted(order[n_test:])}}
    if n_test:
        splits["traintest"]["test"] = sorted(order[:n_test])
    if n_folds:
        if n_folds < 2 or n_folds > n:
            raise UserInputError(f"--n_folds {n_folds}: expected 2 <= folds <= number of subjects ({n})")
        folds = np.array_split(np.array([subjects[i] for i in rng.permutation(n)]), n_folds)
        for number, validation in enumerate(folds, start=1):
            held_out = set(validation.tolist())
            splits[f"{n_folds}fold/fold_{number}"] = {
                "train": sorted(s for s in subjects if s not in held_out),
                "val": sorted(held_out),
            }
    return splits


def write_synthetic_atlas(output_dir: str | os.PathLike, n_subjects: int = 30, seed: int = 0,
                          shape: tuple[int, int, int] | None = None, n_workers: int = 1,
                          data_format: str = R12, test_fraction: float = 0.2, n_folds: int = 0,
                          progress=None) -> list[dict]:
    """Writes ``n_subjects`` synthetic subjects (and, for R1.2, ``<output_dir>/data_split``).

    ``shape``: (H, W, D) grid, default the full 197x233x189; ``progress``: called with each
    subject's summary as it completes (in index order). Returns the summaries.
    """
    if n_subjects < 1:
        raise UserInputError(f"--n_subjects {n_subjects}: expected at least 1")
    if data_format not in (R12, BIDS):
        raise UserInputError(f"--format {data_format}: expected {R12} or {BIDS}")
    output_dir = Path(output_dir)
    ids = [subject_id(index, data_format) for index in range(n_subjects)]
    # Validate the split arguments before spending minutes on volumes.
    splits = make_splits(ids, seed, test_fraction, n_folds) if data_format == R12 else {}
    shape = None if shape is None else tuple(int(size) for size in shape)
    # Built once here so forked workers inherit it instead of rebuilding it.
    load_head_model(shape)
    held_out = set(splits.get("traintest", {}).get("test", []))
    tasks = [(output_dir, index, seed, shape, data_format, TEST_SMALL_LESIONS if ids[index] in held_out else 0)
             for index in range(n_subjects)]
    summaries = []
    if n_workers <= 1:
        results = map(_write_subject_task, tasks)
        for summary in results:
            summaries.append(summary)
            if progress:
                progress(summary)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            try:
                for summary in pool.map(_write_subject_task, tasks):
                    summaries.append(summary)
                    if progress:
                        progress(summary)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    for name, split in splits.items():
        write_split(output_dir / "data_split" / name, split)
    write_json(output_dir / "synthetic_summary.json", {
        "seed": seed,
        "format": data_format,
        "shape": list(summaries[0]["shape"]),
        "subjects": summaries,
    })
    return summaries


def default_shape(downsample: float | None) -> tuple[int, int, int] | None:
    """Grid for ``--downsample F``: the ATLAS shape divided by F (rounded), or None for full size."""
    if downsample is None or downsample == 1:
        return None
    if downsample <= 0:
        raise UserInputError(f"--downsample {downsample}: expected a positive factor")
    return tuple(max(8, int(round(size / downsample))) for size in ATLAS_SHAPE)


__all__ = [
    "HeadModel",
    "default_shape",
    "generate_subject",
    "load_head_model",
    "make_splits",
    "subject_files",
    "subject_id",
    "template_directory",
    "write_subject",
    "write_synthetic_atlas",
]
