"""The one progress bar of the package: tqdm on stderr, off when stderr is not a terminal."""
from __future__ import annotations


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``) that writes nothing into logs.

    ``disable=None`` is tqdm's switch for "only on a terminal": redirected or piped output (log
    files, CI, subprocesses) keeps only the program's own lines. ``enabled=False`` turns it off
    outright (e.g. on every process but the first under torchrun).
    """
    from tqdm import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)
