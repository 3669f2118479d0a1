"""Workers: take jobs from the queue in micro-batches, run the pipeline, fill the outbox."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_io import DeclinedError, DicomIOError, from_dataset, read_dataset
from domain import SourceImage
from inference import Scored
from node.core.memory import trim
from node.core.pipeline import Outcome, Pipeline
from node.jobs.intake import Intake
from node.jobs.queue import Job, SqliteQueue
from node.jobs.storage import Spool, SpoolFullError
from node.metrics import BATCH_SIZE, JOBS
from node.settings import Settings

logger = logging.getLogger(__name__)

#: Called with (job, final state, outcome or None, reason or None) when a job is closed.
Listener = Callable[[Job, str, "Outcome | None", "str | None"], None]



class Worker(threading.Thread):
    """Claims up to ``batch_size`` jobs, waiting at most ``max_queue_delay`` to fill a batch."""

    def __init__(self, name: str, settings: Settings, intake: Intake, pipeline: Pipeline,
                 stop: threading.Event, listeners: list[Listener]) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.intake = intake
        self.queue: SqliteQueue = intake.queue
        self.spool: Spool = intake.spool
        self.pipeline = pipeline
        self.stop_event = stop
        self.listeners = listeners
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-decode")

    def run(self) -> None:
        size = self.settings.batch_size
        delay = self.settings.max_queue_delay_ms / 1000
        used = False  # memory freed since the last trim
        while not self.stop_event.is_set():
            try:
                jobs = self.queue.claim(size)
                if not jobs:
                    if used:  # idle: give the freed pages of the last batches back
                        trim()
                        used = False
                    self.intake.wake.wait(0.5)
                    self.intake.wake.clear()
                    continue
                if len(jobs) < size and delay > 0:
                    time.sleep(delay)
                    jobs += self.queue.claim(size - len(jobs))
                used = True
                self.process(jobs)
            except Exception:  # the worker never dies; the jobs stay for recovery
                logger.exception("worker %s: batch failed", self.name)
                time.sleep(1)
        self.decoder.shutdown(wait=False)

    def _load(self, job: Job) -> SourceImage | DicomIOError:
        try:
            held = self.intake.handoff.take(job.path)
            if held is None:
                held = Path(job.path)
            ds = held if isinstance(held, Dataset) else read_dataset(held)
            return from_dataset(ds, name=f"job {job.id}")
        except DicomIOError as e:
            return e
        except Exception as e:
            return DicomIOError("corrupt", f"{type(e).__name__}: {e}")

    def _notify(self, job: Job, state: str, outcome: Outcome | None, reason: str | None):
        JOBS.labels(job.origin, state).inc()
        for listener in self.listeners:
            try:
                listener(job, state, outcome, reason)
            except Exception:
                logger.exception("listener failed for job %d", job.id)

    def _close(self, job: Job, state: str, reason: str) -> None:
        self.queue.finish(job.id, state, reason)
        if self.settings.purge_delivered:
            self.spool.remove(Path(job.path))
        logger.info("job %d %s: %s", job.id, state, reason)
        self._notify(job, state, None, reason)

    def process(self, jobs: list[Job]) -> None:
        loaded = list(self.decoder.map(self._load, jobs))
        good: list[tuple[Job, SourceImage]] = []
        for job, item in zip(jobs, loaded, strict=True):
            if isinstance(item, DeclinedError):
                self._close(job, "skipped", f"{item.code}: {item.reason}")
            elif isinstance(item, DicomIOError):
                self._close(job, "failed", f"{item.code}: {item.reason}")
            else:
                good.append((job, item))
        if not good:
            return
        BATCH_SIZE.observe(len(good))
        scored = self.pipeline.score([image for _, image in good])
        # Each image (full-size pixels) and its results are let go as soon as it is done, not
        # at the end of the batch.
        pending = [(job, one) for (job, _), one in zip(good, scored, strict=True)][::-1]
        del loaded, good, scored
        while pending:
            self._complete(*pending.pop())

    def _complete(self, job: Job, scored: Scored) -> None:
        try:
            options = job.options or {}
            outcome = self.pipeline.complete(scored, method=options.get("explain"),
                                             build_dicom=options.get("dicom", True))
            self._deliver(job, outcome)
        except SpoolFullError as e:
            logger.error("job %d: outbox full (%s); will retry", job.id, e.strerror)
            self.queue.requeue(job.id, f"outbox full: {e.strerror}")
            time.sleep(5)
        except Exception as e:
            logger.exception("job %d failed", job.id)
            self.queue.finish(job.id, "failed", f"internal error: {type(e).__name__}: {e}")
            self._notify(job, "failed", None, f"internal error: {type(e).__name__}")

    def destinations(self, job: Job) -> list[str]:
        """DIMSE and DICOMweb destinations of a job's results (none for HTTP scoring)."""
        if job.origin == "http":
            return []
        out = list(self.settings.destinations) + list(self.settings.dicomweb_destinations)
        if job.calling_ae:
            peer = self.settings.peer_for(job.calling_ae)
            if peer is not None and str(peer) not in out:
                out.append(str(peer))
        return out

    def _deliver(self, job: Job, outcome: Outcome) -> None:
        destinations = self.destinations(job)
        items: list[tuple[str, str, str]] = []
        if destinations:
            for kind, ds in outcome.objects.items():
                uid = str(ds.SOPInstanceUID)
                data = outcome.results.part10(kind)
                path = self.spool.write(self.spool.outbox, f"{uid}.dcm", data)
                items += [(d, str(path), uid) for d in destinations]
        self.queue.finish(job.id, "done", None, items)
        if not destinations and self.settings.purge_delivered:
            self.spool.remove(Path(job.path))
        logger.info("job %d done: %d result object(s) for %d destination(s)", job.id,
                    len(outcome.objects), len(destinations))
        self._notify(job, "done", outcome, None)
