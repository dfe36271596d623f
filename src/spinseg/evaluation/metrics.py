"""Segmentation metrics on binary masks: the release's voxel metrics (paper Tables 2/3) and lesion-level ones.

Every function takes a ground truth ``gt`` and a prediction ``pred`` of the same shape, as bool arrays or
arrays of 0/1 numbers; any other value raises :class:`ValueError` (a probability map passed by mistake
should fail loudly rather than be silently thresholded).

Conventions, made explicit because the field disagrees on them:

* A metric whose denominator is zero (e.g. Dice with both masks empty) returns ``empty_score``. The SPiN
  release uses 0 (:data:`RELEASE_EMPTY_SCORE`); the ATLAS v2.0 and ISLES'22 challenges use 1 for Dice
  (:data:`CHALLENGE_EMPTY_SCORE`); nnU-Net and MONAI use NaN and exclude the case
  (:data:`EXCLUDED_EMPTY_SCORE`, pair it with ``mean_over_subjects(..., ignore_nan=True)``).
* Table 2 averages per-subject 3-D metrics over subjects (:func:`mean_over_subjects`); Table 3 pools the
  voxel counts of every small-lesion slice of every subject and computes each metric once
  (:func:`pooled_release_metrics`, :func:`pooled_small_lesion_metrics`).
* Lesions are connected components; ISLES'22 uses 26-connectivity and millilitres, the ATLAS v2.0
  challenge 6-connectivity and voxels (pass ``voxel_volume_ml=1.0`` to get voxel counts).
* Boundary metrics (HD95, ASSD, NSD in mm, computed by MONAI) live in
  :mod:`spinseg.evaluation.boundary_metrics` and are re-exported here; their definitions and empty-mask
  rule (both empty: distance 0, NSD 1; one empty: NaN, counted separately) are in that module's docstring.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from spinseg.constants import DEFAULT_SIZE_BINS, SMALL_LESION_MAX_PIXELS
from spinseg.lesions import (  # connectivity helpers are part of the public spinseg.metrics API
    component_sizes,
    connectivity_structure,
    full_connectivity,
    label_components,
    label_in_slice_components,
)

RELEASE_EMPTY_SCORE = 0.0
CHALLENGE_EMPTY_SCORE = 1.0
EXCLUDED_EMPTY_SCORE = float("nan")

# DEFAULT_SIZE_BINS (lesion-size bins, upper edges in voxels) lives in spinseg.constants and is re-exported here.
# ATLAS R1.2 is 1 mm isotropic: one voxel is 0.001 ml.
DEFAULT_VOXEL_VOLUME_ML = 0.001

RELEASE_METRIC_KEYS = ("dice", "iou", "precision", "recall")


class ConfusionCounts(NamedTuple):
    """Voxel counts of a binary comparison; unpacks as ``(tp, fp, fn, tn)``."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int


class LesionCounts(NamedTuple):
    """Lesion-level counts: gt lesions hit (TP) or missed (FN), predicted components touching no gt (FP)."""

    true_positives: int
    false_positives: int
    false_negatives: int
    gt_lesions: int
    pred_lesions: int


class SmallLesionCounts(NamedTuple):
    """Voxel counts pooled over a subject's small-lesion slices, and how many slices qualified."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    slices: int


# --------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------


def _as_binary(array, name: str) -> np.ndarray:
    """Returns ``array`` as a bool ndarray, raising ValueError when it holds values other than 0/1."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name} must be a bool or numeric 0/1 array, got dtype {array.dtype}")
    # NaN fails both comparisons, so it is rejected here too.
    if array.size and not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{name} must be binary (bool or 0/1 values); got other values")
    return array != 0


def check_binary_pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    """Validates a (gt, pred) pair (bool or 0/1, equal shapes) and returns both as bool arrays."""
    gt = _as_binary(gt, "gt")
    pred = _as_binary(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} != pred shape {pred.shape}")
    return gt, pred


def _ratio(numerator: float, denominator: float, empty_score: float) -> float:
    """numerator / denominator, or ``empty_score`` when the denominator is zero."""
    if denominator == 0:
        return float(empty_score)
    return float(numerator) / float(denominator)


