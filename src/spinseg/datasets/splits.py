"""The project's data-split format: one subject ID per line, one file per role.

A split directory holds ``<role>_subjects.txt`` files, e.g. ``traintest/train_subjects.txt`` and
``traintest/test_subjects.txt``, or ``6fold/fold_3/train_subjects.txt`` and ``val_subjects.txt``.
IDs are ATLAS R1.2 subjects (``c0008s0011t01``; cohort = first 5 characters) or ATLAS v2.0 BIDS
subjects (``sub-r001s001``; site folder ``R001``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from spinseg.errors import UserInputError, fail

SUBJECTS_SUFFIX = "_subjects.txt"
R12_SUBJECT_PATTERN = re.compile(r"c\d{4}s\d{4}t\d{2}")
BIDS_SUBJECT_PATTERN = re.compile(r"sub-r(\d{3})s\d{3}")


def is_subject_id(text: str) -> bool:
    """True when ``text`` is an ATLAS R1.2 (``c0008s0011t01``) or v2.0 (``sub-r001s001``) subject ID."""
    return bool(R12_SUBJECT_PATTERN.fullmatch(text) or BIDS_SUBJECT_PATTERN.fullmatch(text))


def subject_group(subject_id: str) -> str:
    """The folder that groups a subject: its cohort (``c0008``) for R1.2, its site (``R001``) for v2.0."""
    bids = BIDS_SUBJECT_PATTERN.fullmatch(subject_id)
    if bids:
        return f"R{bids.group(1)}"
    if R12_SUBJECT_PATTERN.fullmatch(subject_id):
        return subject_id[:5]
    raise ValueError(f"not a subject ID: {subject_id!r}")


def read_subject_list(path: str | os.PathLike) -> list[str]:
    """Reads one subject-list file; returns its IDs in file order.

    Raises :class:`UserInputError` naming the file when it is missing or empty, and naming the file
    and line when a line is not a subject ID or repeats an earlier one.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(path, "split file not found")
    subjects: list[str] = []
    seen: dict[str, int] = {}
    with open(path) as stream:
        for line_number, line in enumerate(stream, start=1):
            text = line.strip()
            if not text:
                continue
            if not is_subject_id(text):
                raise fail(f"{path}:{line_number}", f"malformed subject ID {text!r}")
            if text in seen:
                raise fail(f"{path}:{line_number}", f"subject {text} repeats line {seen[text]}")
            seen[text] = line_number
            subjects.append(text)
    if not subjects:
        raise fail(path, "split file is empty")
    return subjects


def read_split(split_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Reads every ``<role>_subjects.txt`` of a split directory: ``{"train": [...], "test": [...]}``.

    Keys are the roles in sorted order; values keep file order. Raises :class:`UserInputError` when
    the directory is missing or holds no subject files, or any file is empty or malformed.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise fail(split_dir, "split directory not found")
    files = sorted(split_dir.glob(f"*{SUBJECTS_SUFFIX}"))
    if not files:
        raise fail(split_dir, f"no *{SUBJECTS_SUFFIX} files in split directory")
    return {file.name[: -len(SUBJECTS_SUFFIX)]: read_subject_list(file) for file in files}


def _natural_key(text: str) -> list:
    # fold_10 sorts after fold_9.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def list_splits(data_split_root: str | os.PathLike) -> list[str]:
    """Relative names (``"traintest"``, ``"6fold/fold_1"``, ...) of the split directories under a root.

    A split directory is any directory holding at least one ``*_subjects.txt``; names are POSIX
    paths relative to ``data_split_root`` in natural order. Raises :class:`UserInputError` when the
    root is missing or holds no split.
    """
    root = Path(data_split_root)
    if not root.is_dir():
        raise fail(root, "data split directory not found")
    names = sorted(
        {file.parent.relative_to(root).as_posix() for file in root.rglob(f"*{SUBJECTS_SUFFIX}")},
        key=_natural_key,
    )
    if not names:
        raise fail(root, f"no *{SUBJECTS_SUFFIX} files under the data split directory")
    return names


def write_split(split_dir: str | os.PathLike, split: dict[str, list[str]]) -> None:
    """Writes ``{"train": [...], ...}`` as sorted ``<role>_subjects.txt`` files (atomically)."""
    from spinseg.io.files import write_lines

    for role, subjects in split.items():
        write_lines(Path(split_dir) / f"{role}{SUBJECTS_SUFFIX}", sorted(subjects))


__all__ = [
    "UserInputError",
    "is_subject_id",
    "list_splits",
    "read_split",
    "read_subject_list",
    "subject_group",
    "write_split",
]
