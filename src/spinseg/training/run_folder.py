"""A training run's folder: its checkpoints ``model-XXXXXXXX.pth``, their discovery, and disk checks made
before anything is written."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from spinseg.errors import UserInputError, fail, warn
from spinseg.models.checkpoint import read_checkpoint

CHECKPOINT_PATTERN = "model-{step:08d}.pth"
CHECKPOINT_NAME = re.compile(r"model-(\d{8})\.pth")


def list_checkpoints(directory: Path) -> list[Path]:
    """Training checkpoints ``model-XXXXXXXX.pth`` in ``directory``, oldest step first.

    Temporary files of an interrupted save (``.model-XXXXXXXX.pth.*``) never match.
    """
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if CHECKPOINT_NAME.fullmatch(path.name))


def remove_stale_temporaries(directory: Path) -> None:
    """Deletes half-written checkpoints (``.model-*.pth.*``, ``.best.pth.*`` one folder up) and
    write probes left by a run killed while saving."""
    for folder, pattern in ((directory, ".model-*.pth.*"), (directory, ".write-probe-*"), (directory.parent, ".best.pth.*")):
        for path in folder.glob(pattern) if folder.is_dir() else ():
            path.unlink(missing_ok=True)


def latest_complete_checkpoint(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``directory`` that loads, with its contents; None when there is none.

    A newest file that is truncated or corrupt (e.g. copied or written by hand while a run was
    killed) is skipped with a one-line warning, and the one before it is used.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            checkpoint = read_checkpoint(path)
        except UserInputError as error:
            warn(f"skipping {error}")
            continue
        if "model_state_dict" not in checkpoint or "train_state" not in checkpoint:
            warn(f"skipping {path}: not a complete training checkpoint")
            continue
        return path, checkpoint
    return None


def check_free_space(directory: Path, bytes_needed: int) -> None:
    """Fails when ``directory`` has less than twice the room one checkpoint takes."""
    free = shutil.disk_usage(directory).free
    if free < 2 * bytes_needed:
        raise fail(directory, f"only {free / 2**20:.1f} MiB free, a checkpoint needs about {bytes_needed / 2**20:.1f} MiB")


def check_writable(directory: Path, bytes_needed: int) -> None:
    """Fails before training (before any checkpoint is touched) when the folder cannot take another.

    Checked three ways, since each alone can be fooled: permissions (``os.access``: a folder the
    user may not write), a probe file actually written (read-only mounts and quotas, which
    ``os.access`` misses, as it does everything for root), and free space.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise fail(directory, f"cannot create the checkpoint folder ({error.strerror or error})") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise fail(directory, "checkpoint folder is not writable (permission denied)")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        try:
            os.write(handle, b"0")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise fail(directory, f"checkpoint folder is not writable ({error.strerror or error})") from None
    check_free_space(directory, bytes_needed)
