"""Numbers with their spread: the bootstrap interval over subjects, its report, and rows over seeds."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.evaluation.metrics import bootstrap_interval, pooled_dice_of_counts

FIXTURES = Path(__file__).resolve().parent / "fixtures"
counts = st.lists(st.tuples(*(st.integers(0, 50),) * 3), min_size=2, max_size=12)


@settings(max_examples=40, deadline=None)
@given(counts)
def test_pooled_dice_interval_is_ordered_in_unit_range_and_scale_free(rows):
    columns = [np.array(column) for column in zip(*rows)]
    low, high = bootstrap_interval(columns, pooled_dice_of_counts, n_resamples=200)
    assert 0.0 <= low <= high <= 1.0
    # Dice is a ratio of counts: doubling every count changes nothing, resample for resample.
    assert bootstrap_interval([2 * column for column in columns], pooled_dice_of_counts, n_resamples=200) == pytest.approx((low, high))
    assert bootstrap_interval(columns, pooled_dice_of_counts, n_resamples=200) == (low, high)  # same seed, same interval


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=20))
def test_mean_interval_lies_within_the_data(values):
    low, high = bootstrap_interval((np.array(values),), np.mean, n_resamples=200)
    assert min(values) - 1e-12 <= low <= high <= max(values) + 1e-12


def test_identical_subjects_give_a_zero_width_interval_and_one_subject_none():
    tp, fp, fn = np.full(5, 3), np.full(5, 1), np.full(5, 1)
    assert bootstrap_interval((tp, fp, fn), pooled_dice_of_counts) == pytest.approx((0.75, 0.75))  # 6 / (6 + 2)
    assert all(np.isnan(bootstrap_interval((np.ones(1),), np.mean)))


def test_evaluator_prints_the_table3_interval(tmp_path):
    from spinseg.evaluation.evaluator import evaluate
    from spinseg.recipes.config import EvaluateConfig

    scans, masks = write_volume_set(tmp_path / "data", 3, shape=(24, 28, 10), seed=2)
    result = evaluate(EvaluateConfig(
        multimodal_scan_paths=str(scans), ground_truth_path=str(masks), model_config=SMALL_SPIN_CONFIG,
        restore_path=str(FIXTURES / "spin_small_original_format.pth"),
        output_path=str(tmp_path / "out"), device="cpu", metrics=["release"],
    ))
    low, high = result["table3"]["dice_interval_95"]
    assert 0.0 <= low <= high <= 1.0
    assert f"Table 3 DSC 95% bootstrap interval over subjects: [{low:.3f}, {high:.3f}]" in (tmp_path / "out" / "results.txt").read_text()


def test_rows_over_seeds_are_mean_and_sample_sd(tmp_path, monkeypatch):
    import spinseg.experiments.compare as compare_module
    from spinseg.cli.compare import main

    dice_by_seed = {1: 0.5, 2: 0.7, 3: 0.6}

    def fake_compare(*, output_dir, seed, **_):
        row = {"dice": dice_by_seed[seed], "iou": 0.4, "precision": 0.5, "recall": 0.6}
        return [{"model": "spin", "display_name": "SPiN", "table2": row, "table3": {**row, "dice": dice_by_seed[seed] / 2}}]

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    assert main(["--seeds", "3", "1", "2", "--output_dir", str(tmp_path), "--models", "spin"]) == 0
    (row,) = json.loads((tmp_path / "comparison_seeds.json").read_text())
    assert row["seeds"] == [1, 2, 3]
    assert row["table2"]["dice"]["mean"] == pytest.approx(0.6)
    assert row["table2"]["dice"]["sd"] == pytest.approx(0.1)  # sqrt(((-0.1)^2 + 0.1^2 + 0) / 2)
    assert row["table3"]["dice"]["min"] == pytest.approx(0.25) and row["table3"]["dice"]["max"] == pytest.approx(0.35)
    assert "| SPiN | 0.600 ± 0.100 |" in (tmp_path / "comparison_seeds.md").read_text()


def test_seed_summary_of_evaluate_folders(tmp_path, capsys):
    """``python -m spinseg.experiments.seeds DIR ...``: Table 2 mean ± sd over the folders' per_subject.json."""
    from spinseg.experiments.seeds import main

    def record(dice_counts, small_counts):
        true_positive, false_positive, false_negative = dice_counts
        small_tp, small_fp, small_fn = small_counts
        dice = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
        return {"subject_id": "s", "dice": dice, "iou": dice / (2 - dice),
                "precision": true_positive / (true_positive + false_positive),
                "recall": true_positive / (true_positive + false_negative), "small_lesion_slices": 2,
                "small_lesion_true_positive_voxels": small_tp, "small_lesion_false_positive_voxels": small_fp,
                "small_lesion_false_negative_voxels": small_fn}

    folders = []
    for index, counts in enumerate([(10, 0, 10), (10, 10, 0), (20, 0, 0)]):  # Dice 2/3, 2/3, 1
        folder = tmp_path / f"seed_{index}"
        folder.mkdir()
        (folder / "per_subject.json").write_text(json.dumps([record(counts, (1, 1, 0))]))
        folders.append(str(folder))
    assert main([*folders, "--output", str(tmp_path / "seeds.md")]) == 0
    mean, sd = 7 / 9, float(np.std([2 / 3, 2 / 3, 1.0], ddof=1))
    assert f"| SPiN | {mean:.3f} ± {sd:.3f} |" in (tmp_path / "seeds.md").read_text()
    assert "0.667 ± 0.000 | 0.667–0.667 |" in capsys.readouterr().out  # small-lesion Dice 2/3 in every run
