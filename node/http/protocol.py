"""Adapter: uvicorn's httptools protocol, reading request bodies in bigger steps.

Upstream limitation: uvicorn stops reading a connection once 64 KiB of body wait for the
application (``uvicorn.protocols.http.flow_control.HIGH_WATER_LIMIT``, a module constant with
no setting in ``uvicorn.Config``) and resumes when the application takes them: a 7 MB
radiograph is then about a hundred pause / resume / wake-up rounds through the event loop.
Measured by ``cxr-node bench`` (docs/tuning.md): about 10 ms of CPU per upload, and 12.4
against 14.1 single-client ``/score`` images/s without this adapter. There being no public way,
this one subclass overrides ``on_body`` with uvicorn's own flow control at a 1 MiB mark;
``tests/test_node_http_adapter.py`` fails when uvicorn's ``on_body`` changes, so that the
copy is looked at again. Bodies are still bounded per request by ``http_max_body_mb``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: Body bytes buffered per connection before reading pauses (uvicorn's own: 64 KiB).
BODY_HIGH_WATER = 2**20


def body_protocol() -> type | str:
    """The protocol class for ``uvicorn.Config(http=...)``: httptools with
    :data:`BODY_HIGH_WATER`, or ``"auto"`` when httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn's choice
        logger.info("httptools not installed: uvicorn picks its HTTP protocol")
        return "auto"

    class BulkBodyProtocol(HttpToolsProtocol):
        """:class:`HttpToolsProtocol` pausing at :data:`BODY_HIGH_WATER` body bytes."""

        def on_body(self, body: bytes) -> None:
            if (self.parser.should_upgrade() and self._should_upgrade()) \
                    or self.cycle.response_complete:
                return
            self.cycle.body += body
            if len(self.cycle.body) > BODY_HIGH_WATER:
                self.flow.pause_reading()
            self.cycle.message_event.set()

    return BulkBodyProtocol


__all__ = ["BODY_HIGH_WATER", "body_protocol"]
