"""Per-lesion report of a predicted mask: ``<name>_lesions.csv`` and zoomed QC crops.

One row per 26-connected lesion of the mask on the scan's own grid, largest first (columns in
``LESION_COLUMNS``, documented in docs/predict.md): its size in voxels and ml, centroid in the
scan's world mm and in MNI mm, the evaluator's size bin, the mean and maximum probability over its
voxels and, with ``--test_time_flip``, the fraction of its voxels that both passes (plain and
flipped) put above the threshold on their own -- so small candidates can be ranked by confidence.
"""
from __future__ import annotations

import csv
from collections.abc import Callable

import numpy as np

from spinseg.constants import DEFAULT_SIZE_BINS
from spinseg.lesions import ComponentVoxels, label_components

LESION_COLUMNS = (
    "lesion_id", "voxels", "volume_ml",
    "centroid_scan_x_mm", "centroid_scan_y_mm", "centroid_scan_z_mm",
    "centroid_mni_x_mm", "centroid_mni_y_mm", "centroid_mni_z_mm",
    "size_bin", "mean_probability", "max_probability", "both_passes_fraction",
)
CROP_HALF_WIDTH_MM = 20.0


def size_bin_label(volume_mm3: float, bins=DEFAULT_SIZE_BINS) -> str:
    """The evaluator's size bin of a lesion of ``volume_mm3`` (its bins count 1 mm^3 ATLAS voxels)."""
    for upper, lower in zip(bins, (0, *bins)):
        if volume_mm3 <= upper:
            return f"<={upper}" if lower == 0 else f"{lower + 1}-{upper}"
    return f">{bins[-1]}"


def lesion_table(
    mask: np.ndarray, probabilities: np.ndarray, affine: np.ndarray,
    scan_to_mni: Callable[[np.ndarray], np.ndarray] | None = None, both_passes: np.ndarray | None = None,
) -> list[dict]:
    """Rows of ``<name>_lesions.csv`` for a (X, Y, Z) 0/1 mask and its (X, Y, Z) probabilities.

    ``affine``: the scan's 4x4 voxel -> world mm; ``scan_to_mni``: (N, 3) scan mm -> (N, 3) MNI mm
    (None: the scan is taken to be in MNI space already); ``both_passes``: (X, Y, Z) bool, voxels
    above threshold in both test-time-flip passes (None: no such column value).
    """
    labels, count = label_components(mask > 0, 26)
    if count == 0:
        return []
    components = ComponentVoxels(labels, count)
    voxels = components.sizes
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(affine)[:3, :3])))
    centroids = components.centroids()
    scan_mm = centroids @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    mni_mm = scan_to_mni(scan_mm) if scan_to_mni is not None else scan_mm
    means = components.means(probabilities)
    maxima = components.maxima(probabilities)
    agreement = components.means(both_passes[components.indices].astype(np.float32)) if both_passes is not None else None
    rows = []
    for rank, position in enumerate(np.argsort(-voxels, kind="stable"), start=1):
        row = {"lesion_id": rank, "voxels": int(voxels[position]),
               "volume_ml": round(voxels[position] * voxel_mm3 / 1000.0, 6)}
        row.update({f"centroid_scan_{axis}_mm": round(float(value), 2) for axis, value in zip("xyz", scan_mm[position])})
        row.update({f"centroid_mni_{axis}_mm": round(float(value), 2) for axis, value in zip("xyz", mni_mm[position])})
        row["size_bin"] = size_bin_label(voxels[position] * voxel_mm3)
        row["mean_probability"] = round(float(means[position]), 4)
        row["max_probability"] = round(float(maxima[position]), 4)
        row["both_passes_fraction"] = "" if agreement is None else round(float(agreement[position]), 4)
        row["_centroid_voxel"] = centroids[position]  # for the QC crops; not written
        rows.append(row)
    return rows


def write_lesion_csv(rows: list[dict], path) -> None:
    """Writes the rows (header only when there is no lesion) to ``path`` (the caller makes it atomic)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LESION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def lesion_crops(scan_ras: np.ndarray, mask_ras: np.ndarray, affine_ras: np.ndarray, rows: list[dict],
                 to_ras_voxel: Callable[[np.ndarray], np.ndarray], limit: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Zoomed axial crops (scan (h, w), mask (h, w), title) of the ``limit`` largest lesions.

    ``scan_ras``/``mask_ras``: (X, Y, Z) in closest-RAS voxel order; ``to_ras_voxel`` maps a
    centroid in the written grid's voxels (3,) to that order's voxels.
    """
    spacing = np.sqrt((np.asarray(affine_ras)[:3, :3] ** 2).sum(axis=0))
    half = np.maximum(np.round(CROP_HALF_WIDTH_MM / spacing[:2]).astype(int), 4)
    crops = []
    for row in rows[:limit]:
        centre = np.clip(np.round(to_ras_voxel(row["_centroid_voxel"])).astype(int), 0, np.asarray(scan_ras.shape) - 1)
        x_slice = slice(max(0, centre[0] - half[0]), centre[0] + half[0] + 1)
        y_slice = slice(max(0, centre[1] - half[1]), centre[1] + half[1] + 1)
        title = f"#{row['lesion_id']}: {row['volume_ml']:.3g} ml, p={row['mean_probability']:.2f}"
        crops.append((scan_ras[x_slice, y_slice, centre[2]], mask_ras[x_slice, y_slice, centre[2]], title))
    return crops
