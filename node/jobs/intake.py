"""Intake: the one door every received object goes through (C-STORE, STOW-RS, ``/score``).

An object is parsed and gated once, here (:func:`receive`). :meth:`Intake.accept` then stores
it durably, records its job and queues its ticket, and only then returns: the front may
acknowledge. An object the gate declines is still stored and recorded, as ``skipped`` or
``failed`` with its code, so that the status a sender gets never depends on the gate.
:meth:`Intake.submit` is the short way of ``/score``: no storage, no durable ticket (its
answer is its acknowledgement), a job record all the same, and a future for the answer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from dicom_io import DeclinedError, DicomIOError, check_header, read_dataset
from node.audit import AuditTrail
from node.core.errors import OutOfResourcesError
from node.jobs.model import JobOutcome, Ticket
from node.jobs.queue import JobQueue, QueueFullError
from node.jobs.records import JobRecords
from node.jobs.storage import INCOMING, ObjectStore
from node.metrics import DECLINED, JOBS

logger = logging.getLogger(__name__)


@dataclass
class Received:
    """One object as it arrived: its bytes (Part 10), parsed and gated once.

    ``verdict`` is the gate's refusal (``DeclinedError``: skipped; another ``DicomIOError``:
    failed), ``None`` when the model may see it.
    """

    data: bytes
    dataset: Dataset
    origin: str
    calling_ae: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verdict: DicomIOError | None = None
    #: when it arrived (epoch seconds): dates its results
    at: float = field(default_factory=time.time)
    #: the sender's IP address, where known (the audit trail names it)
    address: str | None = None

    @property
    def sop_instance_uid(self) -> str | None:
        """The data set's SOP Instance UID; ``None`` when absent or unreadable (the gate's
        verdict says why)."""
        try:
            return str(self.dataset.get("SOPInstanceUID", "")).strip() or None
        except Exception:  # a value pydicom cannot read (wrong VR, wrong length)
            return None

    def outcome(self) -> JobOutcome | None:
        if self.verdict is None:
            return None
        state = "skipped" if isinstance(self.verdict, DeclinedError) else "failed"
        return JobOutcome(state, self.verdict.code, self.verdict.reason)


def gate(ds: Dataset) -> DicomIOError | None:
    """The gate's refusal of ``ds`` (:func:`dicom_io.check_header`), or ``None``; header
    checks only, the pixels stay unread."""
    try:
        check_header(ds)
    except DicomIOError as e:
        return e
    return None


def receive(data: bytes, origin: str, calling_ae: str | None = None,
            options: dict[str, Any] | None = None, dataset: Dataset | None = None) -> Received:
    """Parse (unless ``dataset`` is ``data`` parsed already) and gate one object.

    Raises:
        DicomIOError: ``data`` is not a readable DICOM object.
    """
    ds = dataset if dataset is not None else read_dataset(data)
    return Received(data, ds, origin, calling_ae, dict(options or {}), gate(ds))


class Handoff:
    """Objects just received, kept in memory for the worker that will process them.

    The stored object stays the record (a worker that finds nothing here reads it back, and so
    does recovery); this only saves reading back and parsing, under load, what is still in
    memory. Bounded: beyond ``limit_bytes`` new objects are not kept.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._items: dict[str, tuple[Dataset, int]] = {}
        self._held = 0
        self._lock = threading.Lock()

    def put(self, key: str, item: Dataset, size: int) -> bool:
        with self._lock:
            if key in self._items or self._held + size > self.limit_bytes:
                return False
            self._items[key] = (item, size)
            self._held += size
            return True

    def take(self, key: str) -> Dataset | None:
        with self._lock:
            found = self._items.pop(key, None)
            if found is None:
                return None
            self._held -= found[1]
            return found[0]

    @property
    def held_bytes(self) -> int:
        return self._held


@dataclass
class Work:
    """A claimed job for a worker: its ticket, its data set when in memory, and the future of
    the request that waits for it (``/score``)."""

    ticket: Ticket
    dataset: Dataset | None = None
    future: Future | None = None


