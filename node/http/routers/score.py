"""``POST /score``: one radiograph in, the model's result out, synchronously.

The image goes through the node's queue and batching worker like any other; only the answer
comes back on the same connection.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from node.core.scoring import score_document, validate_upload
from node.http.deps import body_limit, get_node, read_body, require_token
from node.http.errors import ApiError
from node.http.multipart import build_related

router = APIRouter(tags=["scoring"], dependencies=[Depends(require_token)])

DICOM_TYPES = ("application/dicom", "application/octet-stream")


async def upload_bytes(request: Request) -> bytes:
    """The DICOM file of a request: the raw body, or multipart form field ``image``."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        await read_body(request)  # enforce the size limit before parsing the form
        form = await request.form(max_files=1, max_fields=8, max_part_size=body_limit(request))
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
    explain: Literal["none", "gradcam", "gradcampp", "shap"] = Query(
        "none", description="add a heat map (base64 PNG overlay) with this method"),
) -> Response:
    node = get_node(request)
    data = await upload_bytes(request)
    ds = await run_in_threadpool(validate_upload, data)
    dicom = wants_dicom(request.headers.get("accept", ""))
    closed = await node_score(node, data, ds, {"explain": explain, "dicom": dicom})
    if dicom:
        body, content_type = await run_in_threadpool(_related, closed.outcome)
        return Response(body, media_type=content_type)
    document = await run_in_threadpool(score_document, node.model, closed.outcome,
                                       explain != "none")
    return JSONResponse(document)


def _related(outcome) -> tuple[bytes, str]:
    """The result objects as one multipart/related body of application/dicom parts."""
    results = outcome.results
    return build_related([results.part10(kind) for kind, _ in results.items()]
                         if results is not None else [])


async def node_score(node, data: bytes, ds: Dataset, options: dict):
    """Queue ``data`` (parsed: ``ds``) for scoring and wait for its outcome (ApiError when
    not done)."""
    # Not fsynced: the answer is the acknowledgement, and it comes only with the result.
    job_id = await run_in_threadpool(node.http_intake.accept, data, str(ds.SOPInstanceUID),
                                     None, "http", options, ds, False)
    future = node.jobs.waiters.wait_for(job_id)
    try:
        closed = await asyncio.wait_for(asyncio.wrap_future(future),
                                        node.settings.score_timeout_s)
    except TimeoutError:
        node.jobs.waiters.forget(job_id)
        raise ApiError(504, "timeout", f"no result within {node.settings.score_timeout_s} s; "
                          f"job {job_id} is still queued") from None
    if closed.state == "done":
        return closed
    code, _, reason = (closed.reason or "unknown: failed").partition(": ")
    status = 422 if closed.state == "skipped" else 400
    if code.startswith("internal"):
        status = 500
    raise ApiError(status, "declined" if status == 422 else "invalid-input",
                      reason or code, code)
