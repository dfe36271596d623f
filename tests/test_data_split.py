"""The project's ATLAS split files and the reader of the data_split format."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from spinseg.datasets.splits import is_subject_id, list_splits, read_split, read_subject_list, subject_group, write_split
from spinseg.errors import UserInputError

SPLIT_ROOT = Path(__file__).resolve().parents[1] / "data_split" / "atlas"


def test_traintest_counts_and_disjoint():
    split = read_split(SPLIT_ROOT / "traintest")
    assert sorted(split) == ["test", "train"]
    assert len(split["train"]) == 212 and len(split["test"]) == 27
    assert not set(split["train"]) & set(split["test"])
    # The project's files are sorted, one ID per line.
    assert split["train"] == sorted(split["train"]) and split["test"] == sorted(split["test"])


def test_six_folds_cover_the_same_subjects_with_disjoint_validation():
    traintest = read_split(SPLIT_ROOT / "traintest")
    everyone = set(traintest["train"]) | set(traintest["test"])
    assert len(everyone) == 239
    assert list_splits(SPLIT_ROOT) == [f"6fold/fold_{k}" for k in range(1, 7)] + ["traintest"]
    validation_sets = []
    for fold in range(1, 7):
        split = read_split(SPLIT_ROOT / f"6fold/fold_{fold}")
        assert sorted(split) == ["train", "val"]
        assert not set(split["train"]) & set(split["val"])
        assert set(split["train"]) | set(split["val"]) == everyone
        assert len(split["val"]) in (39, 40)
        validation_sets.append(set(split["val"]))
    for first, second in itertools.combinations(validation_sets, 2):
        assert not first & second
    assert set().union(*validation_sets) == everyone


def test_cohorts_are_the_first_five_characters():
    subjects = read_split(SPLIT_ROOT / "traintest")["train"]
    assert {subject_group(s) for s in subjects} <= {f"c{n:04d}" for n in range(3, 12)}
    assert subject_group("c0008s0011t01") == "c0008"
    assert subject_group("sub-r012s034") == "R012"
    assert is_subject_id("sub-r001s001") and not is_subject_id("c008s0011t01")


def test_round_trip(tmp_path):
    write_split(tmp_path / "traintest", {"train": ["c0004s0002t01", "c0003s0001t01"], "test": ["c0005s0001t01"]})
    assert read_split(tmp_path / "traintest") == {"test": ["c0005s0001t01"], "train": ["c0003s0001t01", "c0004s0002t01"]}
    assert list_splits(tmp_path) == ["traintest"]


def test_missing_directory_and_file_are_named(tmp_path):
    with pytest.raises(UserInputError, match="nowhere"):
        read_split(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserInputError, match="empty_dir"):
        read_split(tmp_path / "empty_dir")
    with pytest.raises(UserInputError, match="train_subjects.txt"):
        read_subject_list(tmp_path / "train_subjects.txt")
    with pytest.raises(UserInputError, match="no_splits"):
        list_splits(tmp_path / "no_splits")


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "train_subjects.txt"
    path.write_text("\n  \n")
    with pytest.raises(UserInputError, match=r"train_subjects\.txt: split file is empty"):
        read_split(tmp_path)


@pytest.mark.parametrize("bad", ["c0008s0011", "c0008/c0008s0011t01/c0008s0011t01_t1w_stx.npy", "C0008S0011T01"])
def test_malformed_id_names_file_and_line(tmp_path, bad):
    path = tmp_path / "val_subjects.txt"
    path.write_text(f"c0003s0001t01\nc0003s0002t01\n{bad}\n")
    with pytest.raises(UserInputError) as raised:
        read_split(tmp_path)
    assert f"{path}:3" in str(raised.value) and "malformed" in str(raised.value)


def test_repeated_id_is_an_error(tmp_path):
    path = tmp_path / "train_subjects.txt"
    path.write_text("c0003s0001t01\nc0003s0001t01\n")
    with pytest.raises(UserInputError, match=r":2: subject c0003s0001t01 repeats line 1"):
        read_subject_list(path)
