"""The tests' session-wide ``postgres`` fixture: a throwaway PostgreSQL server. The server
itself is :class:`node.bench.postgres.PostgresServer` (``cxr-node bench`` starts one too);
its names stay importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from node.bench.postgres import (  # noqa: F401  (the names the tests import from here)
    READY_TIMEOUT_S,
    SYSTEM_USER,
    PostgresServer,
    postgres_bindir,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session. Missing PostgreSQL skips, but fails in CI
    (which installs it); use ``postgres.new_database(name)`` to keep tests apart."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb) is not installed although CI should have "
                        "installed it")
        pytest.skip("PostgreSQL (initdb) is not installed (.ci/run installs it)")
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.remove()
