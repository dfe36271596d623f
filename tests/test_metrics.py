"""Hand-computed cases for spinseg.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from spinseg.evaluation import metrics


def _line(length: int, ones: list[int]) -> np.ndarray:
    """A 1-D bool array of ``length`` with ``ones`` set."""
    array = np.zeros(length, dtype=bool)
    array[ones] = True
    return array


# gt has 4 voxels, pred 3 of which 2 overlap: tp=2, fp=1, fn=2.
GT = _line(10, [0, 1, 2, 3])
PRED = _line(10, [2, 3, 4])


def test_confusion_counts_hand_computed():
    counts = metrics.confusion_counts(GT, PRED)
    assert counts == (2, 1, 2, 5)
    assert counts.true_positives == 2 and counts.true_negatives == 5


def test_voxel_metrics_hand_computed():
    assert metrics.dice_score(GT, PRED) == pytest.approx(4 / 7)
    assert metrics.iou(GT, PRED) == pytest.approx(2 / 5)
    assert metrics.precision(GT, PRED) == pytest.approx(2 / 3)
    assert metrics.recall(GT, PRED) == pytest.approx(2 / 4)
    assert metrics.release_metrics(GT, PRED) == pytest.approx(
        {"dice": 4 / 7, "iou": 2 / 5, "precision": 2 / 3, "recall": 1 / 2}
    )


def test_accepts_zero_one_numbers_like_bools():
    assert metrics.dice_score(GT.astype(np.float32), PRED.astype(np.uint8)) == pytest.approx(4 / 7)


def test_both_empty_release_zero_challenge_one():
    empty = np.zeros((3, 4, 5), dtype=bool)
    assert metrics.dice_score(empty, empty) == 0.0
    assert metrics.release_metrics(empty, empty) == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    assert metrics.dice_score_challenge(empty, empty) == 1.0
    assert metrics.dice_score(empty, empty, empty_score=metrics.CHALLENGE_EMPTY_SCORE) == 1.0
    assert math.isnan(metrics.dice_score(empty, empty, empty_score=metrics.EXCLUDED_EMPTY_SCORE))


def test_empty_gt_nonempty_pred():
    gt = np.zeros(6, dtype=bool)
    pred = _line(6, [1, 2])
    assert metrics.dice_score(gt, pred) == 0.0
    assert metrics.dice_score_challenge(gt, pred) == 0.0  # denominator is not zero: a real 0
    assert metrics.precision(gt, pred) == 0.0
    assert metrics.recall(gt, pred) == 0.0  # empty denominator -> release's 0
    assert metrics.recall(gt, pred, empty_score=1.0) == 1.0


def test_nonempty_gt_empty_pred():
    gt = _line(6, [1, 2])
    pred = np.zeros(6, dtype=bool)
    assert metrics.dice_score_challenge(gt, pred) == 0.0
    assert metrics.recall(gt, pred) == 0.0
    assert metrics.precision(gt, pred) == 0.0
    assert metrics.precision(gt, pred, empty_score=1.0) == 1.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        metrics.dice_score(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [np.full(4, 0.5), np.array([0, 2, 1, 0]), np.array([np.nan, 0, 1, 0])])
def test_non_binary_values_rejected(bad):
    with pytest.raises(ValueError, match="binary"):
        metrics.dice_score(bad, np.zeros(4))


def test_pooled_differs_from_mean_over_subjects():
    # Subject A: big lesion, perfect; subject B: tiny lesion, missed.
    gt_a, pred_a = _line(100, list(range(90))), _line(100, list(range(90)))
    gt_b, pred_b = _line(100, [0]), np.zeros(100, dtype=bool)
    per_subject = [metrics.release_metrics(gt_a, pred_a), metrics.release_metrics(gt_b, pred_b)]
    mean = metrics.mean_over_subjects(per_subject)
    pooled = metrics.pooled_release_metrics([gt_a, gt_b], [pred_a, pred_b])
    assert mean["dice"] == pytest.approx(0.5)
    assert mean["recall"] == pytest.approx(0.5)
    # Pooled: tp=90, fp=0, fn=1.
    assert pooled["dice"] == pytest.approx(180 / 181)
    assert pooled["recall"] == pytest.approx(90 / 91)
    assert pooled["precision"] == pytest.approx(1.0)


def test_pooled_rejects_unequal_lengths_and_empty_input():
    with pytest.raises(ValueError, match="lengths"):
        metrics.pooled_release_metrics([GT, GT], [PRED])
    with pytest.raises(ValueError):
        metrics.pooled_release_metrics([], [])


def test_mean_over_subjects_keys_and_nan():
    records = [{"dice": 0.2, "subject": "a", "flag": True}, {"dice": float("nan"), "subject": "b", "flag": False}]
    assert list(metrics.mean_over_subjects(records)) == ["dice"]
    assert math.isnan(metrics.mean_over_subjects(records)["dice"])
    assert metrics.mean_over_subjects(records, ignore_nan=True)["dice"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        metrics.mean_over_subjects([])


# ---------------------------------------------------------------------------------------------------
# Connected components and lesion-level metrics
# ---------------------------------------------------------------------------------------------------


def _volume(*voxels, shape=(6, 6, 6)) -> np.ndarray:
    """A bool volume with the given (x, y, z) voxels set."""
    volume = np.zeros(shape, dtype=bool)
    for voxel in voxels:
        volume[voxel] = True
    return volume


def test_connectivity_structures():
    assert metrics.connectivity_structure(3, 6).sum() == 7
    assert metrics.connectivity_structure(3, 18).sum() == 19
    assert metrics.connectivity_structure(3, 26).sum() == 27
    assert metrics.connectivity_structure(2, 4).sum() == 5
    assert metrics.connectivity_structure(2, 8).sum() == 9
    with pytest.raises(ValueError, match="connectivity 26"):
        metrics.connectivity_structure(2, 26)
    with pytest.raises(ValueError):
        metrics.connectivity_structure(3, 8)
    assert [metrics.full_connectivity(ndim) for ndim in (1, 2, 3)] == [2, 8, 26]


def test_face_adjacent_voxels_are_one_lesion():
    mask = _volume((1, 1, 1), (1, 1, 2))
    for connectivity in (6, 18, 26):
        assert metrics.label_lesions(mask, connectivity)[1] == 1


def test_corner_neighbours_depend_on_connectivity():
    mask = _volume((1, 1, 1), (2, 2, 2))
    assert metrics.label_lesions(mask, 26)[1] == 1
    assert metrics.label_lesions(mask, 18)[1] == 2
    assert metrics.label_lesions(mask, 6)[1] == 2
    edge = _volume((1, 1, 1), (2, 2, 1))
    assert metrics.label_lesions(edge, 18)[1] == 1
    assert metrics.label_lesions(edge, 6)[1] == 2
    labels, count = metrics.label_lesions(mask, 6)
    assert labels.shape == mask.shape and set(np.unique(labels)) == {0, 1, 2}


def test_2d_connectivity():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    assert metrics.label_lesions(mask, 8)[1] == 1
    assert metrics.label_lesions(mask, 4)[1] == 2


def test_gt_lesion_split_by_prediction_is_one_true_positive():
    gt = _volume((1, 1, 1), (1, 1, 2), (1, 1, 3))
    pred = _volume((1, 1, 1), (1, 1, 3))  # two pieces, both inside the one gt lesion
    counts = metrics.lesion_counts(gt, pred)
    assert counts == metrics.LesionCounts(1, 0, 0, 1, 2)
    assert metrics.lesion_f1(gt, pred) == 1.0


def test_false_positive_blob():
    gt = _volume((1, 1, 1))
    pred = _volume((1, 1, 1), (4, 4, 4))
    counts = metrics.lesion_counts(gt, pred)
    assert (counts.true_positives, counts.false_positives, counts.false_negatives) == (1, 1, 0)
    assert metrics.lesion_f1(gt, pred) == pytest.approx(1 / 1.5)


def test_missed_lesion_and_mixed_case():
    gt = _volume((0, 0, 0), (3, 3, 3), (5, 5, 0))
    pred = _volume((0, 0, 0), (5, 0, 5))
    # gt: 3 lesions, one hit -> tp 1, fn 2; pred blob at (5,0,5) -> fp 1.
    assert metrics.lesion_counts(gt, pred) == metrics.LesionCounts(1, 1, 2, 3, 2)
    assert metrics.lesion_f1(gt, pred) == pytest.approx(1 / (1 + 3 / 2))


def test_lesion_f1_both_empty_is_one_and_one_empty_is_zero():
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert metrics.lesion_f1(empty, empty) == 1.0
    assert metrics.lesion_f1(_volume((1, 1, 1), shape=(4, 4, 4)), empty) == 0.0
    assert metrics.lesion_f1(empty, _volume((1, 1, 1), shape=(4, 4, 4))) == 0.0


def test_lesion_f1_is_not_symmetric_but_swaps_fp_and_fn():
    # One gt lesion covered by two predicted pieces, plus one stray prediction.
    gt = _volume((1, 1, 1), (1, 1, 2), (1, 1, 3))
    pred = _volume((1, 1, 1), (1, 1, 3), (4, 4, 4))
    forward = metrics.lesion_counts(gt, pred)
    backward = metrics.lesion_counts(pred, gt)
    assert metrics.lesion_f1(gt, pred) == pytest.approx(1 / 1.5)
    assert metrics.lesion_f1(pred, gt) == pytest.approx(2 / 2.5)
    assert forward.false_positives == backward.false_negatives
    assert forward.false_negatives == backward.false_positives


def test_corner_touching_prediction_depends_on_connectivity():
    # The prediction touches gt only through the lesion structure, never by overlap: 6 vs 26 changes counts.
    gt = _volume((1, 1, 1), (2, 2, 2))
    pred = _volume((1, 1, 1))
    assert metrics.lesion_counts(gt, pred, connectivity=26) == metrics.LesionCounts(1, 0, 0, 1, 1)
    assert metrics.lesion_counts(gt, pred, connectivity=6) == metrics.LesionCounts(1, 0, 1, 2, 1)


def test_absolute_volume_difference_by_hand():
    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[:5, :5, :4] = True  # 100 voxels
    pred = np.zeros_like(gt)
    pred[:3, :3, :3] = True  # 27 voxels
    assert metrics.absolute_volume_difference(gt, pred) == pytest.approx(0.073)
    assert metrics.absolute_volume_difference(pred, gt, voxel_volume_ml=1.0) == pytest.approx(73)
    assert metrics.absolute_volume_difference(gt, pred, voxel_volume_ml=0.008) == pytest.approx(73 * 0.008)
    with pytest.raises(ValueError):
        metrics.absolute_volume_difference(gt, pred, voxel_volume_ml=0)


def test_absolute_lesion_count_difference_by_hand():
    gt = _volume((0, 0, 0), (3, 3, 3), (5, 5, 5))
    pred = _volume((0, 0, 0))
    assert metrics.absolute_lesion_count_difference(gt, pred) == 2
    assert metrics.absolute_lesion_count_difference(pred, gt) == 2
    # Under 6-connectivity a corner pair counts as two lesions.
    corner = _volume((1, 1, 1), (2, 2, 2))
    assert metrics.absolute_lesion_count_difference(corner, pred, connectivity=26) == 0
    assert metrics.absolute_lesion_count_difference(corner, pred, connectivity=6) == 1


# ---------------------------------------------------------------------------------------------------
# Detection by size
# ---------------------------------------------------------------------------------------------------


def _sized_lesions_volume():
    """gt with cuboid lesions of 50, 500, 5000 and 12000 voxels, far apart; pred hits all but the 500."""
    gt = np.zeros((40, 40, 60), dtype=bool)
    gt[0:5, 0:10, 0:1] = True  # 50
    gt[10:15, 0:10, 0:10] = True  # 500
    gt[20:30, 0:20, 0:25] = True  # 5000
    gt[0:20, 25:40, 20:60] = True  # 12000
    pred = np.zeros_like(gt)
    pred[2, 2, 0] = True
    pred[25, 5, 5] = True
    pred[10, 30, 30] = True
    pred[35, 35, 55] = True  # a false positive: never counted as a detection
    return gt, pred


def test_size_bin_labels_and_index():
    assert metrics.size_bin_labels() == ["≤100", "101–1,000", "1,001–10,000", ">10,000"]
    assert [metrics.size_bin_index(size) for size in (1, 100, 101, 1000, 1001, 10000, 10001)] == [0, 0, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        metrics.size_bin_labels((100, 100))


def test_detection_by_size_bins():
    gt, pred = _sized_lesions_volume()
    result = metrics.detection_by_size(gt, pred)
    volumes = sorted(lesion["volume_voxels"] for lesion in result["lesions"])
    assert volumes == [50, 500, 5000, 12000]
    by_volume = {lesion["volume_voxels"]: lesion for lesion in result["lesions"]}
    assert by_volume[500]["detected"] is False
    assert by_volume[50]["detected"] is True
    assert by_volume[5000]["volume_ml"] == pytest.approx(5.0)
    bins = result["bins"]
    assert [row["label"] for row in bins] == metrics.size_bin_labels()
    assert [row["lesions"] for row in bins] == [1, 1, 1, 1]
    assert [row["detected"] for row in bins] == [1, 0, 1, 1]
    assert [row["recall"] for row in bins] == [1.0, 0.0, 1.0, 1.0]


def test_detection_by_size_empty_bin_is_nan():
    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[0:5, 0:5, 0:2] = True  # 50 voxels
    result = metrics.detection_by_size(gt, gt, bins=(10, 100))
    assert [row["lesions"] for row in result["bins"]] == [0, 1, 0]
    assert math.isnan(result["bins"][0]["recall"]) and math.isnan(result["bins"][2]["recall"])
    assert result["bins"][1]["recall"] == 1.0
    assert [row["label"] for row in result["bins"]] == ["≤10", "11–100", ">100"]


def test_detection_by_size_2d():
    gt = np.zeros((30, 30, 3), dtype=bool)
    gt[0:5, 0:5, 0] = True  # 25 pixels, detected
    gt[10:12, 10:12, 0] = True  # 4 pixels, missed
    gt[0:11, 0:11, 1] = True  # 121 pixels: not small
    gt[20, 20, 2] = True  # 1 pixel; diagonal neighbour below joins it (8-connected) -> 2 pixels
    gt[21, 21, 2] = True
    pred = np.zeros_like(gt)
    pred[4, 4, 0] = True
    pred[0:11, 0:11, 1] = True
    pred[21, 21, 2] = True
    result = metrics.detection_by_size_2d(gt, pred)
    assert result["lesions"] == 3
    assert result["detected"] == 2
    assert result["recall"] == pytest.approx(2 / 3)
    # A component spanning slices is counted once per slice, as the paper's 2-D view does.
    column = np.zeros((5, 5, 4), dtype=bool)
    column[2, 2, :] = True
    assert metrics.detection_by_size_2d(column, column)["lesions"] == 4
    # No small lesions -> recall NaN.
    assert math.isnan(metrics.detection_by_size_2d(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))["recall"])
    # A single 2-D slice is accepted.
    assert metrics.detection_by_size_2d(gt[..., 0], pred[..., 0])["lesions"] == 2


def test_small_lesion_slices_and_pooled_table3():
    gt = np.zeros((30, 30, 4), dtype=bool)
    gt[0:5, 0:5, 0] = True  # small only -> counts
    gt[0:5, 0:5, 1] = True
    gt[10:21, 10:21, 1] = True  # slice 1 also holds a 121-pixel lesion -> excluded
    gt[20, 20, 3] = True  # small -> counts; slice 2 is empty -> excluded
    np.testing.assert_array_equal(metrics.small_lesion_slice_indices(gt), [0, 3])
    pred = np.zeros_like(gt)
    pred[0:5, 0:5, 0:2] = True  # slice 0 perfect (25 tp), slice 1 ignored
    pred[0, 0, 3] = True  # slice 3: 1 fp, 1 fn
    counts = metrics.small_lesion_counts(gt, pred)
    assert (counts.true_positives, counts.false_positives, counts.false_negatives, counts.slices) == (25, 1, 1, 2)
    pooled = metrics.pooled_small_lesion_metrics([gt, gt], [pred, pred])
    assert pooled["slices"] == 4
    assert pooled["dice"] == pytest.approx(100 / 104)


def test_small_lesion_slices_agree_with_data_module():
    # spinseg.datasets.small_lesion selects the same subset for training/evaluation data; both must agree.
    from spinseg.datasets import small_lesion

    rng = np.random.default_rng(0)
    volume = rng.random((40, 40, 30)) > 0.93
    volume[5:20, 5:20, 10:14] = True  # some slices with a large lesion
    np.testing.assert_array_equal(
        metrics.small_lesion_slice_indices(volume), small_lesion.small_lesion_slices(volume)
    )
