"""Boundary metrics (HD95, ASSD, NSD) against a second implementation, and lesion-wise F1's matching rule.

The second implementation below uses only ``scipy.ndimage``: the surface of a mask is
``mask & ~binary_erosion(mask)`` (6-connected structuring element, outside the volume is background),
the directed distances are a Euclidean distance transform of the other surface's complement, sampled
in mm with the voxel spacing. HD95 is the *larger of the two directed 95th percentiles* (linear
interpolation, ``np.percentile``'s default), the definition MONAI uses; ASSD is the mean of the union of
both directed distance sets; NSD counts surface voxels of both masks within the tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from spinseg.evaluation import boundary_metrics as bm
from spinseg import metrics

ANISOTROPIC = (0.8, 1.3, 3.0)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the volume's outside counts as background)."""
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), border_value=0)


def directed_distances(source: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """mm from each surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    return ndimage.distance_transform_edt(~surface(target), sampling=spacing)[surface(source)]


def reference_metrics(gt: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float = 2.0) -> dict:
    """HD95 / ASSD / NSD of two non-empty masks by distance transforms (no MONAI)."""
    pred_to_gt = directed_distances(pred, gt, spacing)
    gt_to_pred = directed_distances(gt, pred, spacing)
    both = np.concatenate([pred_to_gt, gt_to_pred])
    return {
        "hd95_mm": max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)),
        "assd_mm": both.mean(),
        "nsd": np.count_nonzero(both <= tolerance_mm) / both.size,
        "hd95_union_mm": np.percentile(both, 95),  # the other definition in use, for the test below
    }


def random_blobs(shape, seed: int, fraction: float) -> np.ndarray:
    """Smooth random blobs covering about ``fraction`` of the volume (several components, some at the edge)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=1.5)
    return noise > np.quantile(noise, 1 - fraction)


def assert_matches_reference(gt, pred, spacing, tolerance_mm=2.0):
    result = bm.boundary_metrics(gt, pred, spacing, tolerance_mm)
    expected = reference_metrics(gt, pred, spacing, tolerance_mm)
    for key in bm.BOUNDARY_METRIC_KEYS:
        # MONAI returns float32.
        assert result[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), (key, result[key], expected[key])
    assert result["boundary_one_empty"] is False and result["nsd_tolerance_mm"] == tolerance_mm
    return result, expected


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_with_anisotropic_spacing_match_distance_transforms(seed):
    shape = (22, 26, 14)
    gt = random_blobs(shape, seed, 0.08)
    pred = random_blobs(shape, seed + 100, 0.06) | (gt & random_blobs(shape, seed + 200, 0.5))
    assert_matches_reference(gt, pred, ANISOTROPIC, tolerance_mm=[1.0, 2.0, 3.5][seed % 3])


def test_small_lesions_far_apart_use_the_bounding_box_and_still_match():
    # Two tiny lesions in a large volume: the box is small, the result must equal the full-volume computation.
    gt = np.zeros((60, 70, 40), bool)
    pred = np.zeros_like(gt)
    gt[10:13, 10:12, 5:7] = True
    pred[11:14, 10:13, 6:7] = True
    pred[40:42, 50:51, 30:33] = True  # a false positive far away
    box = bm.union_bounding_box(gt, pred)
    assert [(part.start, part.stop) for part in box] == [(9, 43), (9, 52), (4, 34)]
    assert_matches_reference(gt, pred, ANISOTROPIC)


def test_masks_touching_the_volume_edge_count_their_edge_as_surface():
    gt = np.zeros((8, 9, 6), bool)
    pred = np.zeros_like(gt)
    gt[:4, :, :] = True  # fills whole faces of the volume: no interior voxel along x=0
    pred[:5, 2:, :3] = True
    assert_matches_reference(gt, pred, (1.0, 2.0, 0.5))


