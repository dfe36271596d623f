"""Budgets before work: what a file's header claims is checked against the file and a sane maximum
before anything is allocated, and an output folder is checked writable and with room before the
first forward pass.

Every reader of user files (``.npy`` volumes, NIfTI scans, checkpoints) calls one of the
``check_*`` functions here first, so a 155-byte file whose header claims gigabytes is refused in
one line instead of driving memory up or ending in a ``MemoryError`` traceback.
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from spinseg.errors import fail

# Largest volume (voxels x bytes each, as stored, or as float32 once converted) any reader accepts:
# 16x the MNI 0.5 mm grid. Users with larger data raise it with the variable.
MAX_VOLUME_BYTES_VARIABLE = "SPINSEG_MAX_VOLUME_BYTES"
DEFAULT_MAX_VOLUME_BYTES = 4 * 2**30
MAX_CHECKPOINT_BYTES_VARIABLE = "SPINSEG_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_CHECKPOINT_BYTES = 8 * 2**30
# deflate cannot expand data more than ~1032:1, so a gzip file can never hold more than this per byte.
MAX_DEFLATE_RATIO = 1032


def limit_from_environment(variable: str, default: int) -> int:
    """A byte limit from ``variable`` (an integer), else ``default``."""
    text = os.environ.get(variable, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise fail(variable, f"expected a number of bytes, found {text[:40]!r}") from None


def max_volume_bytes() -> int:
    """The largest volume readers accept (``SPINSEG_MAX_VOLUME_BYTES``, default 4 GiB)."""
    return limit_from_environment(MAX_VOLUME_BYTES_VARIABLE, DEFAULT_MAX_VOLUME_BYTES)


def describe_bytes(count: float) -> str:
    """``1610612736`` -> ``"1.5 GiB"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def check_claimed_volume(path, shape: tuple[int, ...], itemsize: int, available: float, limit: int | None = None) -> None:
    """Refuses a header claiming ``shape`` x ``itemsize`` bytes when the file cannot hold them
    (``available`` bytes of data) or when they, or the same voxels as float32, exceed the limit."""
    limit = max_volume_bytes() if limit is None else limit
    if any(int(n) < 0 for n in shape):
        raise fail(path, f"header claims a negative dimension {tuple(shape)}")
    voxels = math.prod(int(n) for n in shape)
    claimed = voxels * int(itemsize)
    if max(claimed, voxels * 4) > limit:
        raise fail(path, f"header claims {tuple(int(n) for n in shape)} voxels ({describe_bytes(max(claimed, voxels * 4))} "
                         f"as float32), over the limit of {describe_bytes(limit)} (set {MAX_VOLUME_BYTES_VARIABLE} to allow more)")
    if claimed > available:
        raise fail(path, f"truncated or lying header: it claims {describe_bytes(claimed)} of voxels "
                         f"{tuple(int(n) for n in shape)}, the file holds at most {describe_bytes(available)}")


