"""Operations: liveness, readiness, metrics, queue state."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.http.deps import get_node, require_token
from node.metrics import QUEUE_DEPTH, REGISTRY

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="the process is alive")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", summary="model loaded and warmed up", dependencies=[Depends(require_token)])
async def readyz(request: Request) -> JSONResponse:
    node = get_node(request)
    if node.refused is not None:
        return JSONResponse({"status": "refused", "reason": node.refused}, status_code=503)
    if not node.ready.is_set():
        return JSONResponse({"status": "starting"}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready",
                         "model": node.model.info if node.model is not None else None,
                         "onnx_fast_path": node.fast_path})


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)])
async def metrics(request: Request) -> Response:
    QUEUE_DEPTH.set(get_node(request).intake.depth())
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/jobs", summary="queue counts and failed items",
            dependencies=[Depends(require_token)])
async def jobs(request: Request) -> dict:
    return get_node(request).intake.records.failed_document()
