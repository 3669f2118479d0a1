"""The node's one switch on glibc's allocator: at most N malloc arenas (node/core/memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node.core.memory import limit_arenas

# Threads that each allocate, then glibc's own count of its arenas (malloc_stats on stderr).
PROGRAM = """
import ctypes, ctypes.util, sys, threading
from node.core.memory import limit_arenas
if sys.argv[1] != "none":
    assert limit_arenas(int(sys.argv[1]))
together = threading.Barrier(6)
def work():  # every thread alive and allocating at once (an ended thread's arena is reused)
    keep = [bytearray(4096) for _ in range(200)]
    together.wait(30)
    keep += [bytearray(4096) for _ in range(200)]
    together.wait(30)
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def arenas(limit: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROGRAM, limit], capture_output=True,
                          text=True, timeout=60, check=True)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_limit_arenas_caps_the_arenas_threads_get() -> None:
    if not sys.platform.startswith("linux") or arenas("none") == 0:
        pytest.skip("not glibc: malloc_stats does not list arenas")
    assert arenas("none") > 2  # each new thread that allocates gets an arena of its own
    assert arenas("2") == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_limit_arenas_refuses_what_is_not_a_count(bad: object) -> None:
    with pytest.raises(ValueError, match="malloc arenas"):
        limit_arenas(bad)  # type: ignore[arg-type]
