"""Domain errors to HTTP errors, in one place. Every error body is JSON with a reason."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_io import DeclinedError, DicomIOError
from node.jobs.intake import QueueFullError
from node.jobs.storage import SpoolFullError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class ApiError(Exception):
    """An HTTP error with a machine-readable ``error`` and a human ``reason``."""

    def __init__(self, status: int, error: str, reason: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason, self.code = status, error, reason, code
        self.headers = headers or {}


def problem_for(exc: Exception) -> ApiError:
    """The HTTP form of a domain error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DeclinedError):
        return ApiError(422, "declined", exc.reason, exc.code)
    if isinstance(exc, DicomIOError):
        return ApiError(400, "invalid-input", exc.reason, exc.code)
    if isinstance(exc, QueueFullError | SpoolFullError):
        return ApiError(503, "busy", str(exc) if isinstance(exc, QueueFullError)
                           else "no room to store the image", "out-of-resources",
                           {"Retry-After": str(RETRY_AFTER_S)})
    logger.error("unexpected %s in HTTP request", type(exc).__name__)
    return ApiError(500, "internal-error", f"{type(exc).__name__}")


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    p = problem_for(exc)
    body = {"error": p.error, "reason": p.reason}
    if p.code:
        body["code"] = p.code
    return JSONResponse(body, status_code=p.status, headers=p.headers)


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": "http", "reason": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None) or {})


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": "invalid-request", "reason": problems}, status_code=422)


def install(app) -> None:
    for cls in (ApiError, DicomIOError, QueueFullError, SpoolFullError):
        app.add_exception_handler(cls, domain_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
