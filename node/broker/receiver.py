"""The receiver role over a broker: a received object is stored, recorded, published and
confirmed before its sender hears success; ``/score`` goes to the worker pool and back.

:class:`BrokerJobQueue` is the :class:`~node.jobs.queue.JobQueue` a receiver's
:class:`~node.jobs.intake.Intake` puts tickets in: ``put`` returns once the broker confirmed
the job message, so :meth:`Intake.accept` keeps its promise unchanged (a failure answers
0xA700 / 503 and removes what was stored). :func:`reconcile` queues, at start, what a crash
left between the steps.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

from node.broker import topology
from node.broker.client import BrokerUnavailableError, Publisher
from node.broker.messages import JobMessage, MessageError, ReplyMessage, ScoreMessage, decode
from node.jobs.intake import Intake, Received, Work
from node.jobs.model import JobOutcome, RemoteResult, Ticket
from node.jobs.storage import INCOMING

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolModel:
    """The model the pool runs, as receivers stamp it on jobs: a worker with other weights
    or another inference engine refuses them."""

    sha256: str
    engine: str


class BrokerJobQueue:
    """The receiver's side of the job queue: publish with a confirm. The broker hands the
    jobs out (:mod:`node.broker.worker`); nothing is claimed here."""

    def __init__(self, publisher: Publisher, pool: PoolModel) -> None:
        self.publisher = publisher
        self.pool = pool

    def message(self, ticket: Ticket) -> JobMessage:
        if ticket.key is None or ticket.sha256 is None:
            raise ValueError(f"job {ticket.job_id}: a broker job needs a stored object and "
                             "its sha256")
        return JobMessage(ticket.job_id, ticket.key, ticket.sha256, ticket.sop_instance_uid,
                          ticket.calling_ae, ticket.origin,
                          ticket.received_at or time.time(), self.pool.sha256,
                          self.pool.engine, dict(ticket.options), ticket.attempt)

    def put(self, ticket: Ticket) -> None:
        self.publisher.publish(topology.JOBS, self.message(ticket))

    def claim(self, limit: int) -> list[Ticket]:
        return []

    def recover(self) -> int:
        return 0

    def depth(self) -> int:
        """Jobs and ``/score`` requests ready in the broker, not yet handed to a worker
        (counted every second)."""
        return self.publisher.depth(topology.JOBS, topology.SCORE)

    def ack(self, job_id: int) -> None:
        raise NotImplementedError("a receiver settles no jobs")

    def retry_later(self, ticket: Ticket, delay_s: float) -> None:
        raise NotImplementedError("a receiver settles no jobs")

    def dead_letter(self, job_id: int, reason: str) -> None:
        raise NotImplementedError("a receiver settles no jobs")


class BrokerIntake(Intake):
    """:class:`Intake` whose ``/score`` requests go to the worker pool over the broker."""

    queue: BrokerJobQueue

    def submit(self, received: Received, max_depth: int | None = None) -> tuple[int, Future]:
        """Store the upload (without fsync: the answer is its acknowledgement), record its
        job, and publish it as a request; the future of ``(JobOutcome, RemoteResult)``.

        Raises:
            DicomIOError: the gate's refusal.
            OutOfResourcesError: no room, or the broker cannot take it.
        """
        if received.verdict is not None:
            raise received.verdict
        self._check_depth(max_depth)
        key = self.store.put(INCOMING, received.data, durable=False)
        uid = received.sop_instance_uid
        try:
            job_id = self.records.open(key, uid, received.calling_ae, received.origin,
                                       received.options)
            ticket = Ticket(job_id, key, uid, None, received.origin, received.options,
                            sha256=hashlib.sha256(received.data).hexdigest(),
                            received_at=received.at)
            message = ScoreMessage(**vars(self.queue.message(ticket)))
            correlation, reply = self.queue.publisher.request(topology.SCORE, message)
        except BaseException:
            self.store.delete(key)
            raise
        answer: Future = Future()
        reply.add_done_callback(lambda f: _answer(f, answer, self))
        # the request gave up waiting: a late reply is not kept for it
        answer.add_done_callback(lambda f: f.cancelled() and
                                 self.queue.publisher.forget(correlation))
        return job_id, answer

    def claim(self, limit: int) -> list[Work]:
        return []


def _answer(reply: Future, answer: Future, intake: Intake) -> None:
    """Turn a worker's reply into what ``/score`` waits for."""
    if answer.done():  # cancelled: its request timed out
        return
    error = reply.exception()
    if error is not None:
        answer.set_exception(error)
        return
    try:
        message = decode(reply.result(), ReplyMessage)
    except MessageError as e:
        answer.set_exception(BrokerUnavailableError(f"unreadable reply: {e}"))
        return
    outcome = JobOutcome(message.state, message.code, message.reason)
    parts = []
    for key in message.result_keys:
        try:
            parts.append(intake.store.get(key))
        except OSError as e:
            answer.set_exception(BrokerUnavailableError(f"result {key} is gone: {e}"))
            return
        intake.store.delete(key)
    answer.set_result((outcome, RemoteResult(message.document or {}, parts)))


def reconcile(intake: Intake, grace_s: float, score_timeout_s: float = 0) -> int:
    """Queue what a receiver's crash left behind; how many jobs were published.

    Only what is older than ``grace_s`` (other receivers sharing the store are storing and
    publishing right now): jobs recorded ``queued`` (a crash before the publish: published
    again; if it was published, the worker finds the job closed and only acknowledges it),
    ``/score`` jobs cut off (closed as failed once no request can still wait for them:
    ``score_timeout_s``), and objects stored but never recorded.
    A job recorded ``processing`` is not touched: its message is unacknowledged at a worker,
    and the broker hands it to another if that worker died.
    """
    queue: BrokerJobQueue = intake.queue  # type: ignore[assignment]
    now = time.time()
    count = 0
    for job in intake.records.open_jobs():
        if job.updated > now - grace_s or job.state != "queued" or job.key is None:
            continue
        if job.origin == "http":
            if job.updated > now - max(grace_s, score_timeout_s):
                continue
            intake.records.close(job.id, JobOutcome("failed", "interrupted",
                                                    "the receiver stopped before answering"))
            continue
        try:
            data = intake.store.get(job.key)
        except FileNotFoundError:
            intake.records.close(job.id, JobOutcome("failed", "not-stored",
                                                    "its stored object is gone"))
            continue
        except OSError as e:  # the store does not answer now: the next start tries again
            logger.warning("reconciler: job %d left alone (%s)", job.id, e.strerror)
            continue
        ticket = job.ticket()
        queue.put(Ticket(**{**vars(ticket), "sha256": hashlib.sha256(data).hexdigest()}))
        count += 1
    known = intake.records.known_keys()
    for key in list(intake.store.keys(INCOMING)):
        try:
            if key in known or intake.store.local_path(key).stat().st_mtime > now - grace_s:
                continue
            count += intake.adopt(key)
        except FileNotFoundError:  # delivered and deleted meanwhile
            continue
        except Exception as e:  # e.g. another receiver recorded it at the same moment
            logger.warning("reconciler: %s left alone (%s)", key, type(e).__name__)
    if count:
        logger.info("reconciler: %d job(s) published again", count)
    return count
