"""What the jobs layer passes around: tickets in the queue, records of jobs and deliveries,
and the typed outcome of a job. References only (keys, UIDs), never DICOM bytes, so that a
ticket can cross a process or a machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: A job's life: ``queued`` -> ``processing`` -> ``done`` | ``skipped`` | ``failed``.
JobState = Literal["queued", "processing", "done", "skipped", "failed"]
FINAL_STATES: tuple[str, ...] = ("done", "skipped", "failed")
#: A delivery's life: ``pending`` -> ``sent`` | ``failed`` (re-sendable).
DeliveryState = Literal["pending", "sent", "failed"]
#: Where a job came from: C-STORE, STOW-RS, ``POST /score``, or found in storage at start.
Origin = Literal["dimse", "stow", "http", "recovered"]


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: its final state, a machine-readable code and a reason in words."""

    state: str
    code: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.state not in FINAL_STATES:
            raise ValueError(f"job outcome state {self.state!r}: use one of {FINAL_STATES}")

    @classmethod
    def done(cls) -> JobOutcome:
        return cls("done")

    def __str__(self) -> str:
        return self.state if self.code is None else f"{self.state} ({self.code}: {self.reason})"


@dataclass(frozen=True)
class Ticket:
    """One job in the queue: which record, which stored object, what to do with it.

    ``key`` is the object's storage key; ``None`` for a ``/score`` job, whose object lives
    only in the memory of the request that waits for it. ``sha256`` is the stored object's
    (checked when it is read back on another machine); ``received_at`` (epoch seconds) dates
    its results, so that processing it again builds identical objects.
    """

    job_id: int
    key: str | None
    sop_instance_uid: str | None
    calling_ae: str | None
    origin: str
    options: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    sha256: str | None = None
    received_at: float | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job as the records keep it (what ``cxr-node jobs`` and ``/jobs`` show)."""

    id: int
    key: str | None
    sop_instance_uid: str | None
    calling_ae: str | None
    origin: str
    state: str
    code: str | None
    reason: str | None
    options: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0

    def ticket(self, attempt: int = 1) -> Ticket:
        return Ticket(self.id, self.key, self.sop_instance_uid, self.calling_ae, self.origin,
                      self.options, attempt, received_at=self.created or None)


@dataclass(frozen=True)
class ResultObject:
    """One stored result object, with what a sender needs to know without reading it."""

    key: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class RemoteResult:
    """A ``/score`` answer computed by another process (a worker of a scaled pool): its
    scoring document and its result objects (Part 10 bytes, when DICOM was asked for)."""

    document: dict[str, Any]
    parts: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """One result object for one destination."""

    id: int
    job_id: int
    destination: str
    key: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    state: str
    attempts: int
    reason: str | None


def failed_document(counts: dict[str, int], jobs: list[JobRecord],
                    deliveries: list[Delivery]) -> dict[str, Any]:
    """The failed-jobs document of ``cxr-node jobs --json`` and ``GET /jobs``."""
    return {
        "counts": counts,
        "failed_jobs": [{"id": j.id, "state": j.state, "code": j.code,
                         "reason": f"{j.code}: {j.reason}" if j.code else j.reason,
                         "sop_instance_uid": j.sop_instance_uid} for j in jobs],
        "failed_deliveries": [{"id": d.id, "destination": d.destination,
                               "sop_instance_uid": d.sop_instance_uid, "attempts": d.attempts,
                               "reason": d.reason} for d in deliveries],
    }