# --------------------------------------------------------------------------------------------------
# Voxel (release) metrics
# --------------------------------------------------------------------------------------------------


def confusion_counts(gt, pred) -> ConfusionCounts:
    """Voxel counts (tp, fp, fn, tn) of binary ``gt`` and ``pred`` of any equal shape."""
    gt, pred = check_binary_pair(gt, pred)
    true_positives = int(np.count_nonzero(gt & pred))
    false_positives = int(np.count_nonzero(pred)) - true_positives
    false_negatives = int(np.count_nonzero(gt)) - true_positives
    true_negatives = gt.size - true_positives - false_positives - false_negatives
    return ConfusionCounts(true_positives, false_positives, false_negatives, int(true_negatives))


def metrics_from_counts(
    true_positives: int, false_positives: int, false_negatives: int, empty_score: float = RELEASE_EMPTY_SCORE
) -> dict[str, float]:
    """Dice, IoU, precision and recall from voxel counts; a zero denominator gives ``empty_score``."""
    return {
        "dice": _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives, empty_score),
        "iou": _ratio(true_positives, true_positives + false_positives + false_negatives, empty_score),
        "precision": _ratio(true_positives, true_positives + false_positives, empty_score),
        "recall": _ratio(true_positives, true_positives + false_negatives, empty_score),
    }


def dice_score(gt, pred, empty_score: float = RELEASE_EMPTY_SCORE) -> float:
    """Dice 2|G∩P| / (|G|+|P|) of equal-shape binary arrays; ``empty_score`` when both are empty."""
    tp, fp, fn, _ = confusion_counts(gt, pred)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty_score)


def dice_score_challenge(gt, pred) -> float:
    """Dice under the ATLAS v2.0 / ISLES'22 convention: 1.0 when both masks are empty."""
    return dice_score(gt, pred, empty_score=CHALLENGE_EMPTY_SCORE)


def iou(gt, pred, empty_score: float = RELEASE_EMPTY_SCORE) -> float:
    """Intersection over union |G∩P| / |G∪P|; ``empty_score`` when both are empty."""
    tp, fp, fn, _ = confusion_counts(gt, pred)
    return _ratio(tp, tp + fp + fn, empty_score)


def precision(gt, pred, empty_score: float = RELEASE_EMPTY_SCORE) -> float:
    """Precision |G∩P| / |P|; ``empty_score`` when the prediction is empty."""
    tp, fp, _, _ = confusion_counts(gt, pred)
    return _ratio(tp, tp + fp, empty_score)


def recall(gt, pred, empty_score: float = RELEASE_EMPTY_SCORE) -> float:
    """Recall (sensitivity) |G∩P| / |G|; ``empty_score`` when the ground truth is empty."""
    tp, _, fn, _ = confusion_counts(gt, pred)
    return _ratio(tp, tp + fn, empty_score)


def release_metrics(gt, pred, empty_score: float = RELEASE_EMPTY_SCORE) -> dict[str, float]:
    """The paper's Table 2 metrics of one subject: dict(dice, iou, precision, recall)."""
    tp, fp, fn, _ = confusion_counts(gt, pred)
    return metrics_from_counts(tp, fp, fn, empty_score)


def pooled_release_metrics(
    gts: Iterable, preds: Iterable, empty_score: float = RELEASE_EMPTY_SCORE
) -> dict[str, float]:
    """Table 3 style: sums tp/fp/fn over all (gt, pred) pairs, then computes each metric once.

    ``gts`` and ``preds`` are equally long iterables (generators are fine, so volumes need not all be in
    memory); pairs may differ in shape from one another but each gt must match its pred.
    """
    totals = np.zeros(3, dtype=np.int64)
    pairs = 0
    try:
        for gt, pred in zip(gts, preds, strict=True):
            tp, fp, fn, _ = confusion_counts(gt, pred)
            totals += (tp, fp, fn)
            pairs += 1
    except ValueError as error:
        if "zip()" in str(error):
            raise ValueError("gts and preds have different lengths") from None
        raise
    if pairs == 0:
        raise ValueError("pooled_release_metrics needs at least one (gt, pred) pair")
    return metrics_from_counts(int(totals[0]), int(totals[1]), int(totals[2]), empty_score)


