"""Boundary metrics of binary 3-D masks in millimetres: HD95, ASSD and NSD, computed by MONAI.

The distances come from MONAI's metric functions (``monai.metrics.compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_surface_dice``; MONAI needs only torch and numpy), run on
the masks cropped to the bounding box of both plus a margin, which gives the same numbers as the full
volume (distances do not depend on where the box sits) in a fraction of the time.

Definitions pinned here, because Hausdorff implementations disagree (Metrics Reloaded, Maier-Hein et al.
2024):

* **Surface**: the voxels of a mask that have a 6-connected neighbour outside it (``mask XOR
  binary_erosion(mask)``, with everything outside the volume counting as background).
* **Directed distances** from mask A to mask B: for each surface voxel of A, the Euclidean distance in mm
  (voxel indices scaled by ``spacing_mm`` per axis, so anisotropic voxels are handled) to the nearest
  surface voxel of B.
* **HD95** (``hd95_mm``): the *larger of the two directed 95th percentiles*,
  ``max(q95(d(pred -> gt)), q95(d(gt -> pred)))`` with linear interpolation between order statistics
  (``torch.quantile``). It is *not* the 95th percentile of the union of both distance sets.
* **ASSD** (``assd_mm``): the mean of the union of both directed distance sets (each surface voxel of
  either mask counts once).
* **NSD** (``nsd``) at tolerance tau mm: the fraction of the surface voxels of both masks that lie
  within tau of the other mask's surface, ``(#{d(pred->gt) <= tau} + #{d(gt->pred) <= tau}) /
  (#surface(pred) + #surface(gt))`` (voxel counts, not sub-voxel areas). The default tau is 2 mm.

Empty masks (MONAI itself gives inf or NaN and a warning there), the rule of this package:

* both masks empty: a perfect match, ``hd95_mm = assd_mm = 0`` and ``nsd = 1``;
* exactly one mask empty: no distance exists, all three are NaN and ``boundary_one_empty`` is True, so a
  summary (:func:`boundary_summary`) leaves that subject out of the means and counts it separately.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_TOLERANCE_MM = 2.0
# A surface voxel on the box's edge needs one background voxel beyond it for the erosion to see the
# same neighbourhood as in the full volume; beyond that the margin changes nothing.
BOUNDARY_BOX_MARGIN = 1
HD_PERCENTILE = 95.0
BOUNDARY_METRIC_KEYS = ("hd95_mm", "assd_mm", "nsd")
# (record key, display name) of the boundary table, in order.
BOUNDARY_METRICS = (
    ("hd95_mm", "HD95 (mm)"),
    ("assd_mm", "ASSD (mm)"),
    ("nsd", "NSD"),
)


def _check_spacing(spacing_mm: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Validates one positive finite voxel edge length per array axis and returns them as floats."""
    spacing = tuple(float(value) for value in spacing_mm)
    if len(spacing) != ndim or not all(math.isfinite(value) and value > 0 for value in spacing):
        raise ValueError(f"spacing_mm must hold {ndim} positive numbers, got {tuple(spacing_mm)}")
    return spacing


def union_bounding_box(gt: np.ndarray, pred: np.ndarray, margin: int = BOUNDARY_BOX_MARGIN) -> tuple[slice, ...]:
    """Slices of the smallest box holding every foreground voxel of ``gt`` or ``pred`` (same shape, any
    dimension), grown by ``margin`` voxels on each side and clipped to the array. Both masks must not be empty.
    """
    union = gt | pred
    box = []
    for axis in range(union.ndim):
        # Projecting onto one axis at a time keeps this at a few passes over the volume.
        other_axes = tuple(index for index in range(union.ndim) if index != axis)
        occupied = np.flatnonzero(union.any(axis=other_axes))
        if occupied.size == 0:
            raise ValueError("union_bounding_box needs at least one foreground voxel")
        box.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + margin + 1, union.shape[axis])))
    return tuple(box)


def _empty_rule(gt_any: bool, pred_any: bool) -> dict | None:
    """The stated result when a mask is empty (see the module docstring), or None when both have voxels."""
    if gt_any and pred_any:
        return None
    if not gt_any and not pred_any:
        return {"hd95_mm": 0.0, "assd_mm": 0.0, "nsd": 1.0, "boundary_one_empty": False}
    return {"hd95_mm": float("nan"), "assd_mm": float("nan"), "nsd": float("nan"), "boundary_one_empty": True}


