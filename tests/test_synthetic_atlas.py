"""The synthetic ATLAS generator: layout, determinism, visible lesions, small-lesion slices."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_python
from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.datasets.small_lesion import small_lesion_slices
from spinseg.datasets.splits import list_splits, read_split
from spinseg.datasets.synthetic import (
    default_shape,
    generate_subject,
    load_head_model,
    TEST_SMALL_LESIONS,
    make_splits,
    subject_files,
    write_synthetic_atlas,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (48, 56, 45)
N_SUBJECTS = 6


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "raw"
    summaries = write_synthetic_atlas(root, n_subjects=N_SUBJECTS, seed=0, shape=SHAPE, n_folds=3)
    return root, summaries


def _relative_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def test_layout_file_names(raw_tree):
    root, _ = raw_tree
    expected = {"synthetic_summary.json"}
    ids = ["c0003s0001t01", "c0004s0001t01", "c0005s0001t01", "c0006s0001t01", "c0007s0001t01", "c0008s0001t01"]
    for index, subject in enumerate(ids):
        folder = f"{subject[:5]}/{subject}/{subject}"
        expected |= {f"{folder}_t1w_stx.nii.gz", f"{folder}_LesionSmooth_stx.nii.gz"}
        if index % 5 == 4:
            expected.add(f"{folder}_LesionSmooth_1_stx.nii.gz")
    expected |= {"data_split/traintest/train_subjects.txt", "data_split/traintest/test_subjects.txt"}
    for fold in range(1, 4):
        expected |= {f"data_split/3fold/fold_{fold}/train_subjects.txt", f"data_split/3fold/fold_{fold}/val_subjects.txt"}
    assert _relative_files(root) == expected
    # No temporary files left behind by the atomic writes.
    assert not [p for p in root.rglob(".*")]


def test_splits_are_readable_and_consistent(raw_tree):
    root, _ = raw_tree
    assert list_splits(root / "data_split") == ["3fold/fold_1", "3fold/fold_2", "3fold/fold_3", "traintest"]
    traintest = read_split(root / "data_split/traintest")
    assert len(traintest["test"]) == 1 and len(traintest["train"]) == 5  # round(6 * 0.2)
    everyone = set(traintest["train"]) | set(traintest["test"])
    validation = [set(read_split(root / f"data_split/3fold/fold_{k}")["val"]) for k in (1, 2, 3)]
    assert set().union(*validation) == everyone and sum(map(len, validation)) == N_SUBJECTS
    assert make_splits(sorted(everyone), 0, 0.2, 3) == make_splits(sorted(everyone), 0, 0.2, 3)


def test_nifti_contents(raw_tree):
    root, summaries = raw_tree
    scan_path, mask_paths = subject_files(root, 0)
    scan, mask = nib.load(scan_path), nib.load(mask_paths[0])
    assert scan.shape == SHAPE and scan.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
    # The affine follows the spacing of the resampled grid and keeps the template's origin.
    np.testing.assert_allclose(np.diag(scan.affine)[:3], (np.array([197, 233, 189]) - 1) / (np.array(SHAPE) - 1))
    np.testing.assert_allclose(scan.affine[:3, 3], [-98, -134, -72])
    np.testing.assert_array_equal(scan.affine, mask.affine)
    subject = generate_subject(0, 0, SHAPE)
    np.testing.assert_array_equal(np.asarray(scan.dataobj), subject["t1"])
    np.testing.assert_array_equal(np.asarray(mask.dataobj), subject["mask"])
    assert set(np.unique(subject["mask"])) <= {0, 1}
    summary = json.loads((root / "synthetic_summary.json").read_text())
    assert summary["subjects"][0]["lesion_voxels"] == int(subject["mask"].sum()) == summaries[0]["lesion_voxels"]


def test_mask_split_in_two_overlapping_files(raw_tree):
    root, _ = raw_tree
    _, mask_paths = subject_files(root, 4)
    assert [p.name for p in mask_paths] == ["c0007s0001t01_LesionSmooth_stx.nii.gz", "c0007s0001t01_LesionSmooth_1_stx.nii.gz"]
    first, second = (np.asarray(nib.load(p).dataobj) for p in mask_paths)
    assert first.any() and second.any() and (first & second).any()  # the OR matters, a sum would give 2
    held_out = "c0007s0001t01" in read_split(root / "data_split/traintest")["test"]
    extra = TEST_SMALL_LESIONS if held_out else 0  # test subjects carry the extra small lesions
    np.testing.assert_array_equal(first | second, generate_subject(4, 0, SHAPE, extra)["mask"])


def test_test_subjects_get_extra_small_lesions():
    from scipy import ndimage

    # Full 1 mm grid: on the coarse test grid a 5-100 mm^3 lesion is a voxel or two and may warp away.
    plain, extra = generate_subject(1, 0), generate_subject(1, 0, extra_small_lesions=TEST_SMALL_LESIONS)
    components = [ndimage.label(subject["mask"], np.ones((3, 3, 3)))[1] for subject in (plain, extra)]
    assert components[1] >= components[0] + TEST_SMALL_LESIONS // 2
    assert len(small_lesion_slices(extra["mask"])) > len(small_lesion_slices(plain["mask"]))
    assert extra["lesion_volumes"] == plain["lesion_volumes"]


def test_deterministic_and_seed_dependent():
    first, again = generate_subject(2, 5, SHAPE), generate_subject(2, 5, SHAPE)
    assert first["t1"].tobytes() == again["t1"].tobytes() and first["mask"].tobytes() == again["mask"].tobytes()
    other_seed = generate_subject(2, 6, SHAPE)
    other_index = generate_subject(3, 5, SHAPE)
    assert not np.array_equal(first["t1"], other_seed["t1"])
    assert not np.array_equal(first["mask"], other_seed["mask"])
    assert not np.array_equal(first["t1"], other_index["t1"])


def test_parallel_equals_serial(tmp_path, raw_tree):
    root, _ = raw_tree
    write_synthetic_atlas(tmp_path, n_subjects=N_SUBJECTS, seed=0, shape=SHAPE, n_folds=3, n_workers=2)
    assert _relative_files(tmp_path) == _relative_files(root)
    for index in range(N_SUBJECTS):
        (scan, masks), (scan_serial, masks_serial) = subject_files(tmp_path, index), subject_files(root, index)
        for parallel_path, serial_path in zip([scan, *masks], [scan_serial, *masks_serial]):
            assert np.asarray(nib.load(parallel_path).dataobj).tobytes() == np.asarray(nib.load(serial_path).dataobj).tobytes()
    for name in ("traintest/train_subjects.txt", "3fold/fold_2/val_subjects.txt"):
        assert (tmp_path / "data_split" / name).read_text() == (root / "data_split" / name).read_text()


def test_lesions_are_clearly_hypointense():
    model = load_head_model(SHAPE)
    for index in range(4):
        subject = generate_subject(index, 1, SHAPE)
        t1, lesion = subject["t1"], subject["mask"] > 0
        assert lesion.sum() > 0
        white_matter = (model.white_matter > 0.9) & ~lesion
        # Lesion cores sit near CSF intensity: far below white matter.
        assert t1[lesion].mean() < 0.6 * t1[white_matter].mean()
        assert t1[lesion].mean() < 0.8 * t1[(model.gray_matter > 0.9) & ~lesion].mean()


def test_small_lesion_slices_exist(raw_tree):
    _, summaries = raw_tree
    assert sum(s["small_lesion_slices"] for s in summaries) > 0
    # Also on a finer grid, where lesion cross-sections are larger.
    shape = default_shape(2)
    assert shape == (98, 116, 94)
    counts = [len(small_lesion_slices(generate_subject(index, 0, shape)["mask"])) for index in range(2)]
    assert sum(counts) > 0


def test_intensity_statistics_resemble_atlas():
    shape = default_shape(2)
    means, stds = [], []
    for index in range(2):
        t1 = generate_subject(index, 0, shape)["t1"]
        means.append(t1.mean())
        stds.append(t1.std())
    assert abs(np.mean(means) - ATLAS_MEAN) < 0.2 * ATLAS_MEAN
    assert abs(np.mean(stds) - ATLAS_STD) < 0.2 * ATLAS_STD


def test_cli_bids_layout_and_bad_flag(tmp_path):
    script = str(REPO / "setup/make_synthetic_atlas.py")
    completed = run_python(
        [script, "--output_dir", str(tmp_path / "bids"), "--n_subjects", "2", "--shape", "24", "28", "24",
         "--format", "bids"], timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "sub-r001s001" in completed.stdout
    anat = "Training/R001/sub-r001s002/ses-1/anat/sub-r001s002_ses-1_space-MNI152NLin2009aSym"
    assert (tmp_path / "bids" / f"{anat}_T1w.nii.gz").is_file()
    assert (tmp_path / "bids" / f"{anat}_label-L_desc-T1lesion_mask.nii.gz").is_file()
    assert not (tmp_path / "bids" / "data_split").exists()
    bad = run_python([script, "--output_dir", str(tmp_path / "bad"), "--n_subjects", "0"], timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--n_subjects" in bad.stderr
    assert not (tmp_path / "bad").exists()