def mean_over_subjects(
    records: Sequence[Mapping], keys: Sequence[str] | None = None, ignore_nan: bool = False
) -> dict[str, float]:
    """Mean of each numeric entry over per-subject dicts (Table 2 style).

    ``keys`` defaults to the numeric (non-bool) keys present in every record. With ``ignore_nan`` NaN values
    (the excluded-empty convention) are left out; a key that is NaN for every subject then averages to NaN.
    """
    records = list(records)
    if not records:
        raise ValueError("mean_over_subjects needs at least one record")
    if keys is None:
        keys = [
            key
            for key, value in records[0].items()
            if _is_number(value) and all(key in record and _is_number(record[key]) for record in records)
        ]
    means: dict[str, float] = {}
    for key in keys:
        values = np.array([float(record[key]) for record in records], dtype=np.float64)
        if ignore_nan:
            values = values[~np.isnan(values)]
            means[key] = float(values.mean()) if values.size else float("nan")
        else:
            means[key] = float(values.mean())
    return means


def _is_number(value) -> bool:
    """True for int/float scalars (numpy included) but not bools, which are flags, not measurements."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------------------------------
# Connected components
# --------------------------------------------------------------------------------------------------


def label_lesions(mask, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask: (labels int32 of mask's shape, count); background is 0."""
    mask = _as_binary(mask, "mask")
    if mask.ndim == 0:
        raise ValueError("label_lesions needs a mask with at least one dimension")
    return label_components(mask, connectivity)


def _detected_labels(labels: np.ndarray, count: int, other: np.ndarray) -> np.ndarray:
    """Bool of length count+1: entry i is True when component i touches a voxel of ``other`` (0 unused)."""
    detected = np.zeros(count + 1, dtype=bool)
    detected[np.unique(labels[other])] = True
    detected[0] = False
    return detected


class _LesionAnalysis:
    """Labels gt and pred once and derives every lesion-level quantity from that (volumes are large)."""

    def __init__(self, gt, pred, connectivity: int):
        gt, pred = check_binary_pair(gt, pred)
        if gt.ndim == 0:
            raise ValueError("lesion metrics need masks with at least one dimension")
        self.gt_labels, self.gt_count = label_lesions(gt, connectivity)
        self.pred_labels, self.pred_count = label_lesions(pred, connectivity)
        self.gt_detected = _detected_labels(self.gt_labels, self.gt_count, pred)
        pred_touching = _detected_labels(self.pred_labels, self.pred_count, gt)
        true_positives = int(self.gt_detected.sum())
        self.counts = LesionCounts(
            true_positives=true_positives,
            false_positives=self.pred_count - int(pred_touching.sum()),
            false_negatives=self.gt_count - true_positives,
            gt_lesions=self.gt_count,
            pred_lesions=self.pred_count,
        )

    def gt_sizes(self) -> np.ndarray:
        """Voxel count of each gt lesion, shape (gt_count,)."""
        return component_sizes(self.gt_labels, self.gt_count)


# --------------------------------------------------------------------------------------------------
# Lesion-level metrics
# --------------------------------------------------------------------------------------------------


def lesion_counts(gt, pred, connectivity: int = 26) -> LesionCounts:
    """Lesion TP/FP/FN: a gt lesion is TP when any voxel overlaps pred, else FN; a predicted component
    touching no gt voxel is FP. Masks of any equal shape (>= 1-D)."""
    return _LesionAnalysis(gt, pred, connectivity).counts


def lesion_f1_from_counts(counts: LesionCounts) -> float:
    """F1 = TP / (TP + (FP + FN) / 2); 1.0 when there are no lesions in either mask."""
    tp, fp, fn = counts.true_positives, counts.false_positives, counts.false_negatives
    if tp + fp + fn == 0:
        return 1.0
    return tp / (tp + (fp + fn) / 2)


def lesion_f1(gt, pred, connectivity: int = 26) -> float:
    """Lesion-wise F1 (ISLES'22 style) of equal-shape binary masks; 1.0 when both are empty.

    Not symmetric in (gt, pred): a gt lesion split into two predicted pieces is one TP, while swapping the
    roles gives two TPs. Swapping does exchange FP and FN.
    """
    return lesion_f1_from_counts(lesion_counts(gt, pred, connectivity))


