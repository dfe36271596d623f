"""Keeps glibc from returning freed memory to the system after every large tensor.

A 2.5-D network on 197x233 slices allocates and frees tens of MB per layer. By default glibc
serves those with mmap/munmap, so every forward pass pays for zeroing fresh pages (on a 2-core
machine we measured ~30% of inference time in the kernel). Serving them from a heap that is not
trimmed lets later passes reuse the pages. Set ``SPINSEG_DEFAULT_MALLOC=1`` to opt out.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4


def tune_glibc_malloc() -> bool:
    """Disables mmap-backed allocations and heap trimming in glibc; returns True if applied."""
    if os.environ.get("SPINSEG_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**30) and mallopt(M_TOP_PAD, 64 * 2**20))
