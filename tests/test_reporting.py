"""Tests of spinseg.evaluation.reporting on three small synthetic subjects."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from spinseg.evaluation import metrics

from spinseg.evaluation import reporting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (24, 24, 12)


def _subjects():
    """Three (id, gt, pred) triples: a good match, a missed small lesion plus an FP, an empty-vs-empty."""
    gt_a = np.zeros(SHAPE, dtype=bool)
    gt_a[2:10, 2:10, 2:8] = True  # 384 voxels
    pred_a = np.zeros(SHAPE, dtype=bool)
    pred_a[3:10, 2:10, 2:8] = True  # 336 voxels, all inside gt

    gt_b = np.zeros(SHAPE, dtype=bool)
    gt_b[2:6, 2:6, 2:4] = True  # 32 voxels, detected
    gt_b[15:17, 15:17, 8] = True  # 4 voxels, missed
    pred_b = np.zeros(SHAPE, dtype=bool)
    pred_b[2:6, 2:6, 2:4] = True
    pred_b[20:22, 2:4, 10] = True  # 4-voxel false positive

    empty = np.zeros(SHAPE, dtype=bool)
    return [("sub-a", gt_a, pred_a), ("sub-b", gt_b, pred_b), ("sub-c", empty, empty.copy())]


@pytest.fixture(scope="module")
def records():
    return [reporting.subject_record(subject, gt, pred, voxel_volume_ml=0.001) for subject, gt, pred in _subjects()]


def test_subject_record_values(records):
    record_a, record_b, record_c = records
    assert record_a["dice"] == pytest.approx(2 * 336 / (384 + 336))
    assert record_a["precision"] == 1.0
    assert record_a["lesion_f1"] == 1.0
    assert record_a["absolute_volume_difference_ml"] == pytest.approx(0.048)
    assert record_b["lesion_true_positives"] == 1
    assert record_b["lesion_false_negatives"] == 1
    assert record_b["lesion_false_positives"] == 1
    assert record_b["lesion_f1"] == pytest.approx(0.5)
    assert record_b["absolute_lesion_count_difference"] == 0
    assert [lesion["volume_voxels"] for lesion in record_b["lesions"]] == [32, 4]
    assert [lesion["detected"] for lesion in record_b["lesions"]] == [True, False]
    # Empty vs empty: release 0, challenge 1, lesion F1 1.
    assert record_c["dice"] == 0.0 and record_c["dice_challenge"] == 1.0 and record_c["lesion_f1"] == 1.0
    # Records are plain JSON (no numpy scalars), so callers can save them.
    json.dumps(records)


def test_release_and_small_lesion_rows(records):
    release = reporting.release_row_from_records(records)
    assert release["dice"] == pytest.approx((records[0]["dice"] + records[1]["dice"] + 0.0) / 3)
    small = reporting.small_lesion_row_from_records(records)
    # Subject a's 64-pixel slices are small; b's slices 2, 3 and 8 are small; c has none.
    assert small["slices"] == 6 + 3
    true_positives = 6 * 56 + 32
    assert small["recall"] == pytest.approx(true_positives / (6 * 64 + 36))


def test_challenge_table(records):
    rows = reporting.challenge_table(records)
    assert [row["key"] for row in rows] == [key for key, _ in reporting.CHALLENGE_METRICS]
    dice_row = rows[0]
    values = [record["dice_challenge"] for record in records]
    assert dice_row["mean"] == pytest.approx(np.mean(values))
    assert dice_row["std"] == pytest.approx(np.std(values))
    assert dice_row["subjects"] == 3
    text = reporting.format_challenge_table(rows)
    assert "± " in text and "Lesion-wise F1" in text


def test_size_table_pools_subjects(records):
    rows = reporting.size_table(records)
    assert [row["label"] for row in rows] == ["≤100", "101–1,000", "1,001–10,000", ">10,000"]
    assert [row["lesions"] for row in rows] == [2, 1, 0, 0]
    assert [row["detected"] for row in rows] == [1, 1, 0, 0]
    assert rows[0]["recall"] == 0.5 and math.isnan(rows[2]["recall"])
    assert "n/a" in reporting.format_size_table(rows)


def test_per_subject_csv(records, tmp_path):
    path = reporting.write_per_subject_csv(records, tmp_path / "out" / "per_subject.csv")
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["subject_id"] for row in rows] == ["sub-a", "sub-b", "sub-c"]
    header = list(rows[0])
    assert header == [column for column in reporting.PER_SUBJECT_COLUMNS if column in records[0]]
    assert "lesions" not in header
    assert float(rows[1]["lesion_f1"]) == pytest.approx(0.5)
    assert float(rows[0]["dice"]) == pytest.approx(records[0]["dice"])
    # Atomic writing leaves no temporary files behind.
    assert sorted(item.name for item in path.parent.iterdir()) == ["per_subject.csv"]


def test_plots_are_valid_pngs(records, tmp_path):
    paths = [
        reporting.plot_detection_vs_size(records, tmp_path / "single.png"),
        reporting.plot_detection_vs_size({"SPiN": records, "U-Net": records[:2]}, tmp_path / "overlay.png"),
        reporting.plot_volume_scatter(records, tmp_path / "volume.png"),
        reporting.plot_dice_per_subject(records, tmp_path / "dice.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_table2_row_format():
    values = {"dice": 0.7034, "iou": 0.5551, "precision": 0.71449, "recall": 0.68}
    assert reporting.format_table2_header() == "Method | DSC | IOU | Precision | Recall"
    assert reporting.format_table2_row("SPiN", values) == "SPiN | 0.703 | 0.555 | 0.714 | 0.680"
    assert reporting.format_table2_row("SPiN", values, markdown=True) == "| SPiN | 0.703 | 0.555 | 0.714 | 0.680 |"
    assert reporting.format_table2_header(markdown=True).splitlines() == [
        "| Method | DSC | IOU | Precision | Recall |",
        "|---|---|---|---|---|",
    ]
    with pytest.raises(ValueError, match="recall"):
        reporting.format_table2_row("SPiN", {"dice": 1, "iou": 1, "precision": 1})


def test_format_markdown_table():
    text = reporting.format_markdown_table(["a", "b"], [[1, "x|y"], [2.5, "z"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 2.5 | z |"]
    with pytest.raises(ValueError):
        reporting.format_markdown_table(["a", "b"], [[1]])


def test_write_report_links_existing_files(records, tmp_path):
    montage_dir = tmp_path / "montages"
    montage_dir.mkdir()
    montages = []
    for record in reporting.worst_subjects(records):
        montage = montage_dir / f"{record['subject_id']}.png"
        montage.write_bytes(PNG_SIGNATURE)
        montages.append(montage)
    output_dir = tmp_path / "report"
    release = metrics.mean_over_subjects(records, keys=metrics.RELEASE_METRIC_KEYS)
    report_path = reporting.write_report(
        output_dir, records, title="Synthetic check", release_row=release, montage_paths=montages
    )
    assert report_path == output_dir / "report.md"
    text = report_path.read_text()
    assert text.startswith("# Synthetic check\n")
    assert reporting.format_table2_row("SPiN", release, markdown=True) in text
    assert "Table 3" in text  # computed from the records' small-lesion counts
    assert "Lesion-wise F1" in text and "101–1,000" in text
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 3 + 1 + len(montages)
    for link in links:
        assert not Path(link).is_absolute()
        assert (output_dir / link).is_file(), link
    assert "../montages/sub-c.png" in links
    for name in (reporting.DETECTION_PLOT_NAME, reporting.VOLUME_PLOT_NAME, reporting.DICE_PLOT_NAME):
        assert (output_dir / name).read_bytes()[:8] == PNG_SIGNATURE


def test_write_report_accepts_given_rows_and_mapping_montages(records, tmp_path):
    montage = tmp_path / "worst.png"
    montage.write_bytes(PNG_SIGNATURE)
    small = {"dice": 0.5, "iou": 0.25, "precision": 0.125, "recall": 1.0}
    report_path = reporting.write_report(
        tmp_path / "r", records, "T", release_row="| SPiN | 1 | 1 | 1 | 1 |", small_lesion_row=small,
        montage_paths={"sub-c": montage}, method_name="Mine",
    )
    text = report_path.read_text()
    assert "| SPiN | 1 | 1 | 1 | 1 |" in text
    assert "| Mine | 0.500 | 0.250 | 0.125 | 1.000 |" in text
    assert "![sub-c](../worst.png)" in text


def test_empty_records_rejected(tmp_path):
    with pytest.raises(ValueError):
        reporting.challenge_table([])
    with pytest.raises(ValueError):
        reporting.write_report(tmp_path, [], "T")


def test_overlay_montage_shows_the_mask_in_red_where_it_is_and_nowhere_else(tmp_path):
    """The montage (numpy + Pillow) marks predicted voxels in red on the slices holding them, with crops after."""
    from PIL import Image

    from spinseg.io.figures import PREDICTION_COLOUR, save_overlay_montage

    rng = np.random.default_rng(0)
    scan = rng.uniform(0.0, 1.0, (30, 36, 12)).astype(np.float32)
    mask = np.zeros(scan.shape, dtype=np.uint8)
    mask[5:15, 6:16, 4:7] = 1

    def red_pixels(path: Path) -> int:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        # Grey scan pixels have equal channels; blended with the prediction colour, red dominates.
        return int(((pixels[..., 0] - pixels[..., 1] > 60) & (pixels[..., 0] - pixels[..., 2] > 60)).sum())

    crops = [(scan[3:17, 4:18, 5], mask[3:17, 4:18, 5], "#1")]
    save_overlay_montage(scan, mask, tmp_path / "with.png", count=4, title="with a lesion", crops=crops)
    save_overlay_montage(scan, np.zeros_like(mask), tmp_path / "without.png", count=4, title="no lesion")
    assert PREDICTION_COLOUR[0] > 0.9 and red_pixels(tmp_path / "with.png") > 100
    assert red_pixels(tmp_path / "without.png") == 0
    with_size, without_size = Image.open(tmp_path / "with.png").size, Image.open(tmp_path / "without.png").size
    assert with_size[1] > without_size[1]  # the crop row comes after the slices