def absolute_volume_difference(gt, pred, voxel_volume_ml: float = DEFAULT_VOXEL_VOLUME_ML) -> float:
    """| volume(pred) - volume(gt) | in ml (``voxel_volume_ml=1.0`` gives voxels, the ATLAS v2.0 unit)."""
    gt, pred = check_binary_pair(gt, pred)
    _check_voxel_volume(voxel_volume_ml)
    return abs(int(np.count_nonzero(pred)) - int(np.count_nonzero(gt))) * float(voxel_volume_ml)


def absolute_lesion_count_difference(gt, pred, connectivity: int = 26) -> int:
    """| number of predicted components - number of gt lesions |."""
    counts = lesion_counts(gt, pred, connectivity)
    return abs(counts.pred_lesions - counts.gt_lesions)


def _check_voxel_volume(voxel_volume_ml: float) -> None:
    """Rejects non-positive or non-finite voxel volumes, which would make every volume meaningless."""
    if not (np.isfinite(voxel_volume_ml) and voxel_volume_ml > 0):
        raise ValueError(f"voxel_volume_ml must be a positive number, got {voxel_volume_ml}")


# --------------------------------------------------------------------------------------------------
# Detection by lesion size
# --------------------------------------------------------------------------------------------------


def _check_bins(bins: Sequence[int]) -> tuple[int, ...]:
    """Validates bin upper edges: positive, strictly increasing integers (voxel counts)."""
    edges = tuple(int(edge) for edge in bins)
    if not edges or edges[0] < 1 or any(later <= earlier for earlier, later in zip(edges, edges[1:])):
        raise ValueError(f"bins must be positive, strictly increasing voxel counts, got {tuple(bins)}")
    return edges


def size_bin_labels(bins: Sequence[int] = DEFAULT_SIZE_BINS) -> list[str]:
    """Labels of the len(bins)+1 size bins, e.g. ["≤100", "101–1,000", "1,001–10,000", ">10,000"]."""
    edges = _check_bins(bins)
    labels = [f"≤{edges[0]:,}"]
    labels += [f"{lower + 1:,}–{upper:,}" for lower, upper in zip(edges, edges[1:])]
    labels.append(f">{edges[-1]:,}")
    return labels


def size_bin_index(volume_voxels: int, bins: Sequence[int] = DEFAULT_SIZE_BINS) -> int:
    """Index of the bin holding a lesion of ``volume_voxels`` voxels (upper edges are inclusive)."""
    edges = _check_bins(bins)
    return int(np.searchsorted(np.asarray(edges), volume_voxels, side="left"))


def bin_detection_records(lesions: Iterable[Mapping], bins: Sequence[int] = DEFAULT_SIZE_BINS) -> list[dict]:
    """Pools per-lesion records (each with ``volume_voxels`` and ``detected``) into size bins.

    Returns one dict per bin: label, lower_voxels, upper_voxels (None for the last), lesions, detected and
    recall (NaN when the bin holds no lesion). Lesions from many subjects can be pooled this way.
    """
    edges = _check_bins(bins)
    labels = size_bin_labels(edges)
    totals = np.zeros(len(edges) + 1, dtype=np.int64)
    hits = np.zeros(len(edges) + 1, dtype=np.int64)
    for lesion in lesions:
        index = size_bin_index(int(lesion["volume_voxels"]), edges)
        totals[index] += 1
        hits[index] += bool(lesion["detected"])
    lowers = (1,) + tuple(edge + 1 for edge in edges)
    uppers = edges + (None,)
    return [
        {
            "label": labels[index],
            "lower_voxels": lowers[index],
            "upper_voxels": uppers[index],
            "lesions": int(totals[index]),
            "detected": int(hits[index]),
            "recall": float(hits[index] / totals[index]) if totals[index] else float("nan"),
        }
        for index in range(len(labels))
    ]


