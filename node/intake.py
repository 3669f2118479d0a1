"""Intake: the one door every received object goes through (C-STORE, STOW-RS, HTTP).

An object is acknowledged only after :meth:`Intake.accept` returns: it is then on disk
(fsynced) and its job is committed in the queue.
"""

from __future__ import annotations

import logging
import threading

from node.queue import SqliteQueue
from node.spool import Spool

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """Back-pressure: too many jobs waiting; the caller should retry later."""


class Intake:
    def __init__(self, spool: Spool, queue: SqliteQueue, max_depth: int | None = None,
                 wake: threading.Event | None = None) -> None:
        """``wake`` is set on every accepted object (intakes feeding one worker pool share it)."""
        self.spool = spool
        self.queue = queue
        self.max_depth = max_depth
        self.wake = wake if wake is not None else threading.Event()

    def accept(self, data: bytes, sop_instance_uid: str | None, calling_ae: str | None,
               origin: str, options: dict | None = None) -> int:
        """Store ``data`` (a DICOM Part 10 file) durably and queue it; return the job id.

        ``options`` (``explain``: method, ``dicom``: build result objects) override the
        node's defaults for this job.

        Raises:
            SpoolFullError: no room; nothing was written.
            QueueFullError: the queue holds ``max_depth`` jobs; nothing was written.
        """
        if self.max_depth is not None and self.queue.depth() >= self.max_depth:
            raise QueueFullError(f"queue full ({self.max_depth} jobs waiting)")
        path = self.spool.store_incoming(data)
        try:
            job_id = self.queue.enqueue(str(path), sop_instance_uid, calling_ae, origin,
                                        options)
        except BaseException:
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
