"""The worker role over a broker: consume jobs and ``/score`` requests in micro-batches, run
the core as the embedded worker does, publish the delivery messages (confirmed), then
acknowledge.

A message is acknowledged only once its job's record is closed and its deliveries are
published; a worker killed before that leaves its messages unacknowledged, and the broker hands
them to another worker. A job whose record is closed already (a repeat) has its pending
deliveries published again and is acknowledged without running the model: result UIDs are
deterministic and the results are dated by the receive time, so a repeat is the same objects.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from node.broker import topology
from node.broker.client import BACKOFF_S, BrokerUnavailableError, Publisher
from node.broker.consumer import Consumer, Received
from node.broker.messages import (
    DeliveryMessage,
    JobMessage,
    MessageError,
    ReplyMessage,
    ScoreMessage,
    decode,
)
from node.broker.receiver import PoolModel
from node.core.errors import OutOfResourcesError
from node.core.memory import trim
from node.core.pipeline import Outcome, Pipeline
from node.core.scoring import score_document
from node.jobs.intake import Intake, Work
from node.jobs.model import FINAL_STATES, JobOutcome, Ticket
from node.jobs.storage import OUTBOX, SpoolFullError, StoreUnavailableError
from node.jobs.views import ViewWorker
from node.metrics import BROKER_DEAD_LETTERED
from node.settings import Settings

logger = logging.getLogger(__name__)


def dead_letter(publisher: Publisher, consumer: Consumer, message: Received,
                reason: str) -> None:
    """Move ``message`` to the dead-letter queue with ``reason``, then acknowledge it (left
    unacknowledged when the broker does not confirm: it comes back)."""
    logger.error("message from %s sent to %s: %s", message.queue, topology.DEAD, reason)
    headers = {topology.REASON_HEADER: reason[:500], "x-cxr-queue": message.queue}
    try:
        publisher.publish(topology.DEAD, message.body, headers=headers)
    except BrokerUnavailableError:
        consumer.requeue(message)
        return
    BROKER_DEAD_LETTERED.labels(message.queue, reason.split(":")[0][:40]).inc()
    consumer.ack(message)


class _Settle:
    """The :class:`~node.jobs.queue.JobQueue` calls a worker makes, on the messages of its
    current batch."""

    def __init__(self, worker: BrokerWorker) -> None:
        self.worker = worker

    def ack(self, job_id: int) -> None:
        message = self.worker.pending.pop(job_id, None)
        if message is not None:
            self.worker.consumer.ack(message)

    def retry_later(self, ticket: Ticket, delay_s: float) -> None:
        """No room for results: the message is kept and the batch's end tries it again."""
        self.worker.pending.pop(ticket.job_id, None)
        raise SpoolFullError(errno.ENOSPC, f"no room for the results of job {ticket.job_id}")