def test_hand_made_single_voxels_and_cubes():
    gt = np.zeros((6, 6, 8), bool)
    pred = np.zeros_like(gt)
    gt[2, 2, 2] = True
    pred[2, 2, 5] = True
    # One voxel each, 3 voxels apart along the 2 mm axis: every distance is 6 mm.
    result = bm.boundary_metrics(gt, pred, (1.0, 1.0, 2.0), tolerance_mm=2.0)
    assert (result["hd95_mm"], result["assd_mm"], result["nsd"]) == (pytest.approx(6.0), pytest.approx(6.0), 0.0)
    assert bm.normalized_surface_dice(gt, pred, (1.0, 1.0, 2.0), tolerance_mm=6.0) == 1.0
    # A 3x3x3 cube against itself: every distance 0, NSD 1.
    cube = np.zeros((7, 7, 7), bool)
    cube[2:5, 2:5, 2:5] = True
    same = bm.boundary_metrics(cube, cube, ANISOTROPIC)
    assert (same["hd95_mm"], same["assd_mm"], same["nsd"]) == (0.0, 0.0, 1.0)
    # A 2x2x2 cube (every voxel on its surface) against itself shifted one voxel along the 3 mm axis:
    # in each direction 4 voxels are shared (0 mm) and 4 lie one 3 mm step away.
    small = np.zeros((6, 6, 6), bool)
    small[2:4, 2:4, 2:4] = True
    result, _ = assert_matches_reference(small, np.roll(small, 1, axis=2), ANISOTROPIC)
    assert result["hd95_mm"] == pytest.approx(3.0)
    assert result["assd_mm"] == pytest.approx(8 * 3.0 / 16)
    assert result["nsd"] == pytest.approx(8 / 16)


def test_hd95_is_the_max_of_directed_percentiles_not_the_percentile_of_the_union():
    # A big lesion found exactly plus a distant false positive: pred -> gt has a tail, gt -> pred none.
    gt = np.zeros((40, 40, 20), bool)
    gt[5:25, 5:25, 3:15] = True
    pred = gt.copy()
    # Its 98 surface voxels are 5.9 % of the prediction's surface but 3 % of both surfaces together.
    pred[33:38, 33:38, 14:19] = True
    result, expected = assert_matches_reference(gt, pred, ANISOTROPIC)
    # The two definitions differ here, so the test above tells them apart.
    assert not math.isclose(expected["hd95_mm"], expected["hd95_union_mm"], rel_tol=1e-3)


def test_empty_rule_and_summary():
    empty = np.zeros((5, 5, 5), bool)
    lesion = empty.copy()
    lesion[2, 2, 2] = True
    both = bm.boundary_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert (both["hd95_mm"], both["assd_mm"], both["nsd"], both["boundary_one_empty"]) == (0.0, 0.0, 1.0, False)
    for gt, pred in ((lesion, empty), (empty, lesion)):
        one = bm.boundary_metrics(gt, pred, (1.0, 1.0, 1.0))
        assert all(math.isnan(one[key]) for key in bm.BOUNDARY_METRIC_KEYS) and one["boundary_one_empty"] is True
    pair = bm.boundary_metrics(lesion, np.roll(lesion, 1, axis=0), (2.0, 1.0, 1.0))
    rows = {row["key"]: row for row in bm.boundary_summary([both, one, pair])}
    # The one-empty subject is left out of the means and counted on its own.
    assert rows["hd95_mm"]["mean"] == pytest.approx((0.0 + 2.0) / 2) and rows["hd95_mm"]["subjects"] == 2
    assert rows["nsd"]["mean"] == pytest.approx((1.0 + 1.0) / 2) and rows["nsd"]["one_empty"] == 1


