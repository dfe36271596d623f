"""A training run's folder: its checkpoints ``model-XXXXXXXX.pth``, their discovery, and disk checks made
before anything is written."""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

from spinseg.errors import UserInputError, fail, warn
from spinseg.io.budgets import probe_writable
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
    probe_writable(directory, "checkpoint folder")
    check_free_space(directory, bytes_needed)


# ---------------------------------------------------------------------------------------------
# The run folder's lock: one training writes to a run folder at a time.

LOCK_NAME = ".spinseg-train.lock"
# Locks this process holds, by resolved folder: a second train() in the same process (tests,
# notebooks) takes the folder over instead of locking itself out.
HELD_LOCKS: dict[Path, object] = {}


def lock_run_folder(directory: Path) -> None:
    """Locks ``directory`` (which must exist) for this process until :func:`unlock_run_folder` or exit.

    An advisory ``flock`` on ``<run>/.spinseg-train.lock``: the kernel drops it when the holder dies
    (even by SIGKILL), so a stale lock never blocks a resume. The file records the holder's pid and
    host; a second trainer gets one line naming them. Where ``fcntl`` is missing (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:
        return
    key = directory.resolve()
    if key in HELD_LOCKS:
        return
    lock_path = directory / LOCK_NAME
    try:
        stream = open(lock_path, "a+")
    except OSError as error:
        raise fail(lock_path, f"cannot create the run folder's lock ({error.strerror or error})") from None
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        stream.seek(0)
        holder = stream.read().strip() or "another process"
        stream.close()
        raise fail(directory, f"in use by another training ({holder}); wait for it to end or choose another "
                              "--checkpoint_path") from None
    stream.seek(0)
    stream.truncate()
    stream.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    stream.flush()
    HELD_LOCKS[key] = stream


def unlock_run_folder(directory: Path) -> None:
    """Releases this process's lock on ``directory`` (closing the file drops the ``flock``)."""
    stream = HELD_LOCKS.pop(directory.resolve(), None)
    if stream is not None:
        stream.close()