class BrokerWorker(ViewWorker):
    """A :class:`~node.jobs.worker.Worker` fed by the broker (``cxr.jobs``, ``cxr.score``)."""

    transient_store_errors = True

    def __init__(self, name: str, settings: Settings, intake: Intake, pipeline: Pipeline,
                 stop: threading.Event, publisher: Publisher, consumer: Consumer,
                 model: PoolModel) -> None:
        super().__init__(name, settings, intake, pipeline, stop)
        self.publisher = publisher
        self.consumer = consumer
        self.model = model
        self.queue = _Settle(self)  # type: ignore[assignment]
        self.pending: dict[int, Received] = {}
        #: why this worker refuses work (another model than the pool's), else None
        self.refused: str | None = None
        #: told why, once, when this worker stops for refusing work
        self.on_refused: Callable[[str], None] | None = None

    def run(self) -> None:
        size = self.settings.batch_size
        delay = self.settings.max_queue_delay_ms / 1000
        used = False
        held: list[Received] = []
        wait = BACKOFF_S[0]
        while not self.stop_event.is_set() and self.refused is None:
            messages = held or self.consumer.fetch(size, 0.5, delay, self.stop_event)
            held = []
            if not messages:
                if used:
                    trim()
                    used = False
                continue
            used = True
            try:
                work = []
                for message in messages:
                    item = self._work(message)
                    if item is not None:
                        work.append(item)
                if work:
                    self.process(work)
            except OutOfResourcesError as e:  # the records, the broker or the store, for now
                logger.warning("worker %s: %s", self.name, e)
            except Exception:  # the worker never dies; unacknowledged messages come back
                logger.exception("worker %s: batch failed", self.name)
                self.consumer.lost(RuntimeError("batch failed"))
                self.stop_event.wait(1)
            finally:
                self.pending.clear()
            # What could not be settled is kept and tried again after a while: a
            # redelivery would count towards the queue's delivery limit.
            held = self.consumer.unsettled(messages)
            if held:
                logger.warning("worker %s: trying %d job(s) again in %.1f s", self.name,
                               len(held), wait)
                self.consumer.pause(wait, self.stop_event)
                wait = min(2 * wait, BACKOFF_S[1])
            else:
                wait = BACKOFF_S[0]
        if self.refused is not None and self.on_refused is not None:
            self.on_refused(self.refused)
        self.consumer.close()
        self.decoder.shutdown(wait=False)

    def _work(self, message: Received) -> Work | None:
        """The job a message asks for; ``None`` when it was settled here (unreadable,
        missing object, a repeat, another model)."""
        try:
            job = decode(message.body, JobMessage, ScoreMessage)
        except MessageError as e:
            dead_letter(self.publisher, self.consumer, message, f"unreadable: {e}")
            return None
        if (job.model_sha256, job.engine) != (self.model.sha256, self.model.engine):
            self.refused = (f"the pool runs model sha256 {job.model_sha256[:12]} on "
                            f"{job.engine}; this worker has {self.model.sha256[:12]} on "
                            f"{self.model.engine}: it refuses work")
            logger.error("worker %s: %s", self.name, self.refused)
            self.consumer.requeue(message)
            return None
        record = self.records.job(job.job_id)
        if record is None:
            dead_letter(self.publisher, self.consumer, message,
                        f"no-record: job {job.job_id} is not in the job records")
            return None
        if record.state in FINAL_STATES:  # a repeat: its deliveries again, no model
            if isinstance(job, ScoreMessage) or self._publish_deliveries(job.job_id):
                self.consumer.ack(message)
            return None
        try:
            self.store.local_path(job.key).stat()
        except (FileNotFoundError, ValueError) as e:
            self.records.close(job.job_id, JobOutcome("failed", "not-stored",
                                                      "its stored object is gone"))
            dead_letter(self.publisher, self.consumer, message,
                        f"missing-object: {job.key}: {type(e).__name__}")
            return None
        except OSError as e:  # the store does not answer now: not the message's fault
            raise StoreUnavailableError(e.errno, f"{job.key}: {e.strerror}") from e
        self.pending[job.job_id] = message
        future: Future | None = None
        if isinstance(job, ScoreMessage):
            future = Future()
            future.add_done_callback(lambda f, j=job, m=message: self._reply(j, m, f))
        return Work(job.ticket(), None, future)

    def _publish_deliveries(self, job_id: int) -> bool:
        """Publish the job's pending deliveries (confirmed); False when the broker did not
        take them all."""
        try:
            for d in self.records.deliveries_of(job_id):
                if d.state == "pending":
                    self.publisher.publish(topology.DELIVER, DeliveryMessage.of(d))
        except BrokerUnavailableError as e:
            logger.warning("job %d: deliveries not published (%s); it comes back", job_id, e)
            return False
        return True

    def closed(self, work: Work, outcome: JobOutcome, result: Outcome | None) -> None:
        super().closed(work, outcome, result)  # the job's view for /ui
        ticket = work.ticket
        if ticket.origin != "http" and not self._publish_deliveries(ticket.job_id):
            # not acknowledged: kept, and tried again (its record is closed: only the
            # deliveries are published again)
            self.pending.pop(ticket.job_id, None)

    def _reply(self, job: ScoreMessage, message: Received, done: Future) -> None:
        """Answer a ``/score`` request (its upload is deleted: the answer acknowledges it)."""
        outcome, result = done.result()
        document, keys = None, []
        if outcome.state == "done" and result is not None:
            options = job.options
            document = score_document(self.pipeline.model, result,
                                      options.get("explain", "none") != "none",
                                      self.settings.parametric_map)
            if options.get("dicom") and result.results is not None:
                keys = [self.store.put(OUTBOX, result.results.part10(kind), durable=False)
                        for kind, _ in result.results.items()]
        reply = ReplyMessage(job.job_id, outcome.state, outcome.code, outcome.reason,
                             document, keys)
        try:
            self.publisher.publish(message.properties.reply_to or "", reply,
                                   correlation_id=message.properties.correlation_id)
        except BrokerUnavailableError as e:  # its caller times out and answers 503
            logger.warning("job %d: reply not sent (%s)", job.job_id, e)
        self.store.delete(job.key)
