"""Memory of a process that handles full-size radiographs: give freed memory back.

A batch of 2k x 2k radiographs allocates and frees hundreds of megabytes (pixels, float
intermediates, heat maps, result objects). glibc keeps much of what is freed in its heaps
(its mmap threshold rises after each large free, so later arrays of the same size come from
the heap, and every thread has its own arena), so RSS stays at the largest batch ever seen.
:func:`trim` (``malloc_trim(0)``) returns the free pages of every arena to the system; the
workers call it when they find the queue empty (not after every batch: under load, each
batch would fault its pages in again). The allocator itself is left alone: pinning its mmap
threshold low was tried and made PyTorch 2-2.5x slower (a fresh mapping, and page faults,
for every large tensor).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to do
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Return freed heap memory to the system (glibc); True if some was returned."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False


__all__ = ["trim"]
