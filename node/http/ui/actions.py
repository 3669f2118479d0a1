"""What operators do on the page: sign in and out, resend a failed delivery, run a job again.

Each is a POST with the session's CSRF token, confirmed in the browser, logged with the
operator's name and recorded in the audit trail (``node.audit``: User Authentication for
signing in and out, DICOM Instances Accessed with the operator as requestor for resend and
run again).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from dicom_io import DicomIOError
from node.core.errors import OutOfResourcesError
from node.http.deps import get_node
from node.http.ui.auth import Operator, Posted, sessions
from node.http.ui.pages import not_found, render
from node.jobs.intake import receive

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)


def back(job_id: int, notice: str | None = None, problem: str | None = None
         ) -> RedirectResponse:
    query = f"?notice={quote(notice)}" if notice else f"?problem={quote(problem)}" if problem \
        else ""
    return RedirectResponse(f"/ui/jobs/{job_id}{query}", status_code=303)


def client_address(request: Request) -> str | None:
    """The operator's address, for the log and the audit trail."""
    return request.client.host if request.client else None


def safe_next(target: str) -> str:
    """Only a path of this page after signing in (never another site)."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui"


@router.post("/login", response_model=None)
async def login(request: Request) -> HTMLResponse | RedirectResponse:
    form = {k: str(v) for k, v in (await request.form()).items()}
    name = form.get("name", "").strip()
    store = sessions(request)
    client = client_address(request)
    if not store.check(name, form.get("secret", "")):
        logger.warning("ui: sign-in refused for %r from %s", name[:64], client)
        get_node(request).audit.user_authentication(name[:64] or None, False, address=client,
                                                    detail="web page sign-in refused")
        return render(request, "login.html", None, 401, needs_secret=store.needs_secret,
                      next=safe_next(form.get("next", "/ui")),
                      error="Unknown name or wrong secret.")
    value, seconds = store.issue(name)
    logger.info("ui: operator %s signed in from %s", name, client)
    get_node(request).audit.user_authentication(name, True, address=client)
    response = RedirectResponse(safe_next(form.get("next", "/ui")), status_code=303)
    store.set_cookie(response, value, seconds)
    return response


@router.post("/logout")
async def logout(request: Request, checked_form: Posted) -> RedirectResponse:
    who: Operator = checked_form[0]
    logger.info("ui: operator %s signed out", who.name)
    get_node(request).audit.user_authentication(
        who.name, True, address=client_address(request), logout=True)
    response = RedirectResponse("/ui/login", status_code=303)
    sessions(request).clear_cookie(response)
    return response


@router.post("/jobs/{job_id}/deliveries/{delivery_id}/resend", response_model=None)
async def resend(request: Request, job_id: int, delivery_id: int,
                 checked_form: Posted) -> HTMLResponse | RedirectResponse:
    who: Operator = checked_form[0]
    node = get_node(request)
    delivery = next((d for d in node.records.deliveries_of(job_id) if d.id == delivery_id),
                    None)
    if delivery is None:
        return not_found(request, who, f"Job {job_id} has no delivery {delivery_id}.")
    if delivery.state != "failed" or not node.records.resend_failed([delivery_id]):
        return back(job_id, problem=f"Delivery {delivery_id} to {delivery.destination} has "
                    f"not failed (it is {delivery.state}): there is nothing to resend.")
    logger.info("ui: operator %s resent delivery %d of job %d to %s", who.name,
                delivery_id, job_id, delivery.destination)
    node.audit.operator_accessed(
        who.name, node.store, delivery.key, address=client_address(request),
        detail=f"resend of delivery {delivery_id} to {delivery.destination}")
    sender = getattr(node, "sender", None)
    if sender is not None:
        sender.wake.set()
    return back(job_id, notice=f"Delivery {delivery_id} to {delivery.destination} is "
                "queued to be sent again.")


@router.post("/jobs/{job_id}/rerun", response_model=None)
async def rerun(request: Request, job_id: int, checked_form: Posted
                ) -> HTMLResponse | RedirectResponse:
    who: Operator = checked_form[0]
    node = get_node(request)
    job = node.records.job(job_id)
    if job is None:
        return not_found(request, who, f"There is no job {job_id}.")
    if job.key is None or not node.receives:
        return back(job_id, problem="This job's source was never stored (a /score request) "
                    "or this process does not take images in: it cannot run again.")
    try:
        data = node.store.get(job.key)
    except (OSError, ValueError):
        return back(job_id, problem="The source of this job is no longer kept (deleted once "
                    "its results were sent): it cannot run again. Send it again from the "
                    "modality or the PACS.")
    origin = job.origin if job.origin in ("dimse", "stow") else "recovered"
    try:
        new_id = node.intake.accept(receive(data, origin, job.calling_ae, job.options))
    except (DicomIOError, OutOfResourcesError) as e:  # unreadable now; full
        return back(job_id, problem=f"The job could not be queued again: {e}")
    logger.info("ui: operator %s ran job %d again as job %d", who.name, job_id, new_id)
    node.audit.operator_accessed(
        who.name, node.store, job.key, address=client_address(request),
        detail=f"job {job_id} run again as job {new_id}")
    return RedirectResponse(f"/ui/jobs/{new_id}?notice="
                            + quote(f"Job {job_id} runs again as this job."), status_code=303)
