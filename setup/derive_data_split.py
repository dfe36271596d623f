"""Derives the project's ``data_split/atlas`` subject lists from the published ATLAS R1.2 path lists.

Run once, from the repository root:

    python setup/derive_data_split.py /work/shared/reference/data_split/atlas

The reference lists hold release paths (``c0008/c0008s0011t01/c0008s0011t01_t1w_stx.npy``, one per
line, scans and ground truths paired line by line). This script checks each scans list against its
ground-truths list, keeps only the subject IDs and writes them sorted, one per line:

    data_split/atlas/traintest/{train,test}_subjects.txt
    data_split/atlas/6fold/fold_K/{train,val}_subjects.txt   (K = 1..6)

The project never reads the reference directory at run time; only the derived files.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.datasets.splits import write_split  # noqa: E402
from spinseg.errors import UserInputError, cli_entry, fail  # noqa: E402
from spinseg.io.files import read_lines  # noqa: E402

SCAN_PATTERN = re.compile(r"(c\d{4})/(c\d{4}s\d{4}t\d{2})/\2_t1w_stx\.npy")
TRUTH_PATTERN = re.compile(r"(c\d{4})/(c\d{4}s\d{4}t\d{2})/\2_LesionSmooth_stx\.npy")


def subjects_of(scans_path: Path, truths_path: Path) -> list[str]:
    """Subject IDs of a paired (scans, ground truths) reference list; checks the pairing."""
    subjects = []
    for path in (scans_path, truths_path):
        if not path.is_file():
            raise fail(path, "reference list not found")
    scans, truths = read_lines(scans_path), read_lines(truths_path)
    if len(scans) != len(truths):
        raise fail(truths_path, f"{len(truths)} lines but {scans_path} has {len(scans)}")
    for line_number, (scan, truth) in enumerate(zip(scans, truths), start=1):
        scan_match, truth_match = SCAN_PATTERN.fullmatch(scan), TRUTH_PATTERN.fullmatch(truth)
        if not scan_match or not truth_match or scan_match.group(2) != truth_match.group(2):
            raise fail(f"{scans_path}:{line_number}", f"unexpected pair {scan!r} / {truth!r}")
        subjects.append(scan_match.group(2))
    if len(set(subjects)) != len(subjects):
        raise fail(scans_path, "repeated subjects")
    return subjects


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """Reads the reference lists and writes the derived split files."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference_dir", help="published lists, e.g. /work/shared/reference/data_split/atlas")
    parser.add_argument("--output_dir", default="data_split/atlas")
    args = parser.parse_args(argv)
    reference, output = Path(args.reference_dir), Path(args.output_dir)
    train = subjects_of(reference / "traintest/training/train_scans.txt",
                        reference / "traintest/training/train_ground_truths.txt")
    test = subjects_of(reference / "traintest/testing/test_scans.txt",
                       reference / "traintest/testing/test_ground_truths.txt")
    if set(train) & set(test):
        raise UserInputError("train and test reference lists overlap")
    write_split(output / "traintest", {"train": train, "test": test})
    fold = 1
    while (reference / f"6fold/training/scans/train_scans-{fold}.txt").is_file():
        fold_train = subjects_of(reference / f"6fold/training/scans/train_scans-{fold}.txt",
                                 reference / f"6fold/training/ground_truths/train_ground_truths-{fold}.txt")
        fold_val = subjects_of(reference / f"6fold/validation/scans/val_scans-{fold}.txt",
                               reference / f"6fold/validation/ground_truths/val_ground_truths-{fold}.txt")
        write_split(output / f"6fold/fold_{fold}", {"train": fold_train, "val": fold_val})
        fold += 1
    print(f"wrote {output}: {len(train)} train, {len(test)} test, {fold - 1} folds")


if __name__ == "__main__":
    main()
