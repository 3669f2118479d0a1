"""The core's errors, and the one mapping of every domain error to an HTTP answer.

The node's HTTP front and ``deploy/score.py`` both answer with :func:`problem_for`, so a
refusal reads the same wherever it is asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dicom_io import DeclinedError, DicomIOError

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait (``Retry-After``) when the node is out of resources.
RETRY_AFTER_S = 5


class CoreError(Exception):
    """Base of the core's errors."""


class OutOfResourcesError(CoreError):
    """No room or no capacity now (a full disk, a full queue): try again later."""


class JobFailedError(CoreError):
    """A job ended without a result: ``state`` (``skipped`` or ``failed``), ``code``, ``reason``."""

    def __init__(self, state: str, code: str | None, reason: str | None) -> None:
        super().__init__(f"{code}: {reason}")
        self.state, self.code, self.reason = state, code or "failed", reason or state


@dataclass(frozen=True)
class Problem:
    """An HTTP error answer: ``status``, a machine-readable ``error``, a human ``reason``,
    the node's ``code`` for it, and headers (``Retry-After``, ``WWW-Authenticate``)."""

    status: int
    error: str
    reason: str
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, str]:
        """The JSON body: ``{"error", "reason"[, "code"]}``."""
        out = {"error": self.error, "reason": self.reason}
        if self.code:
            out["code"] = self.code
        return out


def problem_for(exc: BaseException) -> Problem:
    """The HTTP form of a domain error (500 for anything else, without its message)."""
    if isinstance(exc, DeclinedError):
        return Problem(422, "declined", exc.reason, exc.code)
    if isinstance(exc, DicomIOError):
        return Problem(400, "invalid-input", exc.reason, exc.code)
    if isinstance(exc, JobFailedError):
        if exc.state == "skipped":
            return Problem(422, "declined", exc.reason, exc.code)
        if exc.code.startswith("internal"):
            return Problem(500, "internal-error", exc.reason, exc.code)
        return Problem(400, "invalid-input", exc.reason, exc.code)
    if isinstance(exc, OutOfResourcesError):
        return Problem(503, "busy", str(exc), "out-of-resources",
                       {"Retry-After": str(RETRY_AFTER_S)})
    logger.error("unexpected %s in a request", type(exc).__name__)
    return Problem(500, "internal-error", type(exc).__name__, "internal-error")
