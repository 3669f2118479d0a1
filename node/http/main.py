"""The FastAPI application: it only assembles routers, middleware and error handlers."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from node.http import errors
from node.http.routers import ops, score, stow
from node.metrics import HTTP_LATENCY, HTTP_REQUESTS


def create_app(node) -> FastAPI:
    """The app for a :class:`node.service.Node` (started by the lifespan if it is not yet)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not node.ready.is_set():
            node.start()  # loads the model, recovers the spool, starts workers
        yield

    app = FastAPI(title="cxr-node", version="0.1.0", lifespan=lifespan,
                  description="Chest X-ray AI node: scoring, DICOMweb STOW-RS, operations.")
    app.state.node = node
    errors.install(app)
    app.include_router(ops.router)
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

    return app