def boundary_metrics(
    gt, pred, spacing_mm: Sequence[float], tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> dict:
    """HD95, ASSD (mm) and NSD at ``tolerance_mm`` of binary masks ``gt``/``pred`` of equal shape (X, Y, Z).

    ``spacing_mm``: voxel edge length per array axis (3,). Returns dict(hd95_mm, assd_mm, nsd,
    boundary_one_empty, nsd_tolerance_mm), with the empty-mask rule of the module docstring.
    """
    from spinseg.evaluation.metrics import check_binary_pair

    gt, pred = check_binary_pair(gt, pred)
    spacing = _check_spacing(spacing_mm, gt.ndim)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    result = _empty_rule(bool(gt.any()), bool(pred.any()))
    if result is None:
        box = union_bounding_box(gt, pred)
        result = _monai_boundary_metrics(gt[box], pred[box], spacing, float(tolerance_mm))
    result["nsd_tolerance_mm"] = float(tolerance_mm)
    return result


def _monai_boundary_metrics(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float) -> dict:
    """MONAI's three metric functions on two non-empty bool masks (X, Y, Z), as (1, 1, X, Y, Z) tensors."""
    import warnings

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    # include_background=True: the single channel is the lesion class itself, not a background channel.
    gt_tensor = torch.from_numpy(gt)[None, None]
    pred_tensor = torch.from_numpy(pred)[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own metric functions still pass internally.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        hd95 = compute_hausdorff_distance(pred_tensor, gt_tensor, include_background=True, percentile=HD_PERCENTILE, spacing=spacing)
        assd = compute_average_surface_distance(pred_tensor, gt_tensor, include_background=True, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(pred_tensor.float(), gt_tensor.float(), [tolerance_mm], include_background=True, spacing=spacing)
    return {"hd95_mm": float(hd95.item()), "assd_mm": float(assd.item()), "nsd": float(nsd.item()), "boundary_one_empty": False}


def hd95(gt, pred, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (max of the two directed 95th percentiles); see the module."""
    return boundary_metrics(gt, pred, spacing_mm)["hd95_mm"]


def average_symmetric_surface_distance(gt, pred, spacing_mm: Sequence[float]) -> float:
    """ASSD in mm: mean over the surface voxels of both masks of the distance to the other surface."""
    return boundary_metrics(gt, pred, spacing_mm)["assd_mm"]


def normalized_surface_dice(gt, pred, spacing_mm: Sequence[float], tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> float:
    """NSD: fraction of both surfaces within ``tolerance_mm`` of the other surface; see the module."""
    return boundary_metrics(gt, pred, spacing_mm, tolerance_mm)["nsd"]


def boundary_summary(records: Sequence[Mapping]) -> list[dict]:
    """Mean ± std (ddof=0) of each boundary metric over subjects whose value is defined.

    Subjects with exactly one empty mask (NaN by the empty rule) are left out of the means and counted in
    ``one_empty``. Returns one dict per metric: key, metric, mean, std, subjects (used), one_empty.
    """
    records = list(records)
    if not records:
        raise ValueError("no subject records given")
    rows = []
    for key, name in BOUNDARY_METRICS:
        values = np.array([float(record[key]) for record in records], dtype=np.float64)
        defined = values[~np.isnan(values)]
        rows.append({
            "key": key,
            "metric": name,
            "mean": float(defined.mean()) if defined.size else float("nan"),
            "std": float(defined.std()) if defined.size else float("nan"),
            "subjects": int(defined.size),
            "one_empty": int(sum(bool(record.get("boundary_one_empty", False)) for record in records)),
        })
    return rows


def isotropic_spacing_from_voxel_volume(voxel_volume_ml: float, ndim: int = 3) -> tuple[float, ...]:
    """Edge length (mm) of a cubic voxel of ``voxel_volume_ml`` (0.001 ml -> 1 mm), repeated ``ndim`` times.

    For inputs without a header (the evaluator's .npy volumes), whose only size information is the voxel volume.
    """
    cubic_mm = float(voxel_volume_ml) * 1000.0
    # np.cbrt is exact for perfect cubes (64 -> 4.0), where ``** (1 / 3)`` gives 3.9999999999999996.
    edge = float(np.cbrt(cubic_mm)) if ndim == 3 else cubic_mm ** (1.0 / ndim)
    return (edge,) * ndim
