"""Segment your own T1 scans: ``python -m spinseg.predict --model spin --checkpoint CKPT --input scan.nii.gz --output OUT``.

The models were trained on ATLAS R1.2: T1 volumes registered to MNI152 2009 (197 x 233 x 189
voxels of 1 mm, the template's affine), sliced along the last axis. Each input scan is therefore

1. read with nibabel (any 3-D NIfTI; a 4-D one whose last dimension is 1 is squeezed and the
   outputs keep its (X, Y, Z, 1) shape),
2. resampled (trilinear, in world coordinates, which also handles orientation and axis order)
   onto the MNI template grid -- skipped when it is already on it,
3. segmented slice by slice with the 2.5-D model (:func:`spinseg.inference.predictor.predict_volume`
   over a model from :func:`~spinseg.inference.predictor.prepare_for_inference`: batch norm folded,
   channels-last; every slice is run, so the probabilities equal the plain path's within float rounding),
4. its probabilities resampled (trilinear) back onto the INPUT's grid and thresholded there,

so the mask has exactly the input's shape, affine and spatial header and overlays the scan in any
viewer. This module does that geometry for one scan (:func:`predict_scan`, used when no registration is
asked for: a scan that is not in MNI space is still processed, resampled in world coordinates, with a
one-line warning), reads and checks scans, and guards the output folder. The run itself, with
``--register``, the intensity check, the per-lesion table, the QC picture and whole studies, is
:func:`spinseg.inference.study.run_study` over :func:`spinseg.inference.native.predict_native`; the files
each scan gets are listed in docs/predict.md.
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from spinseg.constants import ATLAS_SHAPE
from spinseg.errors import fail
from spinseg.inference.predictor import InferenceOptions, predict_volume
from spinseg.io.budgets import check_nifti_header, check_output_folder
from spinseg.io.files import remove_stale_temporaries
from spinseg.lesions import ComponentVoxels, label_components
from spinseg.recipes.preprocessing import PreprocessingFlags

# The ATLAS R1.2 / MNI152 2009 grid, used when nilearn's copy of the template cannot be read.
TEMPLATE_FALLBACK_AFFINE = np.array(
    [[1.0, 0.0, 0.0, -98.0], [0.0, 1.0, 0.0, -134.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Beyond these an input does not look MNI-registered (world extent/centre in mm, voxel size ratio).
MNI_TOLERANCE_MM = 20.0
VOXEL_SIZE_RATIO = 1.6
NIFTI_SUFFIXES = (".nii.gz", ".nii")
OUTPUT_SUFFIXES = ("_lesion_mask", "_lesion_prob")  # our own outputs, skipped when a folder is scanned


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (X, Y, Z) and the 4x4 voxel-to-world (mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def matches(self, other: "Grid", atol: float = 1e-3) -> bool:
        """True when both grids sample the same points (same shape, affine within ``atol`` mm)."""
        return tuple(self.shape) == tuple(other.shape) and np.allclose(self.affine, other.affine, atol=atol)


@functools.lru_cache(maxsize=1)
def template_grid() -> Grid:
    """The MNI152 2009 grid of the training data (197, 233, 189) at 1 mm, read from nilearn's template header."""
    try:
        import nilearn

        header_image = nib.load(Path(nilearn.__file__).parent / "datasets" / "data" / TEMPLATE_FILE)
        return Grid(tuple(int(n) for n in header_image.shape[:3]), np.asarray(header_image.affine, dtype=float))
    except (ImportError, OSError, nib.filebasedimages.ImageFileError):
        # Same values as the file; nilearn only moves the file around between versions.
        return Grid(ATLAS_SHAPE, TEMPLATE_FALLBACK_AFFINE.copy())


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (3,) from the columns of a 4x4 affine."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def world_bounds(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """World-space (mm) bounding box of the voxel centres: (minimum (3,), maximum (3,))."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.shape], indexing="ij")).reshape(3, -1)
    world = grid.affine[:3, :3] @ corners + grid.affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def registration_warnings(grid: Grid, template: Grid | None = None) -> list[str]:
    """Reasons why ``grid`` does not look registered to the MNI template ([] when it does).

    Compares, in world coordinates (so orientation and axis order do not matter), the bounding
    box and the centre of the two grids (> 20 mm apart) and the voxel sizes (over 1.6x off).
    """
    template = template or template_grid()
    low, high = world_bounds(grid)
    template_low, template_high = world_bounds(template)
    reasons = []
    box_offset = float(max(np.abs(low - template_low).max(), np.abs(high - template_high).max()))
    if box_offset > MNI_TOLERANCE_MM:
        reasons.append(f"world bounding box {box_offset:.0f} mm from the template's")
    centre_offset = float(np.linalg.norm((low + high) / 2 - (template_low + template_high) / 2))
    if centre_offset > MNI_TOLERANCE_MM:
        reasons.append(f"centre {centre_offset:.0f} mm from the template's")
    sizes, template_sizes = voxel_sizes(grid.affine), voxel_sizes(template.affine)
    ratios = sizes / template_sizes
    if np.any(ratios > VOXEL_SIZE_RATIO) or np.any(ratios < 1 / VOXEL_SIZE_RATIO):
        reasons.append(f"voxel size {'x'.join(f'{size:.2g}' for size in sizes)} mm")
    return reasons


