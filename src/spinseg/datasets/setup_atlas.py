"""Library behind ``setup/setup_dataset_atlas.py`` and ``setup/setup_dataset_atlas_small_lesion.py``.

Setup converts raw ATLAS subjects to ``.npy`` and writes path lists:

- scans: ``<output_dir>/<cohort>/<subject>/<subject>_t1w_stx.npy``, float32, the full volume as stored;
- ground truths: ``..._LesionSmooth_stx.npy``, **uint8** in {0, 1}: the logical OR of all of the
  subject's masks, each binarised as value > 0 (loaders should also accept the release's float32 files);
- lists: ``<lists_dir>/{training,validation,testing}/atlas/<split>/<role>_{scans,ground_truths}[-K].txt``,
  one path per line (``output_dir`` as given joined with the relative path), in split-file order;
  line k of a scans list pairs with line k of its ground-truths list.

ATLAS v2.0 (BIDS) subjects go to ``<output_dir>/R0NN/sub-rXXXsYYY/sub-rXXXsYYY_{T1w,label-L_desc-
T1lesion_mask}.npy`` and their lists to ``.../atlas_v2/...``; v2.0 publishes no split for its labelled
set, so :func:`make_bids_splits` makes a seeded one and setup saves it under
``<lists_dir>/data_split/atlas_v2``.

The small-lesion setup writes, per test subject, ``<data_dir>/<group>/<subject>/<subject>_small_lesion_
slices.txt`` (the qualifying axial slice indices, one per line, possibly none) and
``<subject>_small_lesion_map.npy`` (uint8 (H, W, D): the ground truth on those slices, 0 elsewhere),
and four line-paired lists in ``<folder of the test list>/small_lesion/``.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from spinseg.constants import ATLAS_MASK_SUFFIX, SMALL_LESION_MAX_PIXELS
from spinseg.datasets.atlas_raw import (
    BIDS,
    FORMATS,
    R12,
    RawSubject,
    discover,
    load_subject,
    output_relative_paths,
)
from spinseg.datasets.small_lesion import small_lesion_map, small_lesion_slices
from spinseg.datasets.splits import (
    BIDS_SUBJECT_PATTERN,
    R12_SUBJECT_PATTERN,
    SUBJECTS_SUFFIX,
    list_splits,
    read_split,
    subject_group,
)
from spinseg.errors import UserInputError, fail, warn
from spinseg.io.budgets import complete_npy_shape
from spinseg.io.files import read_lines, remove_stale_temporaries, save_npy, write_lines

DEFAULT_ATLAS_DIR = "data/atlas/atlas_standard"
DEFAULT_OUTPUT_DIR = "data/atlas_spin/atlas_standard"
DEFAULT_DATA_SPLIT_DIR = "data_split/atlas"
DEFAULT_TEST_LIST = "testing/atlas/traintest/test_ground_truths.txt"
DEFAULT_TEST_SCANS_LIST = "testing/atlas/traintest/test_scans.txt"
DATASET_NAMES = {R12: "atlas", BIDS: "atlas_v2"}
ROLE_FOLDERS = {"train": "training", "val": "validation", "test": "testing"}
BIDS_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, by subject
SHOWN_MISSING = 5


# ---------------------------------------------------------------------------------------------
# Conversion of one subject


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def is_up_to_date(subject: RawSubject, outputs: tuple[Path, Path]) -> bool:
    """True when both outputs are whole and fit the raw scan, and are no older than every input file.

    Whole: each ``.npy`` is exactly as long as its header says, with the scan's shape from
    the raw NIfTI header and the dtypes setup writes (float32 scan, uint8 mask), so an output that was
    truncated or replaced after the run is redone even when its time looks newer.
    """
    scan_output, mask_output = outputs
    found = complete_npy_shape(scan_output), complete_npy_shape(mask_output)
    if None in found:
        return False
    try:
        raw_shape = tuple(int(n) for n in nib.load(subject.scan_path).header.get_data_shape())
    except Exception:  # noqa: BLE001 - an unreadable raw scan is converted, so that it fails with its own line
        return False
    (scan_shape, scan_dtype), (mask_shape, mask_dtype) = found
    if scan_shape != raw_shape or mask_shape != raw_shape or scan_dtype != np.float32 or mask_dtype != np.uint8:
        return False
    newest_input = max(_mtime(path) for path in (subject.scan_path, *subject.mask_paths))
    return min(_mtime(path) for path in outputs) >= newest_input


def convert_subject(subject: RawSubject, output_dir: str | os.PathLike, data_format: str = R12) -> str:
    """Validates one raw subject, then writes its scan (float32) and merged mask (uint8) ``.npy``.

    Returns ``"converted"`` or ``"up to date"`` (outputs newer than inputs: nothing is written).
    Raw files are only read. Any invalid input raises before anything of the subject is written.
    """
    scan_relative, mask_relative = output_relative_paths(subject.subject_id, subject.group, data_format)
    scan_output, mask_output = Path(output_dir) / scan_relative, Path(output_dir) / mask_relative
    remove_stale_temporaries((scan_output, mask_output))  # half-written files of a killed run
    if is_up_to_date(subject, (scan_output, mask_output)):
        return "up to date"
    scan, mask = load_subject(subject)
    save_npy(mask_output, mask)
    # The scan is written last, so an interrupted subject lacks its scan and is redone next time.
    save_npy(scan_output, scan)
    return "converted"


def _convert_task(arguments) -> tuple[str, str]:
    subject, output_dir, data_format = arguments
    return subject.subject_id, convert_subject(subject, output_dir, data_format)


def convert_subjects(subjects: list[RawSubject], output_dir, data_format: str, n_workers: int = 1,
                     log: Callable[[str], None] = print) -> dict[str, str]:
    """Converts subjects (in parallel with ``n_workers`` > 1); returns ``{subject_id: status}``.

    The first invalid subject stops the run: pending subjects are cancelled, running ones finish.
    """
    tasks = [(subject, output_dir, data_format) for subject in subjects]
    statuses: dict[str, str] = {}
    if n_workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            subject_id, status = _convert_task(task)
            statuses[subject_id] = status
            log(f"{subject_id}: {status}")
        return statuses
    with ProcessPoolExecutor(max_workers=n_workers) as pool:
        try:
            for subject_id, status in pool.map(_convert_task, tasks):
                statuses[subject_id] = status
                log(f"{subject_id}: {status}")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return statuses


# ---------------------------------------------------------------------------------------------
# Splits and lists


def write_lines_if_changed(path: str | os.PathLike, lines: list[str]) -> bool:
    """Writes ``lines`` atomically unless the file already holds exactly them; True when written.

    Keeps a re-run from touching anything (mtimes stay), so downstream tools see no change.
    """
    text = "".join(f"{line}\n" for line in lines)
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    write_lines(path, lines)
    return True


def make_bids_splits(subject_ids: list[str], seed: int = 1, n_folds: int = 0) -> dict[str, dict[str, list[str]]]:
    """Seeded split of ATLAS v2.0 subjects: ``{"traintest": {"train", "val", "test"}, "<K>fold/fold_k": ...}``.

    Subjects are sorted, permuted with ``numpy.random.default_rng(seed)``; the first
    ``round(0.1 n)`` (at least 1 when n >= 3) are test, the next as many validation, the rest train.
    With ``n_folds`` K, train+val (sorted, permuted again by the same generator) is cut into K
    validation folds with ``numpy.array_split``.
    """
    ordered = sorted(subject_ids)
    n = len(ordered)
    rng = np.random.default_rng(seed)
    permuted = [ordered[i] for i in rng.permutation(n)]
    n_held = int(round(BIDS_FRACTIONS[2] * n))
    if n >= 3:
        n_held = max(1, n_held)
    test, val, train = permuted[:n_held], permuted[n_held:2 * n_held], permuted[2 * n_held:]
    traintest = {"train": sorted(train)}
    if val:
        traintest["val"] = sorted(val)
    if test:
        traintest["test"] = sorted(test)
    splits = {"traintest": traintest}
    if n_folds:
        pool = sorted(train + val)
        if n_folds < 2 or n_folds > len(pool):
            raise UserInputError(f"--n_folds {n_folds}: expected 2 <= folds <= {len(pool)} (train + val subjects)")
        shuffled = [pool[i] for i in rng.permutation(len(pool))]
        for number, part in enumerate(np.array_split(np.array(shuffled, dtype=object), n_folds), start=1):
            held_out = set(part.tolist())
            splits[f"{n_folds}fold/fold_{number}"] = {
                "train": [s for s in pool if s not in held_out],
                "val": sorted(held_out),
            }
    return splits


def read_all_splits(data_split_dir: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """Every split under a data-split root: ``{"traintest": {"train": [...], ...}, "6fold/fold_1": ...}``."""
    return {name: read_split(Path(data_split_dir) / name) for name in list_splits(data_split_dir)}


def list_file_paths(lists_dir: str | os.PathLike, dataset: str, split_name: str, role: str) -> tuple[Path, Path]:
    """(scans list, ground-truths list) for one split and role.

    ``traintest``/``train`` -> ``training/<dataset>/traintest/train_scans.txt``;
    ``6fold/fold_3``/``val`` -> ``validation/<dataset>/6fold/val_scans-3.txt``.
    """
    folder = Path(lists_dir) / ROLE_FOLDERS.get(role, role) / dataset
    if "/" in split_name:
        group, fold = split_name.rsplit("/", 1)
        suffix = f"-{fold.removeprefix('fold_')}"
        folder = folder / group
    else:
        suffix = ""
        folder = folder / split_name
    return folder / f"{role}_scans{suffix}.txt", folder / f"{role}_ground_truths{suffix}.txt"


def find_missing(splits: dict[str, dict[str, list[str]]], present: set[str]) -> list[tuple[str, str, list[str]]]:
    """(split name, role, missing IDs in file order) for each split file naming absent subjects."""
    missing = []
    for name, split in splits.items():
        for role, subject_ids in split.items():
            absent = [s for s in subject_ids if s not in present]
            if absent:
                missing.append((name, role, absent))
    return missing


def check_setup_flags(data_format: str, n_workers: int, n_folds: int) -> None:
    """Refuses an unknown format, no workers, and folds asked of R1.2 (whose folds are given)."""
    if data_format not in FORMATS:
        raise UserInputError(f"--format {data_format}: expected one of {', '.join(FORMATS)}")
    if n_workers < 1:
        raise UserInputError(f"--n_workers {n_workers}: expected at least 1")
    if n_folds and data_format != BIDS:
        raise UserInputError("--n_folds applies to --format bids; R1.2 folds come from --data_split_dir")


def check_missing_subjects(splits: dict, present: set[str], split_root: Path, atlas_dir, allow_missing: bool,
                           warn: Callable[[str], None]) -> None:
    """Subjects named by a split but absent on disk: one-line error naming the first split file,
    or (``allow_missing``) one warning."""
    missing = find_missing(splits, present)
    if not missing:
        return
    total = len({s for _, _, absent in missing for s in absent})
    name, role, absent = missing[0]
    shown = ", ".join(absent[:SHOWN_MISSING]) + (", ..." if len(absent) > SHOWN_MISSING else "")
    where = split_root / name / f"{role}{SUBJECTS_SUFFIX}"
    if not allow_missing:
        raise fail(where, f"{len(absent)} listed subject(s) not found under {atlas_dir}: {shown} "
                          f"({total} missing over all split files; --allow_missing lists present subjects only)")
    warn(f"{total} subject(s) named in {split_root} not found under {atlas_dir} (first: {where}: {shown}); "
         f"lists hold present subjects only")


def write_subject_lists(splits: dict, subjects: dict, output_dir, lists_dir, data_format: str) -> list[Path]:
    """Writes each split's scan and ground-truth lists (present subjects, paths under ``output_dir``),
    rewriting only files whose content changed; returns the list files."""
    dataset = DATASET_NAMES[data_format]
    written_lists = []
    for name, split in splits.items():
        for role, subject_ids in split.items():
            scans_list, truths_list = list_file_paths(lists_dir, dataset, name, role)
            scan_lines, truth_lines = [], []
            for subject_id in subject_ids:
                if subject_id not in subjects:
                    continue
                scan_relative, mask_relative = output_relative_paths(
                    subject_id, subjects[subject_id].group, data_format)
                scan_lines.append(os.path.join(os.fspath(output_dir), scan_relative))
                truth_lines.append(os.path.join(os.fspath(output_dir), mask_relative))
            write_lines_if_changed(scans_list, scan_lines)
            write_lines_if_changed(truths_list, truth_lines)
            written_lists += [scans_list, truths_list]
    return written_lists


def setup_atlas(atlas_dir: str | os.PathLike = DEFAULT_ATLAS_DIR, output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
                data_split_dir: str | os.PathLike | None = None, lists_dir: str | os.PathLike = ".",
                n_workers: int = 1, allow_missing: bool = False, data_format: str = R12,
                split_seed: int = 1, n_folds: int = 0, log: Callable[[str], None] = print,
                warn: Callable[[str], None] = warn) -> dict:
    """Converts a raw ATLAS tree and writes the path lists; returns a summary dict.

    ``data_split_dir`` defaults to ``data_split/atlas`` for R1.2; for ``"bids"`` without one, a
    seeded split (:func:`make_bids_splits`) is made and saved under ``<lists_dir>/data_split/atlas_v2``.
    Subjects named by a split but absent on disk are an error (nothing written) unless
    ``allow_missing``, which warns once and lists present subjects only. Lists are written only after
    every subject converted.
    """
    check_setup_flags(data_format, n_workers, n_folds)
    dataset = DATASET_NAMES[data_format]
    subjects = discover(atlas_dir, data_format)

    generated_split_dir = None
    if data_split_dir is None and data_format == BIDS:
        splits = make_bids_splits(list(subjects), split_seed, n_folds)
        generated_split_dir = Path(lists_dir) / "data_split" / dataset
        split_root = generated_split_dir
    else:
        split_root = Path(DEFAULT_DATA_SPLIT_DIR if data_split_dir is None else data_split_dir)
        splits = read_all_splits(split_root)

    check_missing_subjects(splits, set(subjects), split_root, atlas_dir, allow_missing, warn)
    statuses = convert_subjects(list(subjects.values()), output_dir, data_format, n_workers, log)

    if generated_split_dir is not None:
        for name, split in splits.items():
            for role, subject_ids in split.items():
                write_lines_if_changed(generated_split_dir / name / f"{role}{SUBJECTS_SUFFIX}", sorted(subject_ids))
    written_lists = write_subject_lists(splits, subjects, output_dir, lists_dir, data_format)
    converted = sum(status == "converted" for status in statuses.values())
    log(f"{converted} subject(s) converted, {len(statuses) - converted} up to date, "
        f"{len(written_lists)} lists written under {lists_dir}")
    return {"statuses": statuses, "lists": written_lists, "splits": splits}


# ---------------------------------------------------------------------------------------------
# Small-lesion subset

_MASK_SUFFIXES = (f"{ATLAS_MASK_SUFFIX}.npy", "_label-L_desc-T1lesion_mask.npy")


def subject_of_ground_truth(path: str | os.PathLike) -> str:
    """Subject ID of a setup ground-truth file (``.../c0008s0011t01_LesionSmooth_stx.npy``)."""
    name = Path(path).name
    for suffix in _MASK_SUFFIXES:
        if name.endswith(suffix):
            candidate = name[: -len(suffix)]
            if R12_SUBJECT_PATTERN.fullmatch(candidate) or BIDS_SUBJECT_PATTERN.fullmatch(candidate):
                return candidate
    raise fail(path, f"not a ground-truth file name (<subject>{_MASK_SUFFIXES[0]} or <subject>{_MASK_SUFFIXES[1]})")


def _load_ground_truth(path: str, memory_map: bool = False) -> np.ndarray:
    if not Path(path).is_file():
        raise fail(path, "ground truth not found (run setup/setup_dataset_atlas.py first)")
    try:
        volume = np.load(path, allow_pickle=False, mmap_mode="r" if memory_map else None)
    except Exception as error:  # noqa: BLE001 - any failure to decode is the file's fault
        raise fail(path, f"unreadable .npy ({type(error).__name__})") from None
    if volume.ndim != 3:
        raise fail(path, f"expected a 3-D volume, got shape {volume.shape}")
    return volume


def _resolve(lists_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_absolute() else Path(lists_dir) / path


def setup_small_lesion(data_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR, lists_dir: str | os.PathLike = ".",
                       test_list: str | os.PathLike = DEFAULT_TEST_LIST, test_scans_list: str | os.PathLike | None = None,
                       max_pixels: int = SMALL_LESION_MAX_PIXELS, log: Callable[[str], None] = print) -> dict:
    """Finds each test subject's small-lesion slices and writes them, the maps and four lists.

    ``test_list``/``test_scans_list`` are relative to ``lists_dir`` unless absolute; the scans list
    defaults to the test list with ``ground_truths`` replaced by ``scans``. Returns
    ``{"slices": {subject: int64 array}, "lists": [paths]}``.
    """
    truths_list = _resolve(lists_dir, test_list)
    if test_scans_list is None:
        scans_list = truths_list.with_name(truths_list.name.replace("ground_truths", "scans"))
    else:
        scans_list = _resolve(lists_dir, test_scans_list)
    for path in (truths_list, scans_list):
        if not path.is_file():
            raise fail(path, "list not found (run setup/setup_dataset_atlas.py first)")
    truths, scans = read_lines(truths_list), read_lines(scans_list)
    if not truths:
        raise fail(truths_list, "list is empty")
    if len(truths) != len(scans):
        raise fail(scans_list, f"{len(scans)} lines but {truths_list} has {len(truths)}")

    # Check every input before writing anything.
    subject_ids = [subject_of_ground_truth(path) for path in truths]
    for scan in scans:
        if not Path(scan).is_file():
            raise fail(scan, "scan not found (run setup/setup_dataset_atlas.py first)")
    for truth_path in truths:
        _load_ground_truth(truth_path, memory_map=True)  # cheap header and shape check
    slices_by_subject: dict[str, np.ndarray] = {}
    map_lines, slice_lines = [], []
    for subject_id, truth_path in zip(subject_ids, truths):
        truth = _load_ground_truth(truth_path)
        slices = small_lesion_slices(truth, max_pixels)
        folder = os.path.join(os.fspath(data_dir), subject_group(subject_id), subject_id)
        map_path = os.path.join(folder, f"{subject_id}_small_lesion_map.npy")
        slices_path = os.path.join(folder, f"{subject_id}_small_lesion_slices.txt")
        save_npy(map_path, small_lesion_map(truth, slices))
        write_lines_if_changed(slices_path, [str(int(index)) for index in slices])
        slices_by_subject[subject_id] = slices
        map_lines.append(map_path)
        slice_lines.append(slices_path)
        log(f"{subject_id}: {len(slices)} small-lesion slice(s)")
    output_folder = truths_list.parent / "small_lesion"
    prefix = truths_list.name.split("_ground_truths")[0]  # "test"
    lists = {
        output_folder / f"{prefix}_scans.txt": scans,
        output_folder / f"{prefix}_ground_truths.txt": truths,
        output_folder / f"{prefix}_small_lesion_maps.txt": map_lines,
        output_folder / f"{prefix}_small_lesion_slices.txt": slice_lines,
    }
    for path, lines in lists.items():
        write_lines_if_changed(path, lines)
    total = sum(len(s) for s in slices_by_subject.values())
    log(f"{total} small-lesion slice(s) over {len(subject_ids)} subject(s); lists in {output_folder}")
    return {"slices": slices_by_subject, "lists": list(lists)}


def read_slice_indices(path: str | os.PathLike) -> np.ndarray:
    """Reads a ``<subject>_small_lesion_slices.txt`` file: int64 array (K,) of axial slice indices."""
    return np.array([int(line) for line in read_lines(path)], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Command lines


def build_setup_parser() -> argparse.ArgumentParser:
    """Flags of ``setup/setup_dataset_atlas.py``."""
    parser = argparse.ArgumentParser(
        description="Convert raw ATLAS (R1.2 or v2.0 BIDS) to .npy and write train/val/test path lists.")
    parser.add_argument("--atlas_dir", default=DEFAULT_ATLAS_DIR, help="raw ATLAS folder")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help="where the .npy volumes go")
    parser.add_argument("--data_split_dir", default=None,
                        help=f"subject split root (default {DEFAULT_DATA_SPLIT_DIR}; for --format bids, "
                             "a seeded split is made when not given)")
    parser.add_argument("--lists_dir", default=".", help="root of training/, validation/, testing/ lists")
    parser.add_argument("--n_workers", type=int, default=1, help="processes converting subjects")
    parser.add_argument("--allow_missing", action="store_true",
                        help="list present subjects only when a split names absent ones (warns)")
    parser.add_argument("--format", choices=list(FORMATS), default=R12, dest="data_format")
    parser.add_argument("--split_seed", type=int, default=1, help="--format bids only: seed of the 80/10/10 split")
    parser.add_argument("--n_folds", type=int, default=0, help="--format bids only: also K folds over train+val")
    return parser


def setup_main(argv: list[str] | None = None) -> None:
    """Runs the ATLAS setup from command-line arguments (wrap with ``cli_entry``)."""
    args = build_setup_parser().parse_args(argv)
    setup_atlas(atlas_dir=args.atlas_dir, output_dir=args.output_dir, data_split_dir=args.data_split_dir,
                lists_dir=args.lists_dir, n_workers=args.n_workers, allow_missing=args.allow_missing,
                data_format=args.data_format, split_seed=args.split_seed, n_folds=args.n_folds)


def build_small_lesion_parser() -> argparse.ArgumentParser:
    """Flags of ``setup/setup_dataset_atlas_small_lesion.py``."""
    parser = argparse.ArgumentParser(
        description="Find the small-lesion axial slices of the test set (every 8-connected lesion "
                    f"<= {SMALL_LESION_MAX_PIXELS} px) and write per-subject slices, maps and lists.")
    parser.add_argument("--data_dir", default=DEFAULT_OUTPUT_DIR,
                        help="where the per-subject small-lesion files go (setup's --output_dir)")
    parser.add_argument("--lists_dir", "--output_dir", dest="lists_dir", default=".",
                        help="root of the lists (setup's --lists_dir)")
    parser.add_argument("--test_list", default=DEFAULT_TEST_LIST, help="test ground truths, relative to --lists_dir")
    parser.add_argument("--test_scans_list", default=None,
                        help="test scans, relative to --lists_dir (default: --test_list with ground_truths -> scans)")
    parser.add_argument("--max_pixels", type=int, default=SMALL_LESION_MAX_PIXELS)
    return parser


def small_lesion_main(argv: list[str] | None = None) -> None:
    """Runs the small-lesion setup from command-line arguments (wrap with ``cli_entry``)."""
    args = build_small_lesion_parser().parse_args(argv)
    setup_small_lesion(data_dir=args.data_dir, lists_dir=args.lists_dir, test_list=args.test_list,
                       test_scans_list=args.test_scans_list, max_pixels=args.max_pixels)


__all__ = [
    "build_setup_parser",
    "build_small_lesion_parser",
    "convert_subject",
    "convert_subjects",
    "find_missing",
    "is_up_to_date",
    "list_file_paths",
    "make_bids_splits",
    "read_all_splits",
    "read_slice_indices",
    "setup_atlas",
    "setup_main",
    "setup_small_lesion",
    "small_lesion_main",
    "subject_of_ground_truth",
    "write_lines_if_changed",
]