def _lesion_records(analysis: _LesionAnalysis, voxel_volume_ml: float) -> list[dict]:
    """Per-gt-lesion dicts (volume_voxels, volume_ml, detected) from one labelling."""
    sizes = analysis.gt_sizes()
    return [
        {"volume_voxels": int(size), "volume_ml": float(size) * voxel_volume_ml, "detected": bool(detected)}
        for size, detected in zip(sizes, analysis.gt_detected[1:])
    ]


def lesion_summary(
    gt, pred, connectivity: int = 26, voxel_volume_ml: float = DEFAULT_VOXEL_VOLUME_ML
) -> tuple[LesionCounts, list[dict]]:
    """Lesion counts and per-gt-lesion records {volume_voxels, volume_ml, detected} from one labelling
    of each mask (labelling a full volume is the expensive part, so callers needing both use this)."""
    _check_voxel_volume(voxel_volume_ml)
    analysis = _LesionAnalysis(gt, pred, connectivity)
    return analysis.counts, _lesion_records(analysis, float(voxel_volume_ml))


def detection_by_size(
    gt,
    pred,
    bins: Sequence[int] = DEFAULT_SIZE_BINS,
    voxel_volume_ml: float = DEFAULT_VOXEL_VOLUME_ML,
    connectivity: int = 26,
) -> dict:
    """Lesion detection rate by gt lesion volume (3-D components; detected = any voxel overlaps pred).

    Returns dict(lesions=[{volume_voxels, volume_ml, detected}, ...] one per gt lesion,
    bins=[{label, lower_voxels, upper_voxels, lesions, detected, recall}, ...] one per size bin).
    ``bins`` are inclusive upper edges in voxels; a bin without lesions has recall NaN and 0 lesions.
    """
    _, lesions = lesion_summary(gt, pred, connectivity, voxel_volume_ml)
    return {"lesions": lesions, "bins": bin_detection_records(lesions, bins)}


# --------------------------------------------------------------------------------------------------
# The paper's 2-D (axial slice) small-lesion view
# --------------------------------------------------------------------------------------------------

