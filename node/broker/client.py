"""AMQP connections with pika: parameters from a URL, a confirmed publisher, a consumer.

pika's ``BlockingConnection`` belongs to one thread. :class:`Publisher` owns one in a thread
of its own: other threads hand it messages and wait for the broker's confirm, and it consumes
the replies to ``/score`` requests (RabbitMQ's direct reply-to). It reconnects with backoff
when the broker goes away; while it cannot publish, :meth:`Publisher.publish` raises
:class:`BrokerUnavailableError` at once, which the fronts answer 0xA700 / 503.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions

from node.broker import topology
from node.broker.messages import Message
from node.core.errors import OutOfResourcesError
from node.metrics import BROKER_CONFIRMED, BROKER_PUBLISHED

logger = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
#: Seconds between two counts of the work queues' depth.
DEPTH_EVERY_S = 1.0
#: Seconds between reconnection attempts: doubling from the first to the last.
BACKOFF_S = (0.5, 10.0)


class BrokerError(Exception):
    """Base of the broker layer's errors."""


class BrokerUnavailableError(BrokerError, OutOfResourcesError):
    """The broker cannot take the message now (down, unreachable, not confirming): the
    caller refuses the work it was for, with nothing half-done."""


def redact(url: str) -> str:
    """``url`` (or a comma-separated list of them) without user names and passwords: what
    logs and errors may show."""
    if "," in url:
        return ",".join(redact(u) for u in split_urls(url))
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_urls(urls: str) -> list[str]:
    return [u.strip() for u in urls.split(",") if u.strip()]


def parameters(urls: str, *, credentials_file: Path | None = None,
               ca_file: Path | None = None, client_cert: tuple[Path, Path] | None = None,
               heartbeat_s: int = 60, name: str = "cxr-node") -> list[pika.URLParameters]:
    """Connection parameters for each of the comma-separated ``amqp://`` or ``amqps://``
    ``urls`` (the nodes of a cluster: a connection tries them in turn).

    Credentials come from the URL (given by the environment) or from ``credentials_file``
    (one line ``user:password``); TLS verifies the broker against ``ca_file`` or the system's
    CAs, and its host name; ``client_cert`` (certificate, key) for a broker that verifies
    its clients. ``heartbeat_s``: a consumer that runs the model between two calls into pika
    sends no heartbeat meanwhile, so it needs more than a publisher.

    Raises:
        ValueError: not an AMQP URL, or an unreadable credentials file (named, not shown).
    """
    return [_parameters(u, credentials_file, ca_file, client_cert, heartbeat_s, name)
            for u in split_urls(urls)]


def _parameters(url: str, credentials_file: Path | None, ca_file: Path | None,
                client_cert: tuple[Path, Path] | None, heartbeat_s: int,
                name: str) -> pika.URLParameters:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ValueError(f"broker {redact(url) if parts.hostname else url!r} is not an "
                         "amqp:// or amqps:// URL")
    params = pika.URLParameters(url)
    if credentials_file is not None:
        try:
            user, _, password = credentials_file.read_text().strip().partition(":")
        except OSError as e:
            raise ValueError(f"broker credentials file {credentials_file}: {e.strerror}") from e
        if not user or not password:
            raise ValueError(f"broker credentials file {credentials_file} is not user:password")
        params.credentials = pika.PlainCredentials(user, password)
    if parts.scheme == "amqps":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if client_cert is not None:
            context.load_cert_chain(*map(str, client_cert))
        params.ssl_options = pika.SSLOptions(context, parts.hostname)
    params.heartbeat = heartbeat_s
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": name}
    return params


def connect(params: list[pika.URLParameters], url: str) -> pika.BlockingConnection:
    """A connection to the first of ``params`` that answers, or
    :class:`BrokerUnavailableError` naming the URLs without credentials."""
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError as e:
        raise BrokerUnavailableError(f"broker {redact(url)} refused the credentials") from e
    except (pika.exceptions.AMQPError, OSError) as e:
        raise BrokerUnavailableError(f"broker {redact(url)} is unreachable "
                                     f"({type(e).__name__})") from e


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    """Close ``connection`` if open; it is being dropped, so errors do not matter."""
    if connection is not None and connection.is_open:
        with contextlib.suppress(Exception):
            connection.close()


@dataclass
class _Publish:
    queue: str
    body: bytes
    properties: pika.BasicProperties
    done: Future


