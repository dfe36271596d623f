"""Reading prepared volumes (.npy) and their path lists, memory-mapped and validated."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spinseg.errors import fail, missing
from spinseg.io.budgets import check_finite, check_npy_file
from spinseg.io.files import read_lines

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def read_path_list(path: str | os.PathLike, must_exist: bool = True) -> list[str]:
    """Reads a text file of paths (one per line). Missing/empty list or missing entry -> UserInputError."""
    path = Path(path)
    if not path.is_file():
        raise missing(path, "path list", "(run the setup script first?)", suffixes=(".txt",))
    try:
        entries = read_lines(path)
    except (UnicodeDecodeError, ValueError) as error:  # binary junk in a list is one line too
        raise fail(path, f"not a UTF-8 text file of paths ({type(error).__name__} at byte {getattr(error, 'start', '?')})") from None
    except OSError as error:
        raise fail(path, f"cannot read the path list ({error.strerror or error})") from None
    if not entries:
        raise fail(path, "path list is empty")
    if must_exist:
        for line_number, entry in enumerate(entries, start=1):
            if not Path(entry).is_file():
                problem = "is a folder, not a file" if Path(entry).is_dir() else "does not exist"
                raise fail(path, f"line {line_number}: {entry} {problem}")
    return entries


def read_paired_lists(scans_path, ground_truths_path) -> tuple[list[str], list[str]]:
    """Reads a scans list and its ground-truth list; their lengths must match line for line."""
    scans = read_path_list(scans_path)
    ground_truths = read_path_list(ground_truths_path)
    if len(scans) != len(ground_truths):
        raise fail(ground_truths_path, f"{len(ground_truths)} entries, but {scans_path} has {len(scans)}")
    return scans, ground_truths


def load_volume(path: str | os.PathLike, ndim: int | tuple[int, ...] = 3, mmap: bool = True) -> np.ndarray:
    """Opens a prepared ``.npy`` volume, memory-mapped, and checks it.

    Returns an array of shape (H, W, D) for ``ndim=3`` (read lazily: only the slices used are read).
    A missing or unreadable file, a non-numeric dtype or the wrong number of dimensions raises a
    one-line ``UserInputError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found")
    check_npy_file(path)  # the header's claim against the file's size and the limit, before allocating
    try:
        volume = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any failure of numpy's parser is the file's fault
        raise fail(path, f"not a readable .npy array ({(str(error).splitlines() or [type(error).__name__])[0][:120]})") from None
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if volume.ndim not in allowed:
        raise fail(path, f"expected a {' or '.join(map(str, allowed))}-D array, found shape {volume.shape}")
    if volume.dtype.kind not in NUMERIC_KINDS:
        raise fail(path, f"expected a numeric array, found dtype {volume.dtype}")
    if volume.size == 0:
        raise fail(path, f"holds no voxels (shape {volume.shape})")
    return volume


def check_volume_contents(scan: np.ndarray, scan_path, mask: np.ndarray, mask_path) -> None:
    """NaN/Inf voxels (one line with the count) and a "mask" that is no mask (more than two
    distinct values: most often the scan and ground-truth lists were swapped) are refused before any work."""
    check_finite(scan, scan_path)
    check_finite(mask, mask_path)
    values: set = set()
    for start in range(0, mask.shape[-1], 16):
        values.update(np.unique(np.asarray(mask[..., start : start + 16])).tolist())
        if len(values) > 2:
            shown = ", ".join(f"{value:g}" for value in sorted(values)[:3])
            raise fail(mask_path, f"ground truth is not binary (values {shown} ...); are the scan and ground-truth lists swapped?")


def check_same_shape(scan: np.ndarray, scan_path, mask: np.ndarray, mask_path) -> None:
    """Raises a one-line error when a ground truth's shape differs from its scan's."""
    if scan.shape[: mask.ndim] != mask.shape:
        raise fail(mask_path, f"ground truth shape {mask.shape} != scan shape {scan.shape} of {scan_path}")


def slice_window(index: int, n_chunk: int) -> tuple[int, int]:
    """[first, stop) of the axial slices stacked for slice ``index``: centred for an odd ``n_chunk``
    (i - n//2 .. i + n//2); for an even one the release's D-UNet window i - n/2 .. i + n/2 - 1 (4: i-2 .. i+1)."""
    first = index - n_chunk // 2
    return first, first + n_chunk


def stack_slices(volume: np.ndarray, index: int, n_chunk: int, pad_value: float) -> np.ndarray:
    """Stacks the ``n_chunk`` axial slices of :func:`slice_window` around ``index``: (H, W, D) -> (n_chunk, H, W).

    Slices beyond the volume are filled with ``pad_value`` (the data set mean, as in the release).
    Only the needed slices are read, so this is cheap on a memory-mapped volume.
    """
    depth = volume.shape[-1]
    first, stop = slice_window(index, n_chunk)
    low, high = max(first, 0), min(stop, depth)
    chunk = np.full((n_chunk,) + volume.shape[:2], pad_value, dtype=np.float32)
    chunk[low - first : high - first] = np.moveaxis(np.asarray(volume[..., low:high], dtype=np.float32), -1, 0)
    return chunk


def lesion_slice_indices(mask: np.ndarray) -> np.ndarray:
    """Axial slice indices (last axis) whose ground truth holds any lesion voxel: (H, W, D) -> (K,)."""
    return np.flatnonzero(np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0))


def check_volume_pairs(scan_paths: list[str], ground_truth_paths: list[str], two_dimensional: bool = False) -> tuple[int, ...]:
    """Opens every listed volume (memory-mapped: headers only) and checks dtype, ndim and pairing.

    Done before anything is written, so a bad file stops the run at once with one line instead of
    failing mid-epoch (inside a data-loader worker, whose error would arrive wrapped in a traceback).
    ``two_dimensional``: RGB images (H, W, 3) with masks (H, W). Returns the first scan's shape.
    """
    first_shape = None
    for scan_path, ground_truth_path in zip(scan_paths, ground_truth_paths):
        scan, mask = load_volume(scan_path), load_volume(ground_truth_path, ndim=2 if two_dimensional else 3)
        check_same_shape(scan, scan_path, mask, ground_truth_path)
        check_volume_contents(scan, scan_path, mask, ground_truth_path)
        first_shape = first_shape or scan.shape
    return first_shape
