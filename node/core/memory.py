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

:func:`limit_arenas` is the one switch on the allocator that pays: glibc gives each thread
that allocates concurrently an arena of its own (up to 8 per core), and every arena keeps its
own high-water mark of freed pages. A node has many such threads (DICOM associations, HTTP,
workers, the sender, the model's pools): with two arenas, the bench measured the node's peak
anonymous memory about 250 MB lower and its CPU per image unchanged (``docs/tuning.md``).
``cxr-node serve`` calls it at start (setting ``malloc_arenas``), before its threads exist.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)


#: ``mallopt``'s parameter number for the largest number of arenas (glibc's malloc.h).
M_ARENA_MAX = -8


@cache
def _libc_function(name: str, *argtypes):
    """A function of glibc, or None where the C library is another (musl, macOS)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _malloc_trim():
    return _libc_function("malloc_trim", ctypes.c_size_t)


def trim() -> bool:
    """Return freed heap memory to the system (glibc); True if some was returned."""
    function = _malloc_trim()
    return bool(function(0)) if function is not None else False


def limit_arenas(count: int) -> bool:
    """Let glibc's malloc use at most ``count`` arenas from now on (``mallopt(M_ARENA_MAX)``,
    what the ``MALLOC_ARENA_MAX`` environment variable sets at start); True if it took it.

    Raises:
        ValueError: ``count`` is not a positive number.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"malloc arenas {count!r}: use a whole number of at least 1")
    function = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    return bool(function(M_ARENA_MAX, count)) if function is not None else False


__all__ = ["limit_arenas", "trim"]
