"""The ``rabbit`` fixture: a real 3-node RabbitMQ cluster (AMQP and TLS on loopback) for the
system tests. The cluster itself is :class:`node.bench.rabbit.RabbitCluster` (``cxr-node bench``
starts one too); its names stay importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from node.bench.rabbit import (  # noqa: F401  (the names the tests import from here)
    RABBITMQ_BIN,
    START_TIMEOUT,
    STOP_TIMEOUT,
    USER,
    WATCHDOG,
    RabbitCluster,
    _group_alive,
    rabbitmq_missing,
)


def require_rabbitmq() -> None:
    """Skip without RabbitMQ; fail in CI, which installs it (scripts/setup.sh)."""
    why = rabbitmq_missing()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} although CI should have it")
    pytest.skip(f"{why}; scripts/setup.sh installs it")


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """A started 3-node RabbitMQ cluster (AMQP and TLS on loopback), shared by the session."""
    require_rabbitmq()
    from system.peers import Certificates

    folder = tmp_path_factory.mktemp("rabbit")
    certificates = Certificates(folder / "certs").make().folder
    cluster = RabbitCluster(folder, size=3, certificates=certificates).start()
    try:
        yield cluster
    finally:
        cluster.stop()
