"""The one adapter over a library's internals in the HTTP front (node/http/protocol.py)."""

from __future__ import annotations

import inspect

import pytest

from node.http.protocol import BODY_HIGH_WATER, body_protocol


def test_the_adapter_still_matches_uvicorns_on_body() -> None:
    """The adapter repeats uvicorn's ``on_body`` with another mark; when uvicorn changes its
    own, this fails, and the adapter is to be looked at again (or dropped, if uvicorn has
    made the mark a setting)."""
    impl = pytest.importorskip("uvicorn.protocols.http.httptools_impl")
    upstream = inspect.getsource(impl.HttpToolsProtocol.on_body)
    ours = inspect.getsource(body_protocol().on_body)

    def body(source: str) -> str:  # the statements, without layout
        return "".join(source.split("\n", 1)[1].replace("\\", "").split())

    assert body(upstream) == body(ours).replace("BODY_HIGH_WATER", "HIGH_WATER_LIMIT")
    assert BODY_HIGH_WATER == 2**20
