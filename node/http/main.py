"""The FastAPI application: it only assembles routers, middleware and error handlers."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from node import version
from node.http import errors
from node.http.routers import ops, score, stow
from node.http.timeouts import BodyTimeout
from node.http.ui import install as _ui_install
from node.metrics import HTTP_LATENCY, HTTP_REQUESTS


def create_app(node) -> FastAPI:
    """The app for a :class:`node.service.Node` (started by the lifespan if it is not yet)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not node.ready.is_set():
            node.start()  # loads the model, recovers the spool, starts workers
        yield

    app = FastAPI(title="cxr-node", version=version(), lifespan=lifespan,
                  description="Chest X-ray AI node: scoring, DICOMweb STOW-RS, operations.")
    app.state.node = node
    errors.install(app)
    app.include_router(ops.router)
    _ui_install(app)  # the operators' page at /ui
    if node.receives:  # a scaled node's worker or sender: operations only
        app.include_router(score.router)
        app.include_router(stow.router)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        HTTP_LATENCY.labels(name).observe(time.perf_counter() - start)
        HTTP_REQUESTS.labels(name, str(response.status_code)).inc()
        return response

    # outermost: a body that does not arrive in time is answered 408 and its connection closed
    app.add_middleware(BodyTimeout, timeout_s=node.settings.http_body_timeout_s)
    return app