def scan_name(path: Path) -> str:
    """File name without ``.nii.gz`` / ``.nii``: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_nifti_path(path: Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def load_scan(path: str | os.PathLike) -> nib.Nifti1Image:
    """Opens a NIfTI file (header only; the voxels are read by :func:`scan_data`).

    A file that is not NIfTI (e.g. text named ``.nii.gz``) or not gzip raises a one-line error.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(path, "input not found")
    try:
        image = nib.load(path)
    except Exception as error:  # noqa: BLE001 - any failure of nibabel's parser is the file's fault
        raise fail(path, f"not a readable NIfTI image ({describe_read_error(error)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise fail(path, f"not a NIfTI image ({type(image).__name__})")
    check_nifti_header(path, image)  # budget and complex check before any voxel is read
    return image


def describe_read_error(error: BaseException) -> str:
    """A short reason for a failed read: a truncated gzip says so rather than "EOFError"."""
    if isinstance(error, EOFError) or "end-of-stream" in str(error):
        return "truncated or incomplete gzip file"
    if isinstance(error, (gzip.BadGzipFile, zlib.error)):
        return "corrupt gzip data"
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def scan_data(image: nib.Nifti1Image, name: str | os.PathLike = "input") -> np.ndarray:
    """The voxels of a T1 image as float32 (X, Y, Z), checked to be usable.

    A 4-D image whose last dimension is 1 is squeezed to 3-D. Other shapes, unreadable or
    truncated data, NaN/Inf voxels and empty (constant) images raise one-line errors naming ``name``.
    """
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise fail(name, f"{len(image.shape)}-D image of shape {tuple(image.shape)}; give one 3-D T1 volume")
    if min(shape) < 1:
        raise fail(name, f"image of shape {tuple(image.shape)} holds no voxels")
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-6:
        raise fail(name, "the header's voxel-to-world affine is singular or not finite")
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as error:  # noqa: BLE001 - any decoding failure is the file's fault
        raise fail(name, f"cannot read the voxels ({describe_read_error(error)})") from None
    finite = np.isfinite(data)
    if not finite.all():
        raise fail(name, f"{int((~finite).sum())} voxels are NaN or Inf")
    if data.max() == data.min():
        raise fail(name, f"empty image: every voxel is {float(data.flat[0]):g}")
    return data


def output_image(data: np.ndarray, reference: nib.Nifti1Image, description: str) -> nib.Nifti1Image:
    """``data`` (input's shape) as a NIfTI with the reference's affine and spatial header.

    Only the data type, the intensity scaling (reset: values are stored as they are), the display
    range and the description change, so viewers overlay it on the reference exactly.
    """
    header = reference.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    header["cal_min"], header["cal_max"] = (0.0, 1.0)
    header["descrip"] = description.encode()[:79]
    image_class = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
    return image_class(data, reference.affine, header=header)


def lesion_statistics(mask: np.ndarray, affine: np.ndarray) -> dict:
    """Volume and 26-connected lesions of a 3-D 0/1 mask (X, Y, Z) with voxel sizes from ``affine``.

    Returns lesion voxel count and ml, and per lesion (largest first) its voxels, ml, centroid
    in voxel indices and in world mm.
    """
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    # 26-connectivity: voxels touching by a face, an edge or a corner belong to the same lesion.
    labels, count = label_components(mask > 0, 26)
    components = ComponentVoxels(labels, count)
    sizes, centroids = components.sizes, components.centroids()
    lesions = []
    for size, centroid in sorted(zip(sizes.tolist(), centroids), key=lambda item: -item[0]):
        world = affine[:3, :3] @ np.asarray(centroid) + affine[:3, 3]
        lesions.append(
            {
                "voxels": int(size),
                "volume_ml": round(size * voxel_ml, 6),
                "centroid_voxel": [round(float(value), 2) for value in centroid],
                "centroid_mm": [round(float(value), 2) for value in world],
            }
        )
    total = int(sizes.sum())
    return {
        "lesion_voxel_count": total,
        "lesion_volume_ml": round(total * voxel_ml, 6),
        "voxel_volume_ml": round(voxel_ml, 9),
        "n_lesions": int(count),
        "connectivity": 26,
        "lesions": lesions,
    }


def resample_linear(volume: np.ndarray, affine: np.ndarray, target: Grid) -> np.ndarray:
    """(H, W, D) ``volume`` on ``affine`` -> float32 volume on ``target``'s grid.

    Trilinear (order 1) in world coordinates; outside the source's field of view is 0 (background
    for scans, probability 0 for predictions).
    """
    resampled = resample_from_to(nib.Nifti1Image(volume, affine), (target.shape, target.affine), order=1, mode="constant", cval=0.0)
    return np.asarray(resampled.dataobj, dtype=np.float32)


def predict_scan(
    model,
    image: nib.Nifti1Image,
    options: InferenceOptions,
    threshold: float = 0.5,
    name: str | os.PathLike = "input",
    template: Grid | None = None,
    warn=None,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    """Segments one T1 image of any grid: returns (mask image, probability image, report dict).

    ``image``: a nibabel 3-D image (or 4-D with last dimension 1) of any orientation and voxel
    size. It is resampled onto ``template`` (default: the MNI grid of the training data,
    197 x 233 x 189 at 1 mm), segmented by the 2.5-D ``model`` (B, n_chunk, H, W) -> logits
    (B, 1, H, W), and the probabilities are resampled back onto the image's grid. The mask
    (uint8 0/1, ``> threshold``) and probabilities (float32 in [0, 1]) have exactly the image's
    shape and affine. ``options`` say how the model runs (its ``skip_background`` is ignored). ``warn(message)`` is called once when the image does not look MNI-registered.
    """
    template = template or template_grid()
    data = scan_data(image, name)
    grid = Grid(data.shape, np.asarray(image.affine, dtype=float))
    reasons = registration_warnings(grid, template)
    if reasons and warn is not None:
        warn(f"{name}: does not look registered to MNI152 ({'; '.join(reasons)}); the models were trained on "
             "MNI-registered scans, so register it first for reliable results (processing it anyway)")
    on_template = grid.matches(template)
    if on_template:
        template_volume = data
    else:
        template_volume = resample_linear(data, grid.affine, template)
    # Every slice is run (no background skipping): the probabilities, not only a 0.5 mask, are
    # resampled and thresholded at the user's threshold, so all of them must be the network's.
    template_probabilities, _ = predict_volume(model, template_volume, replace(options, skip_background=False))
    if on_template:
        probabilities = template_probabilities
    else:
        probabilities = resample_linear(template_probabilities, template.affine, grid)
    probabilities = np.clip(probabilities, 0.0, 1.0).astype(np.float32)
    mask = (probabilities > threshold).astype(np.uint8)
    report = {
        **input_geometry(image, grid, template),
        "resampled_to_template": not on_template,
        "mni_warning": bool(reasons),
        "mni_warning_reasons": reasons,
        "threshold": float(threshold),
        "test_time_flip": bool(options.test_time_flip),
        "n_chunk": int(options.n_chunk),
        **lesion_statistics(mask, grid.affine),
    }
    mask_image = output_image(mask.reshape(image.shape), image, "spinseg lesion mask")
    prob_image = output_image(probabilities.reshape(image.shape), image, "spinseg lesion probability")
    return mask_image, prob_image, report


def input_geometry(image: nib.Nifti1Image, grid: Grid, template: Grid) -> dict:
    """The report's description of the input grid and the template it was segmented on."""
    return {
        "input_shape": [int(n) for n in image.shape],
        "input_affine": np.round(grid.affine, 6).tolist(),
        "input_voxel_size_mm": [round(float(size), 6) for size in voxel_sizes(grid.affine)],
        "image_voxel_count": int(np.prod(image.shape)),
        "template_shape": list(template.shape),
    }


def make_readable(path: Path) -> None:
    """Gives a temporary file the permissions a normally created file gets (mkstemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_predict_model(checkpoint: str, flags: PreprocessingFlags):
    """Loads the model to predict with and what it needs around it: (model, Preprocessing).

    The seam tests replace to inject a model. Model, config, stacked slices, normalisation and
    threshold come from the flags given, else the checkpoint (ours record them), else the recipe
    of the model (the authors' checkpoints: SPiN 5 slices, U-Net 1, ...). The network's input
    width must equal the slices.
    """
    from spinseg.recipes.preprocessing import load_with_preprocessing

    model, preprocessing = load_with_preprocessing(checkpoint, flags)
    width = int(getattr(model, "in_channels", preprocessing.n_chunk))
    if width != preprocessing.n_chunk:
        raise fail(checkpoint, f"model {preprocessing.model_name!r} takes {width} stacked slices, not --n_chunk {preprocessing.n_chunk}")
    return model, preprocessing


# ---------------------------------------------------------------------------------------------
# predict never clobbers a file it did not create in this run, nor any of its inputs.


def check_planned_outputs(inputs: list[Path], planned: list[Path], output_dir: Path, overwrite: bool, bytes_needed: int) -> None:
    """Refuses, before the first forward pass, a run that would write over one of its inputs, over an
    existing file (without ``overwrite``), or into a folder that is not writable or lacks room.

    Temporaries left by a predict killed mid-write (hidden, never trusted) are removed first.
    """
    resolved_inputs = {Path(path).resolve(): path for path in inputs}
    for target in planned:
        if target.resolve() in resolved_inputs:
            raise fail(target, "is one of the inputs; predict never writes over its inputs (choose another --output)")
    existing = [target for target in planned if target.exists() or target.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise fail(existing[0], f"exists{more}; predict does not replace files it did not write in this run "
                                "(give --overwrite to replace them, or another --output)")
    check_output_folder(output_dir, bytes_needed, "--output")
    remove_stale_temporaries(planned)


def estimated_output_bytes(path: Path, save_probability: bool) -> int:
    """A generous estimate of one scan's outputs: uncompressed mask (+ float32 probabilities), QC and report."""
    try:
        voxels = int(np.prod(nib.load(path).header.get_data_shape()[:3]))
    except Exception:  # noqa: BLE001 - an unreadable scan fails later with its own line; count it as small
        voxels = 0
    return voxels * (5 if save_probability else 1) + 2**20