class Intake:
    """Stores, records and queues received objects; hands claimed work to the workers."""

    def __init__(self, store: ObjectStore, queue: JobQueue, records: JobRecords, *,
                 handoff: Handoff | None = None, purge: bool = True,
                 checksums: bool = False, audit: AuditTrail | None = None) -> None:
        self.store = store
        #: what was received goes into the audit trail (DICOM Instances Transferred)
        self.audit = audit if audit is not None else AuditTrail.off()
        #: tickets carry the object's sha256 (a store shared by machines: checked on reading)
        self.checksums = checksums
        self.queue = queue
        self.records = records
        self.handoff = handoff if handoff is not None else Handoff(0)
        self.purge = purge
        self.wake = threading.Event()
        self._lane: deque[Work] = deque()
        self._lane_lock = threading.Lock()
        #: jobs refused while being stored whose records could not be closed yet
        self._refused: list[int] = []

    def depth(self) -> int:
        return self.queue.depth() + len(self._lane)

    def _check_depth(self, max_depth: int | None) -> None:
        if max_depth is not None and self.depth() >= max_depth:
            raise QueueFullError(f"queue full ({max_depth} jobs waiting)")

    def accept(self, received: Received, max_depth: int | None = None) -> int:
        """Store ``received`` durably, record its job and queue it; return the job id.

        Raises:
            SpoolFullError: no room; nothing was written.
            QueueFullError: ``max_depth`` jobs are waiting; nothing was written.
        """
        self._check_depth(max_depth)
        if self._refused:
            self._close_refused()
        key = self.store.put(INCOMING, received.data)
        job_id = None
        try:
            uid, outcome = received.sop_instance_uid, received.outcome()
            job_id = self.records.open(key, uid, received.calling_ae, received.origin,
                                       received.options, outcome)
            if outcome is not None:
                JOBS.labels(received.origin, outcome.state).inc()
                if outcome.state == "skipped":
                    DECLINED.labels(outcome.code or "-").inc()
                logger.info("received %s from %s as job %d: %s", uid,
                            received.calling_ae or "-", job_id, outcome)
                self.audit.instances_received(received)
                if self.purge:
                    self.audit.deleting(self.store, key)
                    self.store.delete(key)
                return job_id
            # Before the ticket exists: a worker claiming it at once must find it here.
            self.handoff.put(key, received.dataset, len(received.data))
            digest = hashlib.sha256(received.data).hexdigest() if self.checksums else None
            self.queue.put(Ticket(job_id, key, uid, received.calling_ae, received.origin,
                                  received.options, sha256=digest, received_at=received.at))
        except BaseException:
            self.handoff.take(key)
            self.store.delete(key)
            if job_id is not None:
                self._close_refused(job_id)
            raise
        logger.info("received %s from %s as job %d (%s)", uid, received.calling_ae or "-",
                    job_id, received.origin)
        self.wake.set()
        self.audit.instances_received(received)
        return job_id

    def _close_refused(self, *job_ids: int) -> None:
        """Close the records of objects refused while being stored (their senders were told
        so). When the records have no room either (a full disk), they are kept here and
        closed by a later :meth:`accept`: no job stays queued without its object."""
        with self._lane_lock:
            pending, self._refused = [*self._refused, *job_ids], []
        for i, job_id in enumerate(pending):
            try:
                self.records.close(job_id, JobOutcome("failed", "not-stored",
                                                      "refused while being stored"))
            except OutOfResourcesError as e:
                logger.warning("job %d: refused, its record not closed yet: %s", job_id, e)
                with self._lane_lock:
                    self._refused += pending[i:]
                return

    def submit(self, received: Received, max_depth: int | None = None) -> tuple[int, Future]:
        """Queue ``received`` in memory for the workers; its job id and the future of its
        ``(JobOutcome, result)``. The gate's refusal is raised, not queued."""
        if received.verdict is not None:
            raise received.verdict
        self._check_depth(max_depth)
        uid = received.sop_instance_uid
        job_id = self.records.open(None, uid, received.calling_ae, received.origin,
                                   received.options)
        future: Future = Future()
        work = Work(Ticket(job_id, None, uid, received.calling_ae, received.origin,
                           received.options, received_at=received.at), received.dataset, future)
        with self._lane_lock:
            self._lane.append(work)
        self.wake.set()
        return job_id, future

    def claim(self, limit: int) -> list[Work]:
        """Up to ``limit`` jobs: those in memory first, then queued tickets."""
        with self._lane_lock:
            work = [self._lane.popleft() for _ in range(min(limit, len(self._lane)))]
        if len(work) < limit:
            work += [Work(t, self.handoff.take(t.key) if t.key else None)
                     for t in self.queue.claim(limit - len(work))]
        return work

    def adopt(self, key: str) -> int:
        """Record an object found stored without a job (a crash between storing and
        recording) and queue it if the gate lets it through; 1 if queued. Unreadable, it is
        recorded as failed."""
        try:
            received = receive(self.store.get(key), "recovered")
        except DicomIOError as e:
            self.records.open(key, None, None, "recovered", None,
                              JobOutcome("failed", e.code, e.reason))
            return 0
        outcome = received.outcome()
        job_id = self.records.open(key, received.sop_instance_uid, None, "recovered", None,
                                   outcome)
        if outcome is not None:
            return 0
        digest = hashlib.sha256(received.data).hexdigest() if self.checksums else None
        self.queue.put(Ticket(job_id, key, received.sop_instance_uid, None, "recovered",
                              sha256=digest, received_at=received.at))
        return 1

    def recover(self) -> int:
        """At start: leases of a process that is gone, jobs recorded but not queued, and
        objects stored but not recorded (a crash between the steps) are queued again;
        ``/score`` jobs cut off are closed as failed. How many were queued."""
        self.queue.recover()
        count = 0
        for job in self.records.open_jobs():
            if job.key is None:
                self.records.close(job.id, JobOutcome("failed", "interrupted",
                                                      "the node stopped before answering"))
            else:
                self.queue.put(job.ticket())
                count += 1
        known = self.records.known_keys()
        for key in self.store.keys(INCOMING):
            if key not in known:
                count += self.adopt(key)
        if count:
            self.wake.set()
        return count
