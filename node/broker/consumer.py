"""Consuming from the broker: one :class:`Consumer` per thread that owns it (a worker, a
sender), with a prefetch, reconnecting with backoff.

Messages are acknowledged on the channel they came from; when the connection is lost, every
unacknowledged message goes back to its queue for another consumer (at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pika
import pika.exceptions

from node.broker import topology
from node.broker.client import BACKOFF_S, BrokerUnavailableError, close_quietly, connect, redact
from node.metrics import BROKER_REDELIVERED

logger = logging.getLogger(__name__)


@dataclass
class Received:
    """A message handed to a consumer, to acknowledge with its ``tag`` on the same channel."""

    queue: str
    tag: int
    properties: pika.BasicProperties
    body: bytes
    redelivered: bool
    #: which connection of its consumer it came on (tags restart with each connection)
    generation: int = 0


class Consumer:
    """Consumes ``queues`` with a ``prefetch``, for the one thread that calls it."""

    def __init__(self, url: str, params: list[pika.URLParameters], queues: list[str], prefetch: int,
                 retry_delays_s: list[float]) -> None:
        self.url = url
        self.params = params
        self.queues = queues
        self.prefetch = prefetch
        self.retry_delays_s = retry_delays_s
        self._connection: pika.BlockingConnection | None = None
        self._buffer: deque[Received] = deque()
        self._open_tags: set[int] = set()  # delivered on this connection, not yet settled
        self._generation = 0
        self._delay = BACKOFF_S[0]

    def _open(self) -> None:
        connection = connect(self.params, self.url)
        channel = connection.channel()
        topology.declare(channel, self.retry_delays_s)
        channel.basic_qos(prefetch_count=self.prefetch)
        for name in self.queues:
            channel.basic_consume(name, self._make_callback(name))
        self._connection, self._channel = connection, channel
        self._generation += 1
        logger.info("consuming %s from broker %s", ", ".join(self.queues), redact(self.url))

    def _make_callback(self, name: str) -> Callable:
        def on_message(channel, method, properties, body: bytes) -> None:
            if method.redelivered:
                BROKER_REDELIVERED.labels(name).inc()
            self._open_tags.add(method.delivery_tag)
            self._buffer.append(Received(name, method.delivery_tag, properties, body,
                                         method.redelivered, self._generation))
        return on_message

    def fetch(self, limit: int, first_wait_s: float, fill_wait_s: float,
              stop: threading.Event) -> list[Received]:
        """Up to ``limit`` messages: waits ``first_wait_s`` for the first, then at most
        ``fill_wait_s`` more to fill the batch. Reconnects (with backoff) when needed."""
        if self._connection is None:
            try:
                self._open()
                self._delay = BACKOFF_S[0]
            except BrokerUnavailableError as e:
                logger.warning("%s; retrying in %.1f s", e, self._delay)
                stop.wait(self._delay)
                self._delay = min(self._delay * 2, BACKOFF_S[1])
                return []
        try:
            self._pump(lambda: bool(self._buffer), first_wait_s, stop)
            if self._buffer and len(self._buffer) < limit and fill_wait_s > 0:
                self._pump(lambda: len(self._buffer) >= limit, fill_wait_s, stop)
        except (pika.exceptions.AMQPError, OSError) as e:
            self.lost(e)
            return []
        return [self._buffer.popleft() for _ in range(min(limit, len(self._buffer)))]

    def _pump(self, done: Callable[[], bool], wait_s: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + wait_s
        while not done() and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._connection.process_data_events(time_limit=min(left, 0.2))

    def pause(self, seconds: float, stop: threading.Event) -> None:
        """Wait, keeping the connection alive (heartbeats) and the messages held: a
        connection the broker closes would return them all, each a delivery towards the
        limit. New deliveries (up to the prefetch) wait in the buffer meanwhile."""
        if self._connection is None:
            stop.wait(seconds)
            return
        try:
            self._pump(lambda: False, seconds, stop)
        except (pika.exceptions.AMQPError, OSError) as e:
            self.lost(e)

    def drain(self, queue_name: str) -> list[Received]:
        """Every message now in ``queue_name`` (not consumed: fetched one by one), each to
        be acknowledged or requeued by the caller."""
        if self._connection is None:
            self._open()
        out = []
        while True:
            method, properties, body = self._channel.basic_get(queue_name, auto_ack=False)
            if method is None:
                return out
            self._open_tags.add(method.delivery_tag)
            out.append(Received(queue_name, method.delivery_tag, properties, body,
                                method.redelivered, self._generation))

    def ack(self, message: Received) -> None:
        """Acknowledge; a lost connection is logged (the broker hands it out again)."""
        self._settle(message, lambda: self._channel.basic_ack(message.tag))

    def requeue(self, message: Received) -> None:
        """Give it back at once (it counts towards the queue's delivery limit: only for a
        message this consumer must not keep)."""
        self._settle(message, lambda: self._channel.basic_nack(message.tag, requeue=True))

    def unsettled(self, messages: list[Received]) -> list[Received]:
        """Those of ``messages`` still held by this consumer: neither acknowledged nor given
        back, on a connection still open (to try again later without a redelivery)."""
        return [m for m in messages if self._holds(m)]

    def _holds(self, message: Received) -> bool:
        return (self._connection is not None and message.generation == self._generation
                and message.tag in self._open_tags)

    def _settle(self, message: Received, action: Callable[[], None]) -> None:
        if not self._holds(message):
            return
        try:
            action()
            self._open_tags.discard(message.tag)
        except (pika.exceptions.AMQPError, OSError) as e:
            self.lost(e)

    def lost(self, error: BaseException) -> None:
        logger.warning("consumer connection to broker %s lost (%s); unacknowledged messages "
                       "go back to the queue", redact(self.url), type(error).__name__)
        self._buffer.clear()
        self._open_tags.clear()
        close_quietly(self._connection)
        self._connection = None

    def close(self) -> None:
        self._open_tags.clear()
        close_quietly(self._connection)
        self._connection = None
