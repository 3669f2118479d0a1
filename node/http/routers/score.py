"""``POST /score``: one radiograph in, the model's result out, synchronously.

The upload is parsed and gated once (:func:`node.jobs.intake.receive`), then handed to the
workers in memory: it shares their micro-batches, leaves a job record, and is never spooled
(its answer is its acknowledgement).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from domain import ExplainChoice
from node.core.errors import JobFailedError, OutOfResourcesError
from node.core.pipeline import Outcome
from node.core.scoring import score_document
from node.http.deps import body_limit, get_node, read_body, replay, require_token
from node.http.errors import ApiError
from node.http.multipart import build_related
from node.jobs.intake import receive
from node.jobs.model import RemoteResult

router = APIRouter(tags=["scoring"], dependencies=[Depends(require_token)])

DICOM_TYPES = ("application/dicom", "application/octet-stream")


async def upload_bytes(request: Request) -> bytes:
    """The DICOM file of a request: the raw body, or multipart form field ``image``."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        body = await read_body(request)  # the size limit holds before the form is parsed
        form = await replay(request, body).form(max_files=1, max_fields=8,
                                                max_part_size=body_limit(request))
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise ApiError(422, "invalid-request", "multipart form field 'image' is missing")
        return await image.read()
    if content_type.split(";")[0].strip() not in DICOM_TYPES:
        raise ApiError(415, "unsupported-media-type",
                       f"Content-Type {content_type or 'absent'}: send application/dicom or "
                       "multipart/form-data with field 'image'")
    return await read_body(request)


def wants_dicom(accept: str) -> bool:
    accept = accept.lower()
    return "multipart/related" in accept and "application/dicom" in accept


DICOM_BODY = {"requestBody": {"required": True, "content": {
    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}}}},
}}}


@router.post(
    "/score",
    summary="score one chest radiograph (DICOM)",
    openapi_extra=DICOM_BODY,
    responses={400: {"description": "not a readable image"}, 401: {"description": "no token"},
               413: {"description": "too large"}, 415: {"description": "wrong media type"},
               422: {"description": "declined by the input gate"},
               503: {"description": "queue full; retry after Retry-After seconds"}},
)
async def score(
    request: Request,
    explain: Annotated[ExplainChoice, Query(
        description="add a heat map (base64 PNG overlay) with this method")] = "none",
) -> Response:
    node = get_node(request)
    data = await upload_bytes(request)
    dicom = wants_dicom(request.headers.get("accept", ""))
    result = await node_score(node, data, {"explain": explain, "dicom": dicom})
    if dicom:
        body, content_type = await run_in_threadpool(_related, result)
        return Response(body, media_type=content_type)
    if isinstance(result, RemoteResult):  # scored by a worker of the pool
        return JSONResponse(result.document)
    document = await run_in_threadpool(score_document, node.model, result, explain != "none",
                                       node.settings.parametric_map)
    return JSONResponse(document)


def _related(result: Outcome | RemoteResult) -> tuple[bytes, str]:
    """The result objects as one multipart/related body of application/dicom parts."""
    if isinstance(result, RemoteResult):
        return build_related(result.parts)
    results = result.results
    return build_related([results.part10(kind) for kind, _ in results.items()]
                         if results is not None else [])


def _submit(node, data: bytes, options: dict):
    received = receive(data, "http", None, options)
    return node.intake.submit(received, node.settings.max_queue_depth)


async def node_score(node, data: bytes, options: dict) -> Outcome | RemoteResult:
    """Parse and gate ``data``, have the workers score it, and wait for the result (a domain
    error when the job did not end ``done``). A worker pool that does not answer in time is
    busy (503 with Retry-After); the node's own workers, stuck (504)."""
    job_id, future = await run_in_threadpool(_submit, node, data, options)
    timeout = node.settings.score_timeout_s
    try:
        outcome, result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        if node.settings.broker is not None:
            raise OutOfResourcesError(f"no worker answered within {timeout} s "
                                      f"(job {job_id})") from None
        raise ApiError(504, "timeout", f"no result within {timeout} s (job {job_id})") from None
    if outcome.state != "done":
        raise JobFailedError(outcome.state, outcome.code, outcome.reason)
    return result
