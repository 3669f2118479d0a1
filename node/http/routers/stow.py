"""DICOMweb STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``.

Each instance is stored durably and queued exactly like a C-STORE; the response lists what
was stored (ReferencedSOPSequence) and what failed, with a reason (FailedSOPSequence).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dicom_io import DeclinedError, DicomIOError, status
from dicom_io.uids import INPUT_SOP_CLASSES
from node.core.errors import RETRY_AFTER_S, OutOfResourcesError
from node.http.deps import get_node, read_body, require_token
from node.http.errors import ApiError
from node.http.multipart import parse_related, related_type
from node.jobs.intake import receive

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"], dependencies=[Depends(require_token)])

def _item(sop_class: str | None, sop_instance: str | None, reason: int | None = None,
          comment: str | None = None) -> dict:
    item: dict = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    if comment:  # Error Comment: says why, in words, without patient data
        item["00000902"] = {"vr": "LO", "Value": [comment[:64]]}
    return item


#: Gate codes that mean the object cannot be understood (else: it does not match its class).
UNREADABLE_CODES = frozenset({"missing-uid", "invalid-uid", "corrupt", "not-dicom", "empty"})


def store_one(node, data: bytes, study: str | None, address: str | None = None
              ) -> tuple[bool, dict]:
    """Parse, gate and store one part; (stored, response item). A part the gate declines
    (a lateral view...) is stored and recorded as skipped, as by C-STORE; one the gate finds
    broken is refused with its code; one part's error never costs the others theirs."""
    try:
        return _store_one(node, data, study, address)
    except Exception as e:  # a fault of the node with this part: this part fails alone
        logger.exception("STOW-RS part could not be stored")
        return False, _item(None, None, status.PROCESSING_FAILURE, type(e).__name__)


def _store_one(node, data: bytes, study: str | None, address: str | None
               ) -> tuple[bool, dict]:
    try:
        received = receive(data, "stow")
        received.address = address  # the audit trail names the sender
    except DicomIOError as e:
        return False, _item(None, None, status.CANNOT_UNDERSTAND, f"{e.code}: {e.reason}")
    ds, verdict = received.dataset, received.verdict
    sop_instance = received.sop_instance_uid
    try:
        sop_class = str(ds.get("SOPClassUID", "")) or None
        target_study = str(ds.get("StudyInstanceUID", ""))
    except Exception:  # a value pydicom cannot read: the gate's verdict says which
        sop_class, target_study = None, ""
    if sop_class and sop_class not in INPUT_SOP_CLASSES:
        return False, _item(sop_class, sop_instance, status.SOP_CLASS_NOT_SUPPORTED,
                            "SOP class not accepted: CR, DX or grayscale SC only")
    if verdict is not None and not isinstance(verdict, DeclinedError):
        reason = (status.CANNOT_UNDERSTAND if verdict.code in UNREADABLE_CODES
                  else status.DATASET_DOES_NOT_MATCH)
        return False, _item(sop_class, sop_instance, reason, f"{verdict.code}: {verdict.reason}")
    if not sop_class or not sop_instance:
        return False, _item(sop_class, sop_instance, status.CANNOT_UNDERSTAND,
                            "SOP UIDs missing")
    if study and target_study != study:
        return False, _item(sop_class, sop_instance, status.DATASET_DOES_NOT_MATCH,
                            "Study Instance UID differs from the target study")
    try:
        node.intake.accept(received, node.settings.max_queue_depth)
    except OutOfResourcesError as e:
        return False, _item(sop_class, sop_instance, status.OUT_OF_RESOURCES, str(e))
    return True, _item(sop_class, sop_instance)


async def _stow(request: Request, study: str | None) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related") or \
            related_type(content_type) not in ("application/dicom", None):
        raise ApiError(415, "unsupported-media-type",
                          'STOW-RS takes multipart/related; type="application/dicom"')
    body = await read_body(request)
    parts = parse_related(body, content_type)
    node = get_node(request)
    stored, failed = [], []
    for headers, payload in parts:
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip()
        if part_type.lower() != "application/dicom":
            failed.append(_item(None, None, status.CANNOT_UNDERSTAND,
                                f"part type {part_type}"))
            continue
        ok, item = await run_in_threadpool(store_one, node, payload, study,
                                           request.client.host if request.client else None)
        (stored if ok else failed).append(item)
    response: dict = {}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if failed and not stored and all(
            item.get("00081197", {}).get("Value") == [status.OUT_OF_RESOURCES] for item in failed):
        # nothing stored for want of room (a full disk, a full queue): busy, come back later
        return JSONResponse(response, status_code=503, media_type="application/dicom+json",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    answer = 200 if not failed else 202 if stored else 409
    return JSONResponse(response, status_code=answer, media_type="application/dicom+json")


STOW_BODY = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {
        "schema": {"type": "string", "format": "binary"}}}}}


@router.post("/studies", summary="STOW-RS: store instances", openapi_extra=STOW_BODY)
async def stow(request: Request) -> JSONResponse:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study",
             openapi_extra=STOW_BODY)
async def stow_study(study: str, request: Request) -> JSONResponse:
    return await _stow(request, study)
