"""Atomic file writing: everything this package writes appears whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. ``suffix``
    defaults to the target's own suffixes so that libraries choosing a format by extension
    (nibabel, matplotlib) write the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    # mkstemp makes owner-only files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` (.npy) atomically."""
    with atomic_path(path, suffix=".npy") as temporary:
        np.save(temporary, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_lines(path: str | os.PathLike, lines) -> None:
    """Writes one item per line (with a trailing newline) to ``path`` atomically."""
    write_text(path, "".join(f"{line}\n" for line in lines))


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_lines(path: str | os.PathLike) -> list[str]:
    """Reads non-empty, stripped lines of a UTF-8 text file (a byte-order mark and CRLF line ends are fine)."""
    with open(path, encoding="utf-8-sig") as stream:
        return [line.strip() for line in stream if line.strip()]


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_path` left beside ``path`` when its process was killed mid-write.

    They are hidden (``.<name>.<8 random characters><suffix>``) and never trusted by any reader; a
    rerun removes them with :func:`remove_stale_temporaries`.
    """
    import glob
    import re

    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\..+")
    return [item for item in path.parent.glob(f".{glob.escape(path.name)}.*") if pattern.fullmatch(item.name)]


def remove_stale_temporaries(paths) -> int:
    """Deletes the :func:`stale_temporaries` of every path in ``paths``; returns how many."""
    removed = 0
    for path in paths:
        for temporary in stale_temporaries(path):
            temporary.unlink(missing_ok=True)
            removed += 1
    return removed
