"""Intake: the one door every received object goes through (C-STORE, STOW-RS, HTTP).

An object is acknowledged only after :meth:`Intake.accept` returns: it is then on disk
(fsynced) and its job is committed in the queue.
"""

from __future__ import annotations

import logging
import threading

from pydicom.dataset import Dataset

from node.jobs.queue import SqliteQueue
from node.jobs.storage import Spool

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """Back-pressure: too many jobs waiting; the caller should retry later."""


class Handoff:
    """Objects just received, kept in memory for the worker that will read them.

    The spool file stays the record (a worker that finds nothing here reads the file, and
    so does recovery); this only saves reading back and parsing, under load, what is still
    in memory. Bounded: beyond ``limit_bytes`` new objects are not kept.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._items: dict[str, tuple[Dataset | bytes, int]] = {}
        self._held = 0
        self._lock = threading.Lock()

    def put(self, path: str, item: Dataset | bytes, size: int) -> bool:
        with self._lock:
            if path in self._items or self._held + size > self.limit_bytes:
                return False
            self._items[path] = (item, size)
            self._held += size
            return True

    def take(self, path: str) -> Dataset | bytes | None:
        with self._lock:
            found = self._items.pop(path, None)
            if found is None:
                return None
            self._held -= found[1]
            return found[0]

    @property
    def held_bytes(self) -> int:
        return self._held


class Intake:
    def __init__(self, spool: Spool, queue: SqliteQueue, max_depth: int | None = None,
                 wake: threading.Event | None = None, handoff: Handoff | None = None) -> None:
        """``wake`` is set on every accepted object, ``handoff`` keeps it for the workers
        (intakes feeding one worker pool share both)."""
        self.spool = spool
        self.queue = queue
        self.max_depth = max_depth
        self.wake = wake if wake is not None else threading.Event()
        self.handoff = handoff if handoff is not None else Handoff(0)

    def accept(self, data: bytes, sop_instance_uid: str | None, calling_ae: str | None,
               origin: str, options: dict | None = None, dataset: Dataset | None = None,
               durable: bool = True) -> int:
        """Store ``data`` (a DICOM Part 10 file) durably and queue it; return the job id.

        ``options`` (``explain``: method, ``dicom``: build result objects) override the
        node's defaults for this job. ``dataset``: ``data`` as the caller parsed it (the
        worker then skips reading and parsing it again). ``durable`` false: not fsynced, for
        a caller whose acknowledgement is the result itself (``/score``); a crash before
        the answer then loses nothing the caller was told had succeeded.

        Raises:
            SpoolFullError: no room; nothing was written.
            QueueFullError: the queue holds ``max_depth`` jobs; nothing was written.
        """
        if self.max_depth is not None and self.queue.depth() >= self.max_depth:
            raise QueueFullError(f"queue full ({self.max_depth} jobs waiting)")
        path = self.spool.store_incoming(data, durable)
        # Before the job exists: a worker claiming it at once must find it here, and nothing
        # may stay here for a job no worker will load.
        self.handoff.put(str(path), dataset if dataset is not None else data, len(data))
        try:
            job_id = self.queue.enqueue(str(path), sop_instance_uid, calling_ae, origin,
                                        options)
        except BaseException:
            self.handoff.take(str(path))
            self.spool.remove(path)
            raise
        logger.info("received %s from %s as job %d (%s)", sop_instance_uid, calling_ae or "-",
                    job_id, origin)
        self.wake.set()
        return job_id

    def recover(self) -> int:
        """Queue objects that reached the spool but not the queue (crash between the two)."""
        known = self.queue.known_paths()
        count = 0
        for path in sorted(self.spool.incoming.glob("*.dcm")):
            if str(path) not in known:
                self.queue.enqueue(str(path), None, None, "recovered")
                count += 1
        count += self.queue.recover()
        if count:
            self.wake.set()
        return count
