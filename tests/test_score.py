"""``spinseg score``: pairing by subject, mask kinds, header spacing, unmatched subjects, and the done-when
check: scoring ``spinseg.predict``'s outputs gives the evaluator's numbers on the same subjects."""
from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spinseg import metrics
from spinseg.evaluation import scoring as score
from spinseg.evaluation import boundary_metrics
from spinseg.cli.main import main as spinseg_main
from spinseg.cli.predict import main as predict_main
from spinseg.evaluation import reporting
from spinseg.inference import scan as predict
from spinseg.errors import UserInputError

ANISOTROPIC_AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def save(path: Path, array: np.ndarray, affine: np.ndarray = ANISOTROPIC_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def cube(shape, corner, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(start, start + size) for start in corner)] = True
    return mask


def test_subject_key_reads_bids_entities_and_strips_suffixes():
    assert score.subject_key(Path("sub-01_ses-pre_desc-lesion_mask.nii.gz")) == "sub-01_ses-pre"
    assert score.subject_key(Path("d/sub-A12_T1w_label-L_mask.nii"), "_mask") == "sub-A12"
    assert score.subject_key(Path("c0001s0000t01_lesion_mask.nii.gz"), "_lesion_mask") == "c0001s0000t01"
    assert score.subject_key(Path("c0001s0000t01_lesion_prob.nii.gz"), "_lesion_mask") is None
    assert score.subject_key(Path("case_007.nii.gz")) == "case_007"
    assert score.subject_key(Path("presub-01.nii.gz")) == "presub-01"  # 'sub-' inside a word is no entity


def test_mask_kinds_header_spacing_and_unmatched_subjects(tmp_path, capsys):
    shape = (16, 14, 8)
    truth = {"sub-01_ses-1": cube(shape, (3, 3, 2), 4), "sub-02": cube(shape, (6, 5, 1), 5) | cube(shape, (0, 0, 6), 2),
             "sub-03": cube(shape, (1, 1, 1), 2)}
    save(tmp_path / "gt/sub-01/ses-1/sub-01_ses-1_label-lesion_roi.nii.gz", truth["sub-01_ses-1"].astype(np.uint8))
    save(tmp_path / "gt/sub-02_label-lesion_roi.nii.gz", truth["sub-02"].astype(np.int16))
    save(tmp_path / "gt/sub-03_label-lesion_roi.nii.gz", truth["sub-03"].astype(np.uint8))
    save(tmp_path / "gt/sub-02_T1w.nii.gz", np.ones(shape, np.float32))  # not a mask: no _roi suffix
    # A 0/255 mask, a probability map and a prediction without ground truth.
    binary = cube(shape, (4, 3, 2), 4)
    probability = np.where(cube(shape, (6, 5, 2), 5), 0.8, 0.3).astype(np.float32)
    probability[0, 0, 0] = 0.5  # not above the threshold
    save(tmp_path / "pred/sub-01_ses-1_desc-lesion_mask.nii.gz", binary.astype(np.uint8) * 255)
    save(tmp_path / "pred/sub-02_desc-lesion_mask.nii.gz", probability)
    save(tmp_path / "pred/sub-09_desc-lesion_mask.nii.gz", binary.astype(np.uint8))
    output = tmp_path / "out"
    # Through the package's entry point: `spinseg score ...`.
    assert spinseg_main(["score", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--pred_suffix", "_mask",
                       "--gt_suffix", "_roi", "--output", str(output), "--tolerance_mm", "3"]) == 0
    stderr = capsys.readouterr().err
    assert "no prediction for 1 ground truth(s): sub-03" in stderr and "no ground truth for 1 prediction(s): sub-09" in stderr
    subjects = json.loads((output / "subjects.json").read_text())
    assert subjects == {"scored": ["sub-01_ses-1", "sub-02"], "ground_truth_without_prediction": ["sub-03"],
                        "prediction_without_ground_truth": ["sub-09"]}
    assert "sub-03" in (output / "results.txt").read_text() and "sub-09" in (output / "report.md").read_text()
    records = {record["subject_id"]: record for record in json.loads((output / "per_subject.json").read_text())}
    predictions = {"sub-01_ses-1": binary, "sub-02": probability > 0.5}
    for subject, prediction in predictions.items():
        record = records[subject]
        assert record["dice"] == pytest.approx(metrics.dice_score(truth[subject], prediction))
        assert record["lesion_f1"] == pytest.approx(metrics.lesion_f1(truth[subject], prediction))
        # Volumes and distances use the header's 1 x 1 x 3 mm voxels.
        assert record["voxel_volume_ml"] == pytest.approx(0.003)
        assert record["absolute_volume_difference_ml"] == pytest.approx(
            abs(int(prediction.sum()) - int(truth[subject].sum())) * 0.003)
        expected = boundary_metrics.boundary_metrics(truth[subject], prediction, (1.0, 1.0, 3.0), 3.0)
        for key in boundary_metrics.BOUNDARY_METRIC_KEYS:
            assert record[key] == pytest.approx(expected[key])
    assert "HD95 (mm)" in (output / "report.md").read_text()
    header = (output / "per_subject.csv").read_text().splitlines()[0].split(",")
    assert {"hd95_mm", "assd_mm", "nsd", "nsd_tolerance_mm", "boundary_one_empty"} <= set(header)


