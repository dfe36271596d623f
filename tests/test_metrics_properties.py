"""Property tests for spinseg.metrics on random small binary arrays of 1-3 dimensions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from spinseg.evaluation import metrics

shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


@st.composite
def mask_pairs(draw):
    """Two bool arrays of one random shape (1-3 D, sides 1-6)."""
    shape = draw(shapes)
    gt = draw(arrays(bool, shape))
    pred = draw(arrays(bool, shape))
    return gt, pred


PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)
VOXEL_METRICS = (metrics.dice_score, metrics.iou, metrics.precision, metrics.recall)


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_every_metric_in_unit_interval(pair):
    gt, pred = pair
    connectivity = metrics.full_connectivity(gt.ndim)
    values = [function(gt, pred) for function in VOXEL_METRICS]
    values += [metrics.dice_score_challenge(gt, pred), metrics.lesion_f1(gt, pred, connectivity)]
    values += list(metrics.release_metrics(gt, pred).values())
    for value in values:
        assert 0.0 <= value <= 1.0


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_symmetric_metrics(pair):
    gt, pred = pair
    assert metrics.dice_score(gt, pred) == pytest.approx(metrics.dice_score(pred, gt))
    assert metrics.dice_score_challenge(gt, pred) == pytest.approx(metrics.dice_score_challenge(pred, gt))
    assert metrics.iou(gt, pred) == pytest.approx(metrics.iou(pred, gt))
    assert metrics.precision(gt, pred) == pytest.approx(metrics.recall(pred, gt))
    assert metrics.absolute_volume_difference(gt, pred) == pytest.approx(metrics.absolute_volume_difference(pred, gt))


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_lesion_counts_swap_false_positives_and_negatives(pair):
    # Lesion F1 itself is not symmetric (split lesions), but swapping roles exchanges FP and FN.
    gt, pred = pair
    connectivity = metrics.full_connectivity(gt.ndim)
    forward = metrics.lesion_counts(gt, pred, connectivity)
    backward = metrics.lesion_counts(pred, gt, connectivity)
    assert forward.false_positives == backward.false_negatives
    assert forward.false_negatives == backward.false_positives
    assert forward.true_positives + forward.false_negatives == forward.gt_lesions
    assert forward.true_positives <= forward.gt_lesions and forward.false_positives <= forward.pred_lesions
    assert metrics.absolute_lesion_count_difference(gt, pred, connectivity) == abs(
        forward.gt_lesions - forward.pred_lesions
    )


@PROPERTY_SETTINGS
@given(st.integers(min_value=1, max_value=3).flatmap(lambda ndim: arrays(bool, array_shapes(min_dims=ndim, max_dims=ndim, max_side=6))))
def test_lesion_f1_symmetric_when_components_match_one_to_one(mask):
    # When every lesion is either identical in both masks or absent from one, F1 is symmetric.
    connectivity = metrics.full_connectivity(mask.ndim)
    labels, count = metrics.label_lesions(mask, connectivity)
    pred = np.isin(labels, np.arange(1, count + 1, 2))  # keep odd-numbered lesions only
    assert metrics.lesion_f1(mask, pred, connectivity) == pytest.approx(metrics.lesion_f1(pred, mask, connectivity))


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_dice_iou_relation(pair):
    gt, pred = pair
    overlap_iou = metrics.iou(gt, pred)
    if gt.any() or pred.any():
        assert metrics.dice_score(gt, pred) == pytest.approx(2 * overlap_iou / (1 + overlap_iou))


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_identical_masks_score_perfectly(pair):
    gt, _ = pair
    connectivity = metrics.full_connectivity(gt.ndim)
    assert metrics.lesion_f1(gt, gt, connectivity) == 1.0
    assert metrics.dice_score_challenge(gt, gt) == 1.0
    assert metrics.absolute_volume_difference(gt, gt) == 0.0
    if gt.any():
        assert metrics.release_metrics(gt, gt) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}


@PROPERTY_SETTINGS
@given(st.lists(mask_pairs(), min_size=1, max_size=4))
def test_pooled_equals_metrics_of_summed_counts(pairs):
    pooled = metrics.pooled_release_metrics([gt for gt, _ in pairs], [pred for _, pred in pairs])
    totals = np.sum([metrics.confusion_counts(gt, pred)[:3] for gt, pred in pairs], axis=0)
    assert pooled == pytest.approx(metrics.metrics_from_counts(*map(int, totals)))
    for value in pooled.values():
        assert 0.0 <= value <= 1.0


@PROPERTY_SETTINGS
@given(mask_pairs())
def test_detection_by_size_consistent_with_lesion_counts(pair):
    gt, pred = pair
    connectivity = metrics.full_connectivity(gt.ndim)
    result = metrics.detection_by_size(gt, pred, bins=(1, 3, 10), connectivity=connectivity)
    counts = metrics.lesion_counts(gt, pred, connectivity)
    assert sum(row["lesions"] for row in result["bins"]) == counts.gt_lesions
    assert sum(row["detected"] for row in result["bins"]) == counts.true_positives
    assert sum(lesion["volume_voxels"] for lesion in result["lesions"]) == int(gt.sum())
    for row in result["bins"]:
        assert math.isnan(row["recall"]) if row["lesions"] == 0 else 0.0 <= row["recall"] <= 1.0