def read_npy_header(path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a ``.npy`` header; an unreadable header is one line naming the file."""
    try:
        with open(path, "rb") as stream:
            major, _ = np.lib.format.read_magic(stream)
            if major == 1:
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=2**16)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=2**16)
            return tuple(shape), np.dtype(dtype), stream.tell()
    except OSError as error:
        raise fail(path, f"cannot read ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TypeError... on a bad header
        raise fail(path, f"not a readable .npy array ({(str(error).splitlines() or [type(error).__name__])[0][:120]})") from None


def check_npy_file(path) -> tuple[tuple[int, ...], np.dtype]:
    """Checks a ``.npy`` header against the file's size and the volume limit; returns (shape, dtype)."""
    shape, dtype, offset = read_npy_header(path)
    if dtype.hasobject:
        raise fail(path, "not a readable .npy array (it holds Python objects)")
    check_claimed_volume(path, shape, dtype.itemsize, os.path.getsize(path) - offset)
    return shape, dtype


def gzip_capacity(path: Path) -> float:
    """The most bytes a gzip file can decompress to: its trailer's size when exact, else the deflate bound."""
    size = path.stat().st_size
    bound = float(size * MAX_DEFLATE_RATIO)
    if size < 18 or bound >= 2**32:
        return bound  # too short for a trailer, or large enough that the 32-bit trailer may have wrapped
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        (trailer,) = struct.unpack("<I", stream.read(4))
    return float(trailer)


def check_nifti_header(path, image) -> None:
    """Checks a NIfTI image's header (nibabel, nothing read yet) before its voxels are read.

    Refused: complex voxels, and a shape x data type larger than the file can hold (for ``.gz``:
    than its gzip trailer says, or than deflate allows) or than the volume limit.
    """
    path = Path(path)
    header = image.header
    dtype = np.dtype(header.get_data_dtype())
    if dtype.kind == "c":
        raise fail(path, f"complex-valued voxels ({dtype}); give a real-valued (magnitude) image")
    if dtype.kind not in "biuf":
        raise fail(path, f"voxels of data type {dtype} are not numbers")
    shape = tuple(int(n) for n in header.get_data_shape())
    offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 0
    if path.name.lower().endswith(".gz"):
        available = gzip_capacity(path) - offset
    else:
        available = path.stat().st_size - offset
    check_claimed_volume(path, shape, dtype.itemsize, available)


def check_checkpoint_file(path) -> None:
    """Refuses a checkpoint larger than the limit, or a zip whose members claim more than it."""
    path = Path(path)
    limit = limit_from_environment(MAX_CHECKPOINT_BYTES_VARIABLE, DEFAULT_MAX_CHECKPOINT_BYTES)
    size = path.stat().st_size
    if size > limit:
        raise fail(path, f"{describe_bytes(size)}, over the checkpoint limit of {describe_bytes(limit)} "
                         f"(set {MAX_CHECKPOINT_BYTES_VARIABLE} to allow more)")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            claimed = sum(member.file_size for member in archive.infolist())
    except Exception as error:  # noqa: BLE001 - any failure to read the directory is the file's fault
        raise fail(path, f"not a readable PyTorch checkpoint (corrupt zip: {type(error).__name__})") from None
    if claimed > min(limit, size * MAX_DEFLATE_RATIO):
        raise fail(path, f"its members claim {describe_bytes(claimed)}, more than the file can hold or the limit allows")


def count_non_finite(array: np.ndarray, chunk_slices: int = 16) -> int:
    """Number of NaN/Inf values of an (H, W, D) array, read a few slices at a time (memory-mapped ok)."""
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.dtype.kind not in "fc":
        return 0
    if array.ndim < 1 or array.shape[-1] == 0:
        return 0
    count = 0
    for start in range(0, array.shape[-1], chunk_slices):
        block = array[..., start : start + chunk_slices]
        count += int(block.size - np.count_nonzero(np.isfinite(block)))
    return count


def check_finite(array: np.ndarray, path, what: str = "voxels") -> None:
    """One line naming ``path`` and the count when ``array`` holds NaN or Inf."""
    bad = count_non_finite(array)
    if bad:
        raise fail(path, f"{bad} {what} are NaN or Inf")


def probe_writable(directory: Path, what: str) -> None:
    """Writes, fsyncs and deletes a probe file in ``directory`` (catches read-only mounts and quotas,
    which ``os.access`` misses, as it does everything for root)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise fail(directory, f"{what} is not writable (permission denied)")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        try:
            os.write(handle, b"0")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise fail(directory, f"{what} is not writable ({error.strerror or error})") from None


def check_output_folder(directory, bytes_needed: int = 0, what: str = "output folder") -> None:
    """Checks, without creating anything, that ``directory`` can be made or written and has room.

    The nearest existing folder on its path is probed; a file in the way, a folder that is not
    writable or less free space than ``bytes_needed`` raise one line naming the folder.
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists():
        if existing.is_symlink():
            raise fail(existing, f"{what}: a broken link is in the way")
        existing = existing.parent
    if not existing.is_dir():
        raise fail(existing, f"{what}: a file is in the way of {directory}" if existing != directory
                   else f"{what} is a file, not a folder")
    probe_writable(existing, what)
    free = shutil.disk_usage(existing).free
    if free < bytes_needed:
        raise fail(directory, f"{what}: only {describe_bytes(free)} free, the outputs need about {describe_bytes(bytes_needed)}")


def complete_npy_shape(path) -> tuple[tuple[int, ...], np.dtype] | None:
    """(shape, dtype) of a ``.npy`` whose size is exactly what its header claims; None for a missing,
    unreadable, truncated or padded file. Lets a rerun tell a whole output from a damaged one
    without trusting file times."""
    try:
        shape, dtype, offset = read_npy_header(path)
        complete = os.path.getsize(path) == offset + math.prod(shape) * dtype.itemsize
    except Exception:  # noqa: BLE001 - any unreadable file is simply not complete
        return None
    return (shape, dtype) if complete else None
