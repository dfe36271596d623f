"""ATLAS setup: conversion, lists, idempotence, missing subjects, bad inputs, BIDS, workers."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BAD, BREAKERS, break_nan, break_truncated, run_python, write_raw_atlas_tree
from spinseg.datasets.atlas_raw import discover
from spinseg.datasets.setup_atlas import make_bids_splits, setup_atlas, setup_main
from spinseg.datasets.splits import read_split
from spinseg.datasets.synthetic import write_synthetic_atlas
from spinseg.errors import cli_entry
from spinseg.io.files import read_lines

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 28, 24)
QUIET = {"log": lambda _: None}
main = cli_entry(setup_main)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "atlas"
    write_synthetic_atlas(root, n_subjects=6, seed=1, shape=SHAPE, n_folds=3, test_fraction=0.34)
    return root


@pytest.fixture(scope="module")
def converted(synthetic_raw, tmp_path_factory):
    work = tmp_path_factory.mktemp("converted")
    setup_atlas(synthetic_raw, work / "spin", synthetic_raw / "data_split", work / "lists", **QUIET)
    return work


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_output_layout_and_contents(synthetic_raw, converted):
    spin = converted / "spin"
    subjects = discover(synthetic_raw)
    assert set(_files(spin)) == {
        f"{s[:5]}/{s}/{s}{suffix}" for s in subjects for suffix in ("_t1w_stx.npy", "_LesionSmooth_stx.npy")}
    for subject in subjects.values():
        folder = spin / subject.group / subject.subject_id
        scan = np.load(folder / f"{subject.subject_id}_t1w_stx.npy")
        mask = np.load(folder / f"{subject.subject_id}_LesionSmooth_stx.npy")
        assert scan.dtype == np.float32 and scan.shape == SHAPE
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        np.testing.assert_array_equal(scan, np.asarray(nib.load(subject.scan_path).dataobj))


def test_masks_are_merged_by_or(synthetic_raw, converted):
    subject = discover(synthetic_raw)["c0007s0001t01"]
    assert len(subject.mask_paths) == 2
    first, second = (np.asarray(nib.load(p).dataobj) > 0 for p in subject.mask_paths)
    assert (first & second).any()
    merged = np.load(converted / "spin/c0007/c0007s0001t01/c0007s0001t01_LesionSmooth_stx.npy")
    np.testing.assert_array_equal(merged, (first | second).astype(np.uint8))


def test_lists_pair_line_by_line_in_split_order(synthetic_raw, converted):
    lists, spin = converted / "lists", str(converted / "spin")
    expected = {
        ("training/atlas/traintest/train", ""): ("traintest", "train"),
        ("testing/atlas/traintest/test", ""): ("traintest", "test"),
    }
    for fold in (1, 2, 3):
        expected[("training/atlas/3fold/train", f"-{fold}")] = (f"3fold/fold_{fold}", "train")
        expected[("validation/atlas/3fold/val", f"-{fold}")] = (f"3fold/fold_{fold}", "val")
    written = {p.relative_to(lists).as_posix() for p in lists.rglob("*.txt")}
    assert written == {f"{stem}_{kind}{suffix}.txt" for stem, suffix in expected for kind in ("scans", "ground_truths")}
    for (stem, suffix), (split_name, role) in expected.items():
        subjects = read_split(synthetic_raw / "data_split" / split_name)[role]
        scans = read_lines(lists / f"{stem}_scans{suffix}.txt")
        truths = read_lines(lists / f"{stem}_ground_truths{suffix}.txt")
        assert scans == [os.path.join(spin, s[:5], s, f"{s}_t1w_stx.npy") for s in subjects]
        assert truths == [os.path.join(spin, s[:5], s, f"{s}_LesionSmooth_stx.npy") for s in subjects]
        assert all(Path(p).is_file() for p in scans + truths)


def test_second_run_rewrites_nothing_and_touched_subject_is_redone(synthetic_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    arguments = (raw, tmp_path / "spin", raw / "data_split", tmp_path / "lists")
    setup_atlas(*arguments, **QUIET)
    before = _mtimes(tmp_path / "spin") | {f"lists/{k}": v for k, v in _mtimes(tmp_path / "lists").items()}
    raw_before = _files(raw)
    result = setup_atlas(*arguments, **QUIET)
    assert set(result["statuses"].values()) == {"up to date"}
    after = _mtimes(tmp_path / "spin") | {f"lists/{k}": v for k, v in _mtimes(tmp_path / "lists").items()}
    assert after == before
    assert _files(raw) == raw_before  # raw data never modified
    # A newer input makes only that subject convert again.
    scan = raw / "c0004/c0004s0001t01/c0004s0001t01_t1w_stx.nii.gz"
    os.utime(scan, ns=(scan.stat().st_atime_ns, max(before.values()) + 10**9))
    result = setup_atlas(*arguments, **QUIET)
    assert [s for s, status in result["statuses"].items() if status == "converted"] == ["c0004s0001t01"]


def test_missing_subject_cli_exits_2_with_one_line_and_writes_nothing(synthetic_raw, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(synthetic_raw / "data_split", split)
    train_file = split / "traintest/train_subjects.txt"
    train_file.write_text(train_file.read_text() + "c0010s0099t01\nc0011s0099t01\n")
    completed = run_python(
        [str(REPO / "setup/setup_dataset_atlas.py"), "--atlas_dir", str(synthetic_raw),
         "--output_dir", str(tmp_path / "spin"), "--data_split_dir", str(split), "--lists_dir", str(tmp_path / "lists")], timeout=60)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in completed.stderr
    assert str(train_file) in lines[0] and "2 listed subject(s)" in lines[0] and "c0010s0099t01" in lines[0]
    assert not (tmp_path / "lists").exists() and not (tmp_path / "spin").exists()


def test_allow_missing_warns_once_and_lists_present_subjects(synthetic_raw, tmp_path, capsys):
    split = tmp_path / "split"
    shutil.copytree(synthetic_raw / "data_split", split)
    test_file = split / "traintest/test_subjects.txt"
    present = read_lines(test_file)
    test_file.write_text("c0003s0099t01\n" + test_file.read_text())
    main(["--atlas_dir", str(synthetic_raw), "--output_dir", str(tmp_path / "spin"), "--data_split_dir", str(split),
          "--lists_dir", str(tmp_path / "lists"), "--allow_missing"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "c0003s0099t01" in warnings[0]
    scans = read_lines(tmp_path / "lists/testing/atlas/traintest/test_scans.txt")
    assert [Path(p).name for p in scans] == [f"{s}_t1w_stx.npy" for s in present]


# ------------------------------------------------------------------------------------------------
# Bad inputs, on hand-made trees of tiny volumes


def _run_main(root: Path, capsys, *extra: str) -> tuple[int, str]:
    argv = ["--atlas_dir", str(root / "raw"), "--output_dir", str(root / "spin"),
            "--data_split_dir", str(root / "split"), "--lists_dir", str(root / "lists"), *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_handmade_tree_converts_including_plain_nii(tmp_path, capsys):
    write_raw_atlas_tree(tmp_path)
    code, err = _run_main(tmp_path, capsys)
    assert code == 0 and err == ""
    assert (tmp_path / "spin/c0005/c0005s0003t01/c0005s0003t01_t1w_stx.npy").is_file()
    assert len(read_lines(tmp_path / "lists/training/atlas/traintest/train_scans.txt")) == 2


def test_defaced_t1_name_is_accepted(tmp_path, capsys):
    raw = write_raw_atlas_tree(tmp_path)
    folder = raw / "c0004/c0004s0002t01"
    (folder / f"{BAD}_t1w_stx.nii.gz").rename(folder / f"{BAD}_t1w_deface_stx.nii.gz")
    code, _ = _run_main(tmp_path, capsys)
    assert code == 0
    assert (tmp_path / f"spin/c0004/{BAD}/{BAD}_t1w_stx.npy").is_file()


@pytest.mark.parametrize("case", list(BREAKERS))
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, case):
    raw = write_raw_atlas_tree(tmp_path)
    breaker, problem = BREAKERS[case]
    named = breaker(raw / "c0004" / BAD)
    code, err = _run_main(tmp_path, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}") and problem in lines[0], lines
    assert not (tmp_path / "spin/c0004").exists()  # nothing written for the bad subject
    assert not (tmp_path / "lists").exists()
    assert not [p for p in (tmp_path / "spin").rglob(".*")] if (tmp_path / "spin").exists() else True


def test_missing_raw_folder(tmp_path, capsys):
    code, err = _run_main(tmp_path, capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'raw'}: raw ATLAS folder not found"


def test_bad_input_cli_has_no_traceback(tmp_path):
    raw = write_raw_atlas_tree(tmp_path)
    named = break_truncated(raw / "c0004" / BAD)
    completed = run_python(
        [str(REPO / "setup/setup_dataset_atlas.py"), "--atlas_dir", str(raw), "--output_dir",
         str(tmp_path / "spin"), "--data_split_dir", str(tmp_path / "split"), "--lists_dir", str(tmp_path / "lists")], timeout=60)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()] and str(named) in completed.stderr


# ------------------------------------------------------------------------------------------------
# ATLAS v2.0 (BIDS) and workers


def test_bids_round_trip(tmp_path, capsys):
    raw = tmp_path / "bids"
    write_synthetic_atlas(raw, n_subjects=5, seed=2, shape=SHAPE, data_format="bids")
    lists = tmp_path / "lists"
    arguments = ["--format", "bids", "--atlas_dir", str(raw), "--output_dir", str(tmp_path / "spin"),
                 "--lists_dir", str(lists), "--n_folds", "2", "--split_seed", "4"]
    assert main(arguments) == 0
    subjects = [f"sub-r001s{n:03d}" for n in range(1, 6)]
    for subject in subjects:
        folder = tmp_path / "spin/R001" / subject
        scan = np.load(folder / f"{subject}_T1w.npy")
        mask = np.load(folder / f"{subject}_label-L_desc-T1lesion_mask.npy")
        raw_stem = raw / f"Training/R001/{subject}/ses-1/anat/{subject}_ses-1_space-MNI152NLin2009aSym"
        np.testing.assert_array_equal(scan, np.asarray(nib.load(f"{raw_stem}_T1w.nii.gz").dataobj))
        np.testing.assert_array_equal(mask, np.asarray(nib.load(f"{raw_stem}_label-L_desc-T1lesion_mask.nii.gz").dataobj))
    split = read_split(lists / "data_split/atlas_v2/traintest")
    assert sorted(split) == ["test", "train", "val"] and sorted(sum(split.values(), [])) == subjects
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (3, 1, 1)
    assert split == make_bids_splits(subjects, seed=4, n_folds=2)["traintest"]
    folds = [read_split(lists / f"data_split/atlas_v2/2fold/fold_{k}") for k in (1, 2)]
    assert set(folds[0]["val"]) | set(folds[1]["val"]) == set(split["train"]) | set(split["val"])
    for role, folder in (("train", "training"), ("val", "validation"), ("test", "testing")):
        scans = read_lines(lists / f"{folder}/atlas_v2/traintest/{role}_scans.txt")
        truths = read_lines(lists / f"{folder}/atlas_v2/traintest/{role}_ground_truths.txt")
        assert [Path(p).name for p in scans] == [f"{s}_T1w.npy" for s in split[role]]
        assert [Path(p).name for p in truths] == [f"{s}_label-L_desc-T1lesion_mask.npy" for s in split[role]]
    assert read_lines(lists / "validation/atlas_v2/2fold/val_scans-2.txt")
    # Reusing the saved split reproduces the same lists.
    before = _files(lists)
    assert main(arguments[:-4] + ["--data_split_dir", str(lists / "data_split/atlas_v2")]) == 0
    assert _files(lists) == before


def test_bids_splits_are_seeded():
    subjects = [f"sub-r00{site}s{n:03d}" for site in (1, 2) for n in range(1, 21)]
    first = make_bids_splits(subjects, seed=1)
    assert first == make_bids_splits(list(reversed(subjects)), seed=1)
    assert first != make_bids_splits(subjects, seed=2)
    assert [len(first["traintest"][r]) for r in ("train", "val", "test")] == [32, 4, 4]


def test_two_workers_give_identical_outputs(synthetic_raw, converted, tmp_path):
    setup_atlas(synthetic_raw, tmp_path / "spin", synthetic_raw / "data_split", tmp_path / "lists", n_workers=2, **QUIET)
    assert _files(tmp_path / "spin") == _files(converted / "spin")
    serial = {k: v.replace(str(converted / "spin").encode(), b"SPIN") for k, v in _files(converted / "lists").items()}
    parallel = {k: v.replace(str(tmp_path / "spin").encode(), b"SPIN") for k, v in _files(tmp_path / "lists").items()}
    assert parallel == serial


def test_two_workers_stop_on_a_bad_subject(tmp_path, capsys):
    raw = write_raw_atlas_tree(tmp_path)
    named = break_nan(raw / "c0004" / BAD)
    code, err = _run_main(tmp_path, capsys, "--n_workers", "2")
    assert code == 2 and str(named) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lists").exists()


def test_n_folds_is_for_bids_only(tmp_path, capsys):
    write_raw_atlas_tree(tmp_path)
    code, err = _run_main(tmp_path, capsys, "--n_folds", "3")
    assert code == 2 and "--n_folds" in err and not (tmp_path / "spin").exists()