class Publisher(threading.Thread):
    """Publishes with confirms and ``mandatory`` (a returned message is a failure: an
    unroutable message is still confirmed), from any thread; declares the topology."""

    def __init__(self, url: str, params: list[pika.URLParameters], retry_delays_s: list[float],
                 timeout_s: float = 10.0) -> None:
        super().__init__(name="broker-publisher", daemon=True)
        self.url = url
        self.params = params
        self.retry_delays_s = retry_delays_s
        self.timeout_s = timeout_s
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._requests: queue.Queue[_Publish] = queue.Queue()
        self._replies: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._depths: dict[str, int] = {}
        self._counted = 0.0

    def start_connected(self) -> None:
        """Connect and declare once, then start the thread.

        Raises:
            BrokerUnavailableError: the broker cannot be reached (e.g. at start: exit 2).
        """
        self._open()
        self.start()

    def _open(self) -> None:
        connection = connect(self.params, self.url)
        try:
            channel = connection.channel()
            topology.declare(channel, self.retry_delays_s)
            channel.confirm_delivery()
            channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        except pika.exceptions.AMQPError as e:
            connection.close() if connection.is_open else None
            raise BrokerUnavailableError(f"broker {redact(self.url)}: declaring the queues "
                                         f"failed: {e}") from e
        self._connection, self._channel = connection, channel
        self.connected.set()
        logger.info("publishing to broker %s", redact(self.url))

    def _on_reply(self, channel, method, properties, body: bytes) -> None:
        with self._lock:
            waiter = self._replies.pop(properties.correlation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    def publish(self, queue_name: str, message: Message | bytes, *,
                headers: dict | None = None, reply_to: str | None = None,
                correlation_id: str | None = None) -> None:
        """Publish and return once the broker confirmed it (persistent, mandatory).

        Raises:
            BrokerUnavailableError: not connected, nacked, returned or not confirmed within
                ``timeout_s``; the message may or may not be queued (at-least-once).
        """
        if not self.connected.is_set():
            raise BrokerUnavailableError(f"broker {redact(self.url)} is not connected")
        body = message if isinstance(message, bytes) else message.encode()
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                     content_type="application/json", headers=headers,
                                     reply_to=reply_to, correlation_id=correlation_id)
        done: Future = Future()
        self._requests.put(_Publish(queue_name, body, props, done))
        connection = self._connection
        if connection is not None:
            # wake the thread out of process_data_events (closing: it notices by itself)
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(lambda: None)
        try:
            done.result(self.timeout_s)
        except TimeoutError:
            raise BrokerUnavailableError(f"broker {redact(self.url)} did not confirm within "
                                         f"{self.timeout_s} s") from None

    def request(self, queue_name: str, message: Message) -> tuple[str, Future]:
        """Publish a request whose reply comes back to this connection; its correlation id
        and the future of the reply's body (:meth:`forget` it on timeout)."""
        correlation = uuid.uuid4().hex
        waiter: Future = Future()
        with self._lock:
            self._replies[correlation] = waiter
        try:
            self.publish(queue_name, message, reply_to=REPLY_TO, correlation_id=correlation)
        except BaseException:
            self.forget(correlation)
            raise
        return correlation, waiter

    def forget(self, correlation: str) -> None:
        with self._lock:
            self._replies.pop(correlation, None)

    def run(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stopping.is_set():
            if self._connection is None:
                try:
                    self._open()
                    delay = BACKOFF_S[0]
                except BrokerUnavailableError as e:
                    logger.warning("%s; retrying in %.1f s", e, delay)
                    self._fail_pending(e)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, BACKOFF_S[1])
                continue
            try:
                self._connection.process_data_events(time_limit=0.2)
                self._drain()
                self._count()
            except (pika.exceptions.AMQPError, OSError) as e:
                self._lost(e)
        close_quietly(self._connection)

    def depth(self, *queues: str) -> int:
        """Messages ready in ``queues`` (not handed out yet), as counted at most
        :data:`DEPTH_EVERY_S` ago; what HTTP's ``max_queue_depth`` compares with."""
        return sum(self._depths.get(q, 0) for q in queues)

    def _count(self) -> None:
        now = time.monotonic()
        if now - self._counted < DEPTH_EVERY_S:
            return
        self._counted = now
        for name in (topology.JOBS, topology.SCORE):
            ok = self._channel.queue_declare(name, passive=True)
            self._depths[name] = int(ok.method.message_count)

    def _drain(self) -> None:
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item.done.done():  # its caller gave up
                continue
            label = "reply" if item.queue.startswith(REPLY_TO) else item.queue
            BROKER_PUBLISHED.labels(label).inc()
            try:
                self._channel.basic_publish("", item.queue, item.body, item.properties,
                                            mandatory=True)
            except pika.exceptions.UnroutableError:
                item.done.set_exception(BrokerUnavailableError(
                    f"broker returned the message: no queue {item.queue!r}"))
                continue
            except pika.exceptions.NackError:
                # A quorum queue refuses while it has no leader within reach, and a channel
                # can go on refusing after a new leader took over on another node
                # (rabbitmq-server#15333): start again on a new connection.
                self._renew(f"the broker refused a message for {item.queue!r}")
                item.done.set_exception(BrokerUnavailableError(
                    f"broker refused the message for {item.queue!r} (queue unavailable or "
                    "full)"))
                return
            except BaseException as e:
                item.done.set_exception(BrokerUnavailableError(f"publishing failed: {e!r}"))
                raise
            BROKER_CONFIRMED.labels(label).inc()
            item.done.set_result(None)

    def _renew(self, why: str) -> None:
        """Close the connection and let :meth:`run` open a new one (what was waiting fails
        and is tried again by its caller, as after a lost connection)."""
        logger.warning("%s; connecting to broker %s again", why, redact(self.url))
        close_quietly(self._connection)
        self._lost(None)

    def _lost(self, error: BaseException | None) -> None:
        if error is not None:
            logger.warning("connection to broker %s lost (%s); reconnecting", redact(self.url),
                           type(error).__name__)
        self.connected.clear()
        self._connection = None
        self._fail_pending(BrokerUnavailableError(f"broker {redact(self.url)} went away"))
        with self._lock:  # replies to the old connection never come
            waiters, self._replies = list(self._replies.values()), {}
        for w in waiters:
            if not w.done():
                w.set_exception(BrokerUnavailableError("broker connection lost"))

    def _fail_pending(self, error: BaseException) -> None:
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if not item.done.done():
                item.done.set_exception(error)

    def stop(self) -> None:
        self._stopping.set()
        self.connected.clear()
        if self.is_alive():
            self.join(5)
