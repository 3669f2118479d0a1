"""Errors to HTTP answers, in one handler: every error body is JSON with a reason.

What a domain error becomes is decided by :func:`node.core.errors.problem_for`, shared with
``deploy/score.py``; this module only installs it.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_io import DicomIOError
from node.core.errors import CoreError, Problem, problem_for


class ApiError(Exception):
    """A refusal of the HTTP front itself (size, media type, token): its :class:`Problem`."""

    def __init__(self, status: int, error: str, reason: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.problem = Problem(status, error, reason, code, headers or {})


def answer(problem: Problem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status, headers=problem.headers)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    return answer(exc.problem if isinstance(exc, ApiError) else problem_for(exc))


async def http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": "http", "reason": str(exc.detail)}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None) or {})


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": "invalid-request", "reason": problems}, status_code=422)


def install(app) -> None:
    for cls in (ApiError, DicomIOError, CoreError):
        app.add_exception_handler(cls, domain_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
