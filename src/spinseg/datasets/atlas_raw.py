"""Discovery and validation of raw ATLAS trees: R1.2 (``c00NN/<subject>/...``) and v2.0 (BIDS).

R1.2: ``<atlas_dir>/c00NN/c00NNs00MMt01/c00NNs00MMt01_t1w_stx.nii.gz`` (or ``_t1w_deface_stx``,
``.nii``) with one or more masks ``..._LesionSmooth_stx.nii.gz`` / ``..._LesionSmooth_K_stx.nii.gz``.
v2.0: ``<atlas_dir>/Training/R0NN/sub-rXXXsYYY/ses-1/anat/sub-rXXXsYYY_ses-1_space-
MNI152NLin2009aSym_T1w.nii.gz`` with ``..._label-L_desc-T1lesion_mask.nii.gz`` (``.nii`` accepted).

Every problem with the files is a :class:`UserInputError` whose message starts with the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from spinseg.constants import ATLAS_MASK_SUFFIX, ATLAS_T1_DEFACED_SUFFIX, ATLAS_T1_SUFFIX
from spinseg.errors import UserInputError, fail
from spinseg.io.budgets import check_nifti_header

R12 = "r1.2"
BIDS = "bids"
FORMATS = (R12, BIDS)

_COHORT = re.compile(r"c\d{4}")
_R12_SUBJECT = re.compile(r"c\d{4}s\d{4}t\d{2}")
_NIFTI = r"\.nii(?:\.gz)?"
_R12_T1 = re.compile(rf".+(?:{ATLAS_T1_SUFFIX}|{ATLAS_T1_DEFACED_SUFFIX}){_NIFTI}")
_R12_MASK = re.compile(rf".+_LesionSmooth(?:_\d+)?_stx{_NIFTI}")
_SITE = re.compile(r"R\d{3}")
_BIDS_SUBJECT = re.compile(r"sub-r\d{3}s\d{3}")
_BIDS_T1 = re.compile(rf"sub-r\d{{3}}s\d{{3}}_ses-\d+_space-MNI152NLin2009aSym_T1w{_NIFTI}")
_BIDS_MASK = re.compile(rf"sub-r\d{{3}}s\d{{3}}_ses-\d+_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask{_NIFTI}")


@dataclass(frozen=True)
class RawSubject:
    """One subject of a raw tree: its ID, its T1 file and its mask files (merged by logical OR)."""

    subject_id: str
    group: str  # cohort (c0008) for R1.2, site (R001) for v2.0
    scan_path: Path
    mask_paths: tuple[Path, ...]


def output_relative_paths(subject_id: str, group: str, data_format: str) -> tuple[str, str]:
    """Relative (scan, ground truth) ``.npy`` paths written by setup for one subject.

    R1.2: ``c0008/c0008s0011t01/c0008s0011t01_t1w_stx.npy`` and ``..._LesionSmooth_stx.npy``;
    v2.0: ``R001/sub-r001s001/sub-r001s001_T1w.npy`` and ``..._label-L_desc-T1lesion_mask.npy``.
    """
    folder = f"{group}/{subject_id}/{subject_id}"
    if data_format == R12:
        return f"{folder}{ATLAS_T1_SUFFIX}.npy", f"{folder}{ATLAS_MASK_SUFFIX}.npy"
    if data_format == BIDS:
        return f"{folder}_T1w.npy", f"{folder}_label-L_desc-T1lesion_mask.npy"
    raise ValueError(f"unknown format {data_format!r}; expected one of {FORMATS}")


def _sorted_dirs(path: Path, pattern: re.Pattern) -> list[Path]:
    return sorted(entry for entry in path.iterdir() if entry.is_dir() and pattern.fullmatch(entry.name))


def _pick_files(folder: Path, t1_pattern: re.Pattern, mask_pattern: re.Pattern) -> tuple[Path, tuple[Path, ...]]:
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_file())
    scans = [name for name in names if t1_pattern.fullmatch(name)]
    masks = [name for name in names if mask_pattern.fullmatch(name)]
    if not scans:
        raise fail(folder, "subject folder has no T1 scan")
    if len(scans) > 1:
        raise fail(folder, f"subject folder has {len(scans)} T1 scans ({', '.join(scans)}); expected one")
    if not masks:
        raise fail(folder, "subject folder has no lesion mask")
    return folder / scans[0], tuple(folder / name for name in masks)


def discover_r12(atlas_dir: str | os.PathLike) -> dict[str, RawSubject]:
    """Finds every subject of an ATLAS R1.2 tree: ``{subject_id: RawSubject}`` sorted by ID.

    Entries that are not cohort/subject folders (``README``, ``data_split``) are ignored; a subject
    folder without exactly one T1 or without a mask is a :class:`UserInputError`.
    """
    atlas_dir = Path(atlas_dir)
    if not atlas_dir.is_dir():
        raise fail(atlas_dir, "raw ATLAS folder not found")
    subjects: dict[str, RawSubject] = {}
    for cohort in _sorted_dirs(atlas_dir, _COHORT):
        for folder in _sorted_dirs(cohort, _R12_SUBJECT):
            if folder.name[:5] != cohort.name:
                raise fail(folder, f"subject of cohort {folder.name[:5]} inside cohort folder {cohort.name}")
            scan, masks = _pick_files(folder, _R12_T1, _R12_MASK)
            subjects[folder.name] = RawSubject(folder.name, cohort.name, scan, masks)
    if not subjects:
        raise fail(atlas_dir, "no ATLAS R1.2 subjects (c00NN/c00NNs00MMt01/) found")
    return dict(sorted(subjects.items()))


def discover_bids(atlas_dir: str | os.PathLike) -> dict[str, RawSubject]:
    """Finds every labelled subject of an ATLAS v2.0 (BIDS) tree under ``<atlas_dir>/Training``.

    Returns ``{subject_id: RawSubject}`` sorted by ID; the unlabelled ``Testing`` folder is ignored.
    """
    atlas_dir = Path(atlas_dir)
    training = atlas_dir / "Training"
    if not atlas_dir.is_dir():
        raise fail(atlas_dir, "raw ATLAS folder not found")
    if not training.is_dir():
        raise fail(training, "ATLAS v2.0 Training folder not found")
    subjects: dict[str, RawSubject] = {}
    for site in _sorted_dirs(training, _SITE):
        for folder in _sorted_dirs(site, _BIDS_SUBJECT):
            if f"R{folder.name[5:8]}" != site.name:
                raise fail(folder, f"subject of site R{folder.name[5:8]} inside site folder {site.name}")
            sessions = sorted(folder.glob("ses-*/anat"))
            if len(sessions) != 1:
                raise fail(folder, f"expected one ses-*/anat folder, found {len(sessions)}")
            scan, masks = _pick_files(sessions[0], _BIDS_T1, _BIDS_MASK)
            subjects[folder.name] = RawSubject(folder.name, site.name, scan, masks)
    if not subjects:
        raise fail(training, "no ATLAS v2.0 subjects (R0NN/sub-rXXXsYYY/ses-1/anat/) found")
    return dict(sorted(subjects.items()))


def discover(atlas_dir: str | os.PathLike, data_format: str = R12) -> dict[str, RawSubject]:
    """Finds the subjects of a raw tree in ``data_format`` (``"r1.2"`` or ``"bids"``)."""
    if data_format == R12:
        return discover_r12(atlas_dir)
    if data_format == BIDS:
        return discover_bids(atlas_dir)
    raise ValueError(f"unknown format {data_format!r}; expected one of {FORMATS}")


def load_nifti_volume(path: str | os.PathLike) -> np.ndarray:
    """Loads a NIfTI file as a (H, W, D) float32 array, or raises a one-line UserInputError.

    Rejected: unreadable or truncated files (including non-NIfTI content), anything but 3-D, and
    NaN/Inf voxels.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        check_nifti_header(path, image)  # budget and complex check before the voxels are read
        # Reading the data object decompresses the whole file, so truncation shows up here.
        volume = np.asarray(image.dataobj, dtype=np.float32)
    except UserInputError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to decode the file is the file's fault
        # One line, without repeating the path that starts the message anyway.
        message = (str(error).splitlines() or [""])[0].replace(f'"{path}"', "it").replace(str(path), "it")
        raise fail(path, f"unreadable NIfTI ({type(error).__name__}: {message or 'no detail'})") from None
    if volume.ndim != 3:
        raise fail(path, f"expected a 3-D volume, got shape {volume.shape}")
    if volume.size == 0:
        raise fail(path, f"empty volume of shape {volume.shape}")
    if not np.isfinite(volume).all():
        bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
        raise fail(path, f"{bad} NaN/Inf voxels")
    return volume


def load_subject(subject: RawSubject) -> tuple[np.ndarray, np.ndarray]:
    """Loads and checks one subject: (scan (H, W, D) float32, mask (H, W, D) uint8 in {0, 1}).

    Masks are binarised (value > 0) and merged by logical OR; each must match the scan's shape.
    """
    scan = load_nifti_volume(subject.scan_path)
    merged = np.zeros(scan.shape, dtype=bool)
    for mask_path in subject.mask_paths:
        mask = load_nifti_volume(mask_path)
        if mask.shape != scan.shape:
            raise fail(mask_path, f"mask shape {mask.shape} != scan shape {scan.shape} ({subject.scan_path.name})")
        merged |= mask > 0
    return scan, merged.astype(np.uint8)


__all__ = [
    "BIDS",
    "FORMATS",
    "R12",
    "RawSubject",
    "discover",
    "discover_bids",
    "discover_r12",
    "load_subject",
    "load_nifti_volume",
    "output_relative_paths",
]