def test_label_maps_need_a_label_and_grids_must_match(tmp_path):
    shape = (10, 10, 6)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 2:5, 2:4] = 1  # another structure
    labels[6:9, 6:9, 1:3] = 2  # the lesion
    save(tmp_path / "gt/case1.nii.gz", labels)
    save(tmp_path / "pred/case1.nii.gz", (labels == 2).astype(np.uint8) * 2)
    config = score.ScoreConfig(pred=str(tmp_path / "pred"), gt=str(tmp_path / "gt"), output=str(tmp_path / "out"))
    with pytest.raises(UserInputError, match=r"case1.nii.gz: label map with values 0, 1, 2; .*--label N"):
        score.score(config)
    assert not (tmp_path / "out").exists()
    config.label = 2
    result = score.score(config)
    assert result["records"][0]["dice"] == 1.0 and result["records"][0]["hd95_mm"] == 0.0
    save(tmp_path / "pred/case1.nii.gz", (labels == 2).astype(np.uint8), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(UserInputError, match=r"pred/case1.nii.gz: affine differs from its ground truth .*gt/case1.nii.gz"):
        score.score(config)


def test_score_of_predict_outputs_equals_the_evaluator(tmp_path, monkeypatch):
    """Done-when: the fixture SPiN segments NIfTI scans with ``spinseg.predict``; ``spinseg score`` on those
    masks and the ground truths gives the evaluator's numbers for the same subjects (as .npy lists)."""
    from test_predict import SMALL_CHECKPOINT, SMALL_CONFIG, coarse_template, ellipsoid_brain

    from spinseg.recipes.config import EvaluateConfig
    from spinseg.evaluation.evaluator import evaluate

    # A 4 mm MNI-like grid keeps the network affordable; scans on the template grid are not resampled.
    monkeypatch.setattr(predict, "template_grid", coarse_template)
    grid = coarse_template()
    scan_paths, mask_paths = [], []
    for index in range(3):
        volume, lesion = ellipsoid_brain(grid.shape, grid.affine, seed=index)
        # Vary the lesion per subject: a second lesion for one, none for another (empty ground truth).
        if index == 1:
            lesion[30:33, 35:38, 20:23] = True
            volume[lesion] = 20.0
        if index == 2:
            lesion[:] = False
        name = f"c0001s{index:04d}t01"
        save(tmp_path / "scans" / f"{name}.nii.gz", volume, grid.affine)
        save(tmp_path / "truth" / f"{name}_LesionSmooth_stx.nii.gz", lesion.astype(np.uint8), grid.affine)
        folder = tmp_path / "npy" / name
        folder.mkdir(parents=True)
        np.save(folder / f"{name}_t1w_stx.npy", volume)
        np.save(folder / f"{name}_LesionSmooth_stx.npy", lesion.astype(np.uint8))
        scan_paths.append(str(folder / f"{name}_t1w_stx.npy"))
        mask_paths.append(str(folder / f"{name}_LesionSmooth_stx.npy"))
    (tmp_path / "scans.txt").write_text("\n".join(scan_paths) + "\n")
    (tmp_path / "masks.txt").write_text("\n".join(mask_paths) + "\n")

    assert predict_main(["--model", "spin", "--checkpoint", SMALL_CHECKPOINT, "--model_config", SMALL_CONFIG,
                         "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "pred"), "--save_probability",
                         "--device", "cpu", "--batch_size", "24"]) == 0
    evaluated = evaluate(EvaluateConfig(
        multimodal_scan_paths=str(tmp_path / "scans.txt"), ground_truth_path=str(tmp_path / "masks.txt"),
        model_config=SMALL_CONFIG, restore_path=SMALL_CHECKPOINT, device="cpu", batch_size=24,
        output_path=str(tmp_path / "evaluation"), voxel_volume_ml=0.064,
        metrics=["release", "challenge", "size", "boundary"],
    ))
    scored = score.score(score.ScoreConfig(
        pred=str(tmp_path / "pred"), gt=str(tmp_path / "truth"), output=str(tmp_path / "score"),
        pred_suffix="_lesion_mask", gt_suffix="_LesionSmooth_stx",
    ))
    assert not scored["subjects"].without_prediction and not scored["subjects"].without_ground_truth
    # The fixture network marks voxels in every subject, so the comparison is not of empty masks.
    assert all(record["pred_volume_ml"] > 0 for record in scored["records"])
    assert scored["table2"] == pytest.approx(evaluated["table2"], rel=1e-12)
    for scored_row, evaluated_row in zip(reporting.challenge_table(scored["records"]),
                                         reporting.challenge_table(evaluated["records"]), strict=True):
        assert scored_row["key"] == evaluated_row["key"] and scored_row["subjects"] == evaluated_row["subjects"] == 3
        assert (scored_row["mean"], scored_row["std"]) == pytest.approx((evaluated_row["mean"], evaluated_row["std"]))
    evaluated_records = {record["subject_id"]: record for record in evaluated["records"]}
    for record in scored["records"]:
        expected = evaluated_records[record["subject_id"]]
        for key, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(record[key]), key
            elif isinstance(value, list):  # per-lesion volumes and detection
                assert record[key] == value, key
            else:
                assert record[key] == pytest.approx(value), key
    # Through JSON so that the NaN recall of an empty bin compares equal.
    assert json.dumps(reporting.size_table(scored["records"])) == json.dumps(reporting.size_table(evaluated["records"]))
    for name in ("report.md", "per_subject.csv", "per_subject.json", "results.txt", "dice_per_subject.png"):
        assert (tmp_path / "score" / name).is_file()
