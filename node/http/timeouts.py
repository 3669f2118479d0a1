"""A deadline on reading a request body: a client that sends it a byte at a time (slowloris)
is answered 408 and its connection closed, instead of holding a connection and a request
slot for ever.

Upstream limitation: uvicorn (httptools and h11 alike) has no body-read timeout, only an idle
keep-alive one between requests. This ASGI middleware wraps ``receive``: the whole body must
have arrived ``timeout_s`` after the request started; past that the read raises
:class:`BodyTimeoutError`, an :class:`~node.http.errors.ApiError` (408, ``Connection:
close``), which the node's error handler answers like any other refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.http.errors import ApiError, answer

logger = logging.getLogger(__name__)


class BodyTimeoutError(ApiError):
    """The request body did not arrive in time: 408, and the connection is closed."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, "request-timeout",
                         f"the request body did not arrive within {timeout_s:g} s",
                         headers={"Connection": "close"})


class BodyTimeout:
    """ASGI middleware: every ``http.request`` message of a request must arrive before the
    request's deadline (``timeout_s`` after it started).

    Past it the middleware answers 408 itself (an exception raised into the application would
    reach the client as a 500 through Starlette's task groups) and tells the application the
    client is gone (``http.disconnect``): whatever it answers after that is dropped.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        complete = started = cut_off = False

        async def timed_receive() -> Message:
            nonlocal complete, cut_off
            if complete or cut_off:  # the body is in (or given up): only a disconnect is left
                return await receive() if not cut_off else {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                cut_off = True
                logger.warning("%s %s: request body not received within %g s; closing the "
                               "connection", scope.get("method"), scope.get("path"),
                               self.timeout_s)
                if not started:
                    await answer(BodyTimeoutError(self.timeout_s).problem)(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if cut_off:  # answered 408 already
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except Exception:
            if not cut_off:
                raise
            # the application's complaint that its client left (ClientDisconnect), which is
            # what it was told: the request was cut off and answered here
            logger.debug("request cut off after its body timeout", exc_info=True)
