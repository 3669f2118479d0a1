"""Memory of a process that handles full-size radiographs: give freed arrays back at once.

glibc serves allocations above a threshold (128 KiB) with their own ``mmap`` and returns
them to the system on ``free``; but after each such free it *raises* the threshold (up to
32 MiB), so the next radiograph-sized arrays (a 2k x 2k image is 7-30 MB at each step)
come from the heap, where freed memory stays in the process. With several threads, each
arena keeps its own. :func:`return_freed_memory` pins the threshold, so every large array
is mapped and unmapped, and RSS follows what is in use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

#: mallopt parameters (glibc malloc.h).
M_MMAP_THRESHOLD = -3
#: Allocations from this size up get their own mapping (glibc's initial default).
MMAP_THRESHOLD = 128 * 1024


def return_freed_memory() -> bool:
    """Pin glibc's mmap threshold (unless ``MALLOC_MMAP_THRESHOLD_`` is set); True if done.

    Elsewhere (musl, macOS) nothing changes.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    logger.debug("glibc mmap threshold pinned at %d bytes: %s", MMAP_THRESHOLD, done)
    return done


__all__ = ["return_freed_memory"]
