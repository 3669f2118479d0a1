"""The sender role over a broker: consume delivery messages, send them (C-STORE, STOW-RS)
one association per destination and batch, and settle each.

Sent: the record says so, then the message is acknowledged. Failed: the message is published
again (confirmed, attempt + 1) to the retry queue of its backoff step, whose TTL dead-letters
it back to ``cxr.deliver``; after ``retry_max_attempts`` it goes to ``cxr.failed`` instead
and the record says ``failed`` (``cxr-node jobs``, ``resend``). Only then is the message
acknowledged: a sender killed in between leaves it unacknowledged, and it is sent again
(at-least-once; a destination gets the same SOP instance twice at worst).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from node.audit import AuditTrail
from node.broker import topology
from node.broker.client import BACKOFF_S, BrokerUnavailableError, Publisher
from node.broker.consumer import Consumer, Received
from node.broker.messages import DeliveryMessage, MessageError, decode
from node.broker.worker import dead_letter
from node.core.errors import OutOfResourcesError
from node.jobs.records import JobRecords
from node.jobs.sender import Sender, backoff
from node.jobs.storage import ObjectStore, StoreUnavailableError
from node.metrics import BROKER_RETRIED
from node.settings import Settings

logger = logging.getLogger(__name__)

#: Messages gathered into one round of associations, and how long to wait to fill it.
BATCH = 64
FILL_WAIT_S = 0.05


class BrokerSender(Sender):
    def __init__(self, settings: Settings, records: JobRecords, store: ObjectStore,
                 stop: threading.Event, publisher: Publisher, consumer: Consumer,
                 audit: AuditTrail | None = None) -> None:
        super().__init__(settings, records, store, stop, audit)
        self.publisher = publisher
        self.consumer = consumer

    def run(self) -> None:
        held: list[Received] = []
        wait = BACKOFF_S[0]
        while not self.stop_event.is_set():
            messages = held or self.consumer.fetch(BATCH, 0.5, FILL_WAIT_S, self.stop_event)
            if not messages:
                continue
            try:
                self.send_messages(messages)
            except OutOfResourcesError as e:  # the records, the broker or the store, for now
                logger.warning("sender: %s", e)
            except Exception:  # the sender never dies; unacknowledged messages come back
                logger.exception("sender loop failed; continuing")
                self.consumer.lost(RuntimeError("sender loop failed"))
                self.stop_event.wait(1)
            # kept and tried again, not given back: a redelivery counts towards the limit
            held = self.consumer.unsettled(messages)
            if held:
                logger.warning("sender: trying %d delivery(ies) again in %.1f s", len(held),
                               wait)
                self.consumer.pause(wait, self.stop_event)
                wait = min(2 * wait, BACKOFF_S[1])
            else:
                wait = BACKOFF_S[0]
        self.consumer.close()

    def send_messages(self, messages: list[Received]) -> None:
        """Send what ``messages`` ask for, one association per destination."""
        by_id: dict[int, list[tuple[Received, DeliveryMessage]]] = defaultdict(list)
        for m in messages:
            try:
                msg = decode(m.body, DeliveryMessage)
            except MessageError as e:
                dead_letter(self.publisher, self.consumer, m, f"unreadable: {e}")
                continue
            if self._sent_already(msg):  # a repeat of a delivery that was made
                self.consumer.ack(m)
                continue
            try:
                self.store.local_path(msg.key).stat()
            except (FileNotFoundError, ValueError) as e:
                # recorded failed, so that `cxr-node jobs` shows it (not pending for ever)
                self.records.delivery_failed(msg.delivery_id, "its result object is gone from "
                                             "the store", None)
                dead_letter(self.publisher, self.consumer, m,
                            f"missing-object: {msg.key}: {type(e).__name__}")
                continue
            except OSError as e:  # the store does not answer now
                raise StoreUnavailableError(e.errno, f"{msg.key}: {e.strerror}") from e
            by_id[msg.delivery_id].append((m, msg))  # a repeat in the batch: sent once
        by_destination: dict[str, list[DeliveryMessage]] = defaultdict(list)
        for (_, first), *_ in by_id.values():
            by_destination[first.destination].append(first)
        for destination, items in by_destination.items():
            messages_of = {d.delivery_id: d for d in items}
            results = self.transmit(destination, [d.delivery() for d in items])
            for delivery, error in results:
                msg = messages_of[delivery.id]
                if self._settle(msg, delivery, error):
                    for received, _ in by_id[delivery.id]:
                        self.consumer.ack(received)

    def _sent_already(self, msg: DeliveryMessage) -> bool:
        """Whether the records say this delivery was made (at-least-once: a message can
        come twice, e.g. published again after a lost confirm)."""
        return any(d.id == msg.delivery_id and d.state == "sent"
                   for d in self.records.deliveries_of(msg.job_id))

    def _settle(self, msg: DeliveryMessage, delivery, error: str | None) -> bool:
        """Record the attempt and, on failure, publish its next step; False when the broker
        did not confirm that (the message stays unacknowledged and comes back)."""
        if error is None:
            self.records.delivered(delivery.id)
            logger.info("delivered %s to %s", msg.sop_instance_uid, msg.destination)
            self.purge(delivery)
            return True
        wait = backoff(self.settings, msg.attempt)
        again = DeliveryMessage(**{**vars(msg), "attempt": msg.attempt + 1})
        try:
            if wait is None:
                self.publisher.publish(topology.FAILED, again,
                                       headers={topology.REASON_HEADER: error[:500]})
            else:
                self.publisher.publish(topology.retry_queue(wait), again)
                BROKER_RETRIED.inc()
        except BrokerUnavailableError as e:
            logger.warning("delivery %d: next step not published (%s)", msg.delivery_id, e)
            return False
        self.records.delivery_failed(delivery.id, error,
                                     None if wait is None else time.time() + wait)
        if wait is None:
            logger.error("giving up on %s to %s after %d attempts: %s", msg.sop_instance_uid,
                         msg.destination, msg.attempt, error)
        else:
            logger.warning("delivery of %s to %s failed (%s); retry in %.0f s",
                           msg.sop_instance_uid, msg.destination, error, wait)
        return True


def resend(records: JobRecords, publisher: Publisher, consumer: Consumer,
           ids: list[int] | None) -> int:
    """Send failed deliveries again (all, or ``ids``), their attempts reset: each is taken
    out of ``cxr.failed`` (the others are left there), published to ``cxr.deliver``
    (confirmed), then recorded pending; how many."""
    wanted = set(ids or ())
    resent: dict[int, DeliveryMessage] = {}
    for m in consumer.drain(topology.FAILED):
        try:
            msg = decode(m.body, DeliveryMessage)
        except MessageError:
            consumer.requeue(m)
            continue
        if wanted and msg.delivery_id not in wanted:
            consumer.requeue(m)
            continue
        if msg.delivery_id not in resent:
            resent[msg.delivery_id] = DeliveryMessage(**{**vars(msg), "attempt": 1})
            publisher.publish(topology.DELIVER, resent[msg.delivery_id])
        consumer.ack(m)
    for d in records.failed_deliveries(ids or None):  # failed without a message left
        if d.id not in resent:
            resent[d.id] = DeliveryMessage.of(d)
            publisher.publish(topology.DELIVER, resent[d.id])
    if resent:
        records.resend_failed(list(resent))
    return len(resent)