def test_bad_arguments_are_refused():
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="spacing_mm"):
        bm.boundary_metrics(mask, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        bm.boundary_metrics(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance_mm"):
        bm.boundary_metrics(mask, mask, (1.0, 1.0, 1.0), tolerance_mm=float("nan"))
    with pytest.raises(ValueError, match="binary"):
        bm.boundary_metrics(mask * 0.5, mask, (1.0, 1.0, 1.0))
    assert bm.isotropic_spacing_from_voxel_volume(0.064) == (4.0, 4.0, 4.0)
    assert metrics.hd95 is bm.hd95  # re-exported beside the other metrics


# ---------------------------------------------------------------------------------------------
# Lesion-wise F1: the matching rule, checked against an independent overlap-matrix computation.
#
# panoptica (the BrainLesion instance-metrics package) would be the natural second implementation, but
# installing it here downgrades numpy (its numpy<2.3 pin), so it is not a dependency. The one rule where
# it differs from ours: panoptica's default matcher pairs a reference and a predicted instance one-to-one
# only when their IoU exceeds 0.5; ours (ISLES'22, ATLAS v2.0) counts a ground-truth lesion as detected
# when ANY voxel overlaps the prediction, and a predicted component as a false positive only when it
# touches no ground-truth voxel. Below: both rules computed independently from an overlap matrix, ours
# must equal the any-overlap one, and a hand-made scene where they disagree is counted by hand.
# ---------------------------------------------------------------------------------------------


def overlap_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels shared by every (gt lesion, predicted component) pair, and each component's size
    (26-connected components by scikit-image, not scipy)."""
    from skimage.measure import label

    gt_labels, pred_labels = label(gt, connectivity=3), label(pred, connectivity=3)
    shared = np.zeros((gt_labels.max() + 1, pred_labels.max() + 1), np.int64)
    np.add.at(shared, (gt_labels.ravel(), pred_labels.ravel()), 1)
    return shared[1:, 1:], np.bincount(gt_labels.ravel())[1:], np.bincount(pred_labels.ravel())[1:]


def f1_any_overlap(gt, pred) -> tuple[int, int, int]:
    """(TP, FP, FN) with our rule: any shared voxel detects a gt lesion; a component touching none is FP."""
    shared, gt_sizes, _ = overlap_matrix(gt, pred)
    if shared.size == 0:
        return 0, shared.shape[1], shared.shape[0]
    true_positives = int((shared.sum(axis=1) > 0).sum())
    return true_positives, int((shared.sum(axis=0) == 0).sum()), len(gt_sizes) - true_positives


def f1_iou_half(gt, pred) -> tuple[int, int, int]:
    """(TP, FP, FN) with panoptica's default: one-to-one pairs of IoU > 0.5 (such pairs cannot conflict)."""
    shared, gt_sizes, pred_sizes = overlap_matrix(gt, pred)
    union = gt_sizes[:, None] + pred_sizes[None, :] - shared
    matched = int((shared / np.maximum(union, 1) > 0.5).sum()) if shared.size else 0
    return matched, len(pred_sizes) - matched, len(gt_sizes) - matched


def f1(counts: tuple[int, int, int]) -> float:
    tp, fp, fn = counts
    return 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_lesion_f1_equals_the_independent_any_overlap_count(seed):
    gt = random_blobs((24, 20, 16), seed, 0.04)
    pred = random_blobs((24, 20, 16), seed + 50, 0.04) | (gt & random_blobs((24, 20, 16), seed + 9, 0.3))
    counts = metrics.lesion_counts(gt, pred, connectivity=26)
    assert (counts.true_positives, counts.false_positives, counts.false_negatives) == f1_any_overlap(gt, pred)
    assert metrics.lesion_f1(gt, pred) == pytest.approx(f1(f1_any_overlap(gt, pred)))


def test_hand_made_scene_where_the_matching_rules_differ():
    gt = np.zeros((20, 20, 10), bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = True  # A: 64 voxels, predicted well (IoU 48/64 > 0.5)
    pred[2:6, 2:6, 3:6] = True
    gt[10:14, 10:14, 2:6] = True  # B: 64 voxels, grazed by a 2-voxel prediction (IoU 2/64)
    pred[13, 13, 5:7] = True
    gt[2:4, 15:17, 7:9] = True  # C: 8 voxels, missed
    pred[16:18, 2:4, 2:3] = True  # D: a false positive
    # By hand. Ours: A, B detected; C missed; D false -> TP 2, FP 1, FN 1, F1 = 2 / (2 + 1) = 2/3.
    # IoU > 0.5: only A matches; B's grazing piece and D are FP; B and C are FN -> TP 1, FP 2, FN 2, F1 = 1/3.
    assert f1_any_overlap(gt, pred) == (2, 1, 1)
    assert f1_iou_half(gt, pred) == (1, 2, 2)
    assert metrics.lesion_f1(gt, pred) == pytest.approx(2 / 3)
    assert f1(f1_iou_half(gt, pred)) == pytest.approx(1 / 3)
