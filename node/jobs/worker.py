"""Workers: claim jobs in micro-batches, run the core, store results, then acknowledge.

A job's ticket is acknowledged only once its record is closed and its results are stored
(pika's manual acknowledgement: after the work's result is durable).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import InvalidStateError, ThreadPoolExecutor

from dicom_io import DeclinedError, DicomIOError, decode, from_dataset, read_dataset
from domain import SourceImage
from inference import Scored
from node.core.errors import OutOfResourcesError
from node.core.memory import trim
from node.core.pipeline import Outcome, Pipeline
from node.jobs.intake import Intake, Work
from node.jobs.model import JobOutcome, ResultObject, Ticket
from node.jobs.storage import OUTBOX, SpoolFullError, StoreUnavailableError
from node.metrics import BATCH_SIZE, JOBS
from node.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds before a job whose results found no room is tried again.
NO_ROOM_RETRY_S = 5.0


class Worker(threading.Thread):
    """Claims up to ``batch_size`` jobs, waiting at most ``max_queue_delay`` to fill a batch."""

    #: Whether a store that cannot be read now stops the batch (its jobs are tried again) or
    #: fails the job: the embedded queue returns leases only at start, so it fails the job.
    transient_store_errors = False

    def __init__(self, name: str, settings: Settings, intake: Intake, pipeline: Pipeline,
                 stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.intake = intake
        self.records = intake.records
        self.store = intake.store
        #: where this worker's tickets are settled (acknowledged, retried)
        self.queue = intake.queue
        self.pipeline = pipeline
        self.stop_event = stop
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-decode")
        #: tickets of a batch stopped for want of room, not yet given back to the queue
        self._held: list[Ticket] = []

    def run(self) -> None:
        size = self.settings.batch_size
        delay = self.settings.max_queue_delay_ms / 1000
        used = False  # memory freed since the last trim
        while not self.stop_event.is_set():
            work: list[Work] = []
            try:
                if self._held:
                    self._release()
                work = self.intake.claim(size)
                if not work:
                    if used:  # idle: give the freed pages of the last batches back
                        trim()
                        used = False
                    self.intake.wake.wait(0.5)
                    self.intake.wake.clear()
                    continue
                if len(work) < size and delay > 0:
                    self.stop_event.wait(delay)
                    work += self.intake.claim(size - len(work))
                used = True
                self.process(work)
            except OutOfResourcesError as e:  # the records had no room (a full disk)
                logger.error("worker %s: batch of %d stopped, out of resources (%s); its jobs "
                             "are tried again", self.name, len(work), e)
                self._release([w.ticket for w in work if w.ticket.key is not None])
                self.stop_event.wait(1)
            except Exception:  # the worker never dies; the jobs stay for recovery
                logger.exception("worker %s: batch failed", self.name)
                self.stop_event.wait(1)
        self.decoder.shutdown(wait=False)

    def _release(self, tickets: Sequence[Ticket] = ()) -> None:
        """Give the leases of a stopped batch back to the queue (the embedded queue returns
        leases only at start otherwise), in :data:`NO_ROOM_RETRY_S`; those it cannot take
        now (no room for that either) are kept and given back at the next turn. A ticket
        settled already is not in the queue any more: nothing happens to it."""
        held, self._held = [*self._held, *tickets], []
        for i, ticket in enumerate(held):
            try:
                self.queue.retry_later(ticket, NO_ROOM_RETRY_S)
            except OutOfResourcesError:
                self._held = held[i:]
                return

    def _load(self, work: Work) -> SourceImage | DicomIOError:
        """Decode the job's image. Gated where it arrived; an object read back from storage
        (after a restart, beyond the handoff's limit, from an earlier release) is parsed
        and gated again."""
        name = f"job {work.ticket.job_id}"
        try:
            ds, work.dataset = work.dataset, None  # the pixels are let go once decoded
            if ds is not None:
                return decode(ds, name=name)
            data = self.store.get(work.ticket.key)
            expected = work.ticket.sha256
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                return DicomIOError("corrupt", "the stored object is not the one received "
                                    "(sha256 differs)")
            return from_dataset(read_dataset(data), name=name)
        except DicomIOError as e:
            return e
        except OSError as e:
            if self.transient_store_errors and not isinstance(e, FileNotFoundError):
                raise StoreUnavailableError(e.errno, f"reading {work.ticket.key}: "
                                            f"{e.strerror}") from e
            return DicomIOError("not-stored" if isinstance(e, FileNotFoundError) else "corrupt",
                                f"{type(e).__name__}: {e}")
        except Exception as e:
            return DicomIOError("corrupt", f"{type(e).__name__}: {e}")

    def close(self, work: Work, outcome: JobOutcome, result: Outcome | None = None,
              deliveries: Sequence[tuple[str, ResultObject]] = ()) -> None:
        """Record how ``work`` ended, then acknowledge its ticket and answer its waiter."""
        ticket = work.ticket
        self.records.close(ticket.job_id, outcome, deliveries)
        self.closed(work, outcome, result)
        if ticket.key is not None:
            self.queue.ack(ticket.job_id)
            if self.settings.purge_delivered and not deliveries:
                self.store.delete(ticket.key)
        JOBS.labels(ticket.origin, outcome.state).inc()
        logger.info("job %d %s", ticket.job_id, outcome)
        if work.future is not None:
            with contextlib.suppress(InvalidStateError):  # its request gave up waiting
                work.future.set_result((outcome, result))

    def closed(self, work: Work, outcome: JobOutcome, result: Outcome | None) -> None:
        """After a job's record is closed, before its ticket is acknowledged: a hook for
        what must be durable by then (a broker's delivery messages)."""

    def process(self, work: list[Work]) -> None:
        self.records.started([w.ticket.job_id for w in work])
        loaded = list(self.decoder.map(self._load, work))
        good: list[tuple[Work, SourceImage]] = []
        for item, image in zip(work, loaded, strict=True):
            if isinstance(image, DicomIOError):
                state = "skipped" if isinstance(image, DeclinedError) else "failed"
                self.close(item, JobOutcome(state, image.code, image.reason))
            else:
                good.append((item, image))
        if not good:
            return
        BATCH_SIZE.observe(len(good))
        try:
            scored = self.pipeline.score([image for _, image in good])
        except Exception:
            logger.exception("scoring a batch of %d failed; scoring its images one by one",
                             len(good))
            scored = []
            for item, image in good:
                try:
                    [one] = self.pipeline.score([image])
                    scored.append(one)
                except Exception as e:  # this image alone fails
                    self.close(item, JobOutcome("failed", "internal", type(e).__name__))
                    scored.append(None)
        # Each image (full-size pixels) and its results are let go as soon as it is done, not
        # at the end of the batch.
        pending = [(item, one) for (item, _), one in zip(good, scored, strict=True)
                   if one is not None][::-1]
        del loaded, good, scored
        while pending:
            self._complete(*pending.pop())

    def _complete(self, work: Work, scored: Scored) -> None:
        try:
            options = work.ticket.options
            received = work.ticket.received_at
            result = self.pipeline.complete(
                scored, method=options.get("explain"), build_dicom=options.get("dicom", True),
                timestamp=None if received is None else
                datetime.datetime.fromtimestamp(received))
            self.close(work, JobOutcome.done(), result, self._store_results(work, result))
        except SpoolFullError as e:
            logger.error("job %d: no room for its results (%s); retry in %.0f s",
                         work.ticket.job_id, e, NO_ROOM_RETRY_S)
            self.records.requeued(work.ticket.job_id, f"no room for results: {e}")
            self.queue.retry_later(work.ticket, NO_ROOM_RETRY_S)
        except DicomIOError as e:  # the image cannot carry results (its code says why)
            logger.warning("job %d failed: %s", work.ticket.job_id, e.code)
            self.close(work, JobOutcome("failed", e.code, e.reason))
        except OutOfResourcesError as e:  # the records or the store, for now
            if self.transient_store_errors:  # the batch's messages are tried again
                raise
            logger.error("job %d failed: %s", work.ticket.job_id, e)
            self.close(work, JobOutcome("failed", "internal", type(e).__name__))
        except Exception as e:
            logger.exception("job %d failed", work.ticket.job_id)
            self.close(work, JobOutcome("failed", "internal", type(e).__name__))

    def destinations(self, work: Work) -> list[str]:
        """DIMSE and DICOMweb destinations of a job's results (none for ``/score``)."""
        if work.ticket.key is None or work.ticket.origin == "http":
            return []
        out = list(self.settings.destinations) + list(self.settings.dicomweb_destinations)
        calling = work.ticket.calling_ae
        if calling:
            peer = self.settings.peer_for(calling)
            if peer is not None and str(peer) not in out:
                out.append(str(peer))
        return out

    def _store_results(self, work: Work, result: Outcome) -> list[tuple[str, ResultObject]]:
        destinations = self.destinations(work)
        if not destinations or result.results is None:
            return []
        items: list[tuple[str, ResultObject]] = []
        for kind, ds in result.results.items():
            uid = str(ds.SOPInstanceUID)
            key = self.store.put(OUTBOX, result.results.part10(kind), name=f"{uid}.dcm")
            obj = ResultObject(key, uid, str(ds.SOPClassUID),
                               str(ds.file_meta.TransferSyntaxUID))
            items += [(d, obj) for d in destinations]
        return items

