"""The sender: delivers result objects by C-STORE or STOW-RS, with retries and exponential
backoff. Each delivery record names its object's key, SOP class and transfer syntax, so
nothing is read back before it is sent."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

from node.audit import AuditTrail
from node.dimse.scu import Outgoing, send_files
from node.http.stow_client import stow_files
from node.jobs.model import Delivery
from node.jobs.records import JobRecords
from node.jobs.storage import ObjectStore
from node.metrics import DELIVERIES
from node.settings import Peer, Settings

logger = logging.getLogger(__name__)


def backoff(settings: Settings, attempts: int) -> float | None:
    """Seconds before the next try after ``attempts`` failures; ``None``: give up."""
    if attempts >= settings.retry_max_attempts:
        return None
    return min(settings.retry_initial_s * 2 ** (attempts - 1), settings.retry_max_s)


class Sender(threading.Thread):
    def __init__(self, settings: Settings, records: JobRecords, store: ObjectStore,
                 stop: threading.Event, audit: AuditTrail | None = None) -> None:
        super().__init__(name="sender", daemon=True)
        self.settings = settings
        #: what is sent and deleted goes into the audit trail
        self.audit = audit if audit is not None else AuditTrail.off()
        self.records = records
        self.store = store
        self.stop_event = stop
        self.wake = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if not self.send_due():
                    self.wake.wait(0.5)
                    self.wake.clear()
            except Exception:
                logger.exception("sender loop failed; continuing")
                self.stop_event.wait(1)

    def send_due(self, limit: int = 64) -> int:
        """Send what is due now, one association per destination; return how many tried."""
        due = self.records.due_deliveries(time.time(), limit)
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for d in due:
            by_destination[d.destination].append(d)
        for destination, items in by_destination.items():
            if self.stop_event.is_set():
                break
            self._send(destination, items)
        return len(due)

    def transmit(self, destination: str, items: list[Delivery]
                 ) -> list[tuple[Delivery, str | None]]:
        """Send ``items`` to ``destination`` in one association (or STOW-RS request): each
        delivery with its error, ``None`` when it was delivered."""
        by_path: dict[Path, Delivery] = {self.store.local_path(d.key): d for d in items}
        timeout = self.settings.network_timeout_s
        if destination.startswith(("http://", "https://")):
            results = stow_files(destination, list(by_path), timeout,
                                 self.settings.dicomweb_auth.get(destination))
        else:
            peer = Peer.parse(destination)
            outgoing = [Outgoing(p, d.sop_class_uid, d.transfer_syntax_uid)
                        for p, d in by_path.items()]
            results = send_files(peer, outgoing, self.settings.ae_title, timeout=timeout,
                                 tls=self.settings.destination_tls.get(peer.ae_title))
        self.audit.instances_sent(destination, results)
        out = []
        for path, error in results:
            DELIVERIES.labels("sent" if error is None else "failed").inc()
            out.append((by_path[path], error))
        return out

    def _send(self, destination: str, items: list[Delivery]) -> None:
        for d, error in self.transmit(destination, items):
            if error is None:
                self.records.delivered(d.id)
                logger.info("delivered %s to %s", d.sop_instance_uid, destination)
                self.purge(d)
                continue
            wait = backoff(self.settings, d.attempts + 1)
            next_try = None if wait is None else time.time() + wait
            self.records.delivery_failed(d.id, error, next_try)
            if next_try is None:
                logger.error("giving up on %s to %s after %d attempts: %s",
                             d.sop_instance_uid, destination, d.attempts + 1, error)
            else:
                logger.warning("delivery of %s to %s failed (%s); retry in %.0f s",
                               d.sop_instance_uid, destination, error, wait)

    def purge(self, d: Delivery) -> None:
        """Delete what a sent delivery leaves unneeded (``purge_delivered``): its object
        unless another delivery still needs it, and its source once the job is all sent."""
        if not self.settings.purge_delivered:
            return
        if not self.records.key_needed(d.key):
            self.audit.deleting(self.store, d.key)
            self.store.delete(d.key)
        if self.records.unsent_deliveries(d.job_id) == 0:
            job = self.records.job(d.job_id)
            if job is not None and job.key is not None:
                self.audit.deleting(self.store, job.key)
                self.store.delete(job.key)