def _as_slices(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accepts (H, W) as one slice or (H, W, D) volumes sliced along the last (axial) axis."""
    if gt.ndim == 2:
        return gt[:, :, None], pred[:, :, None]
    if gt.ndim != 3:
        raise ValueError(f"expected a 2-D slice or 3-D volume, got shape {gt.shape}")
    return gt, pred


def _slicewise_components(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels 8-connected components of each axial slice: (labels, sizes per label, slice per label)."""
    labels, count = label_in_slice_components(gt)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    slice_of_label = np.zeros(count + 1, dtype=np.int64)
    if count:
        # Every voxel of a component lies in one slice, so the slice of any of its voxels is its slice.
        slice_indices = np.broadcast_to(np.arange(gt.shape[-1]), gt.shape)
        slice_of_label[labels[gt]] = slice_indices[gt]
    return labels, sizes, slice_of_label


def detection_by_size_2d(gt, pred, max_pixels: int = SMALL_LESION_MAX_PIXELS) -> dict:
    """The paper's 2-D view: per axial slice (last axis), 8-connected gt components of <= ``max_pixels``
    pixels; one is detected when any pixel overlaps pred.

    ``gt``/``pred``: (H, W, D) volumes or one (H, W) slice. Returns dict(lesions, detected, recall,
    max_pixels); recall is NaN when there are no small lesions.
    """
    gt, pred = check_binary_pair(gt, pred)
    gt, pred = _as_slices(gt, pred)
    labels, sizes, _ = _slicewise_components(gt)
    count = sizes.size - 1
    small = sizes <= max_pixels
    small[0] = False
    detected = _detected_labels(labels, count, pred) & small
    lesions, hits = int(small.sum()), int(detected.sum())
    return {
        "lesions": lesions,
        "detected": hits,
        "recall": hits / lesions if lesions else float("nan"),
        "max_pixels": int(max_pixels),
    }


def small_lesion_slice_indices(gt, max_pixels: int = SMALL_LESION_MAX_PIXELS) -> np.ndarray:
    """Axial slices (last axis) of the paper's Table 3 subset: at least one 8-connected gt lesion and none
    larger than ``max_pixels`` pixels. ``gt``: (H, W, D); returns sorted int indices, shape (n,)."""
    gt = _as_binary(gt, "gt")
    if gt.ndim != 3:
        raise ValueError(f"expected a 3-D volume (H, W, D), got shape {gt.shape}")
    # One definition of the subset for setup and scoring (spinseg.data.small_lesion, numpy/scipy only).
    from spinseg.datasets.small_lesion import small_lesion_slices

    return small_lesion_slices(gt, max_pixels)


def small_lesion_counts(gt, pred, max_pixels: int = SMALL_LESION_MAX_PIXELS) -> SmallLesionCounts:
    """Voxel counts summed over a subject's small-lesion slices (see :func:`small_lesion_slice_indices`).

    ``gt``/``pred``: (H, W, D). Summing these over subjects and calling :func:`metrics_from_counts` gives
    the paper's Table 3 row.
    """
    gt, pred = check_binary_pair(gt, pred)
    indices = small_lesion_slice_indices(gt, max_pixels)
    tp, fp, fn, tn = confusion_counts(gt[..., indices], pred[..., indices])
    return SmallLesionCounts(tp, fp, fn, tn, int(indices.size))


def pooled_small_lesion_metrics(
    gts: Iterable,
    preds: Iterable,
    max_pixels: int = SMALL_LESION_MAX_PIXELS,
    empty_score: float = RELEASE_EMPTY_SCORE,
) -> dict[str, float]:
    """Table 3: release metrics pooled over every small-lesion slice of every subject.

    Returns dict(dice, iou, precision, recall, slices).
    """
    totals = np.zeros(4, dtype=np.int64)
    for gt, pred in zip(gts, preds, strict=True):
        counts = small_lesion_counts(gt, pred, max_pixels)
        totals += (counts.true_positives, counts.false_positives, counts.false_negatives, counts.slices)
    result: dict[str, float] = metrics_from_counts(int(totals[0]), int(totals[1]), int(totals[2]), empty_score)
    result["slices"] = int(totals[3])
    return result


# --------------------------------------------------------------------------------------------------
# Spread: bootstrap intervals over subjects
# --------------------------------------------------------------------------------------------------


def pooled_dice_of_counts(true_positives, false_positives, false_negatives) -> float:
    """Dice of voxel counts summed over subjects (Table 3 pooling); 0 when every count is 0."""
    tp, fp, fn = (float(np.sum(values)) for values in (true_positives, false_positives, false_negatives))
    return _ratio(2 * tp, 2 * tp + fp + fn, RELEASE_EMPTY_SCORE)


def bootstrap_interval(
    samples: Sequence[np.ndarray],
    statistic,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` resampling subjects with replacement.

    ``samples`` are equally long 1-D arrays, one entry per subject, resampled jointly (paired), e.g.
    (tp, fp, fn) per subject with :func:`pooled_dice_of_counts`, or (dice per subject,) with
    ``numpy.mean``. Returns (low, high); (nan, nan) with fewer than two subjects. Same seed, same interval.
    """
    from scipy import stats

    samples = [np.asarray(sample, dtype=np.float64) for sample in samples]
    if not samples or len({sample.shape for sample in samples}) != 1 or samples[0].ndim != 1:
        raise ValueError("bootstrap_interval needs equally long 1-D samples, one entry per subject")
    if samples[0].size < 2:
        return float("nan"), float("nan")
    import warnings

    with warnings.catch_warnings():
        # Identical subjects give a zero-width distribution; scipy warns, the interval is still right.
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        result = stats.bootstrap(
            tuple(samples), statistic, n_resamples=n_resamples, confidence_level=confidence, paired=True,
            vectorized=False, method="percentile", random_state=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


# --------------------------------------------------------------------------------------------------
# Boundary metrics (defined in their own module; re-exported so callers find every metric here)
# --------------------------------------------------------------------------------------------------

from spinseg.evaluation.boundary_metrics import (  # noqa: E402  (after the definitions above: no import cycle)
    BOUNDARY_METRIC_KEYS,
    DEFAULT_TOLERANCE_MM,
    average_symmetric_surface_distance,
    boundary_metrics,
    boundary_summary,
    hd95,
    normalized_surface_dice,
)
