"""The ``rabbit`` fixture gives what the scale-out tests rely on: a real 3-node cluster whose
quorum queues replicate, survive a node stopping or crashing, dead-letter expired messages
(the node's retry queues) and take AMQP over TLS."""

from __future__ import annotations

import contextlib
import secrets
import ssl
from collections.abc import Callable, Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, ChannelClosedByBroker
from rabbit_cluster import RabbitCluster

from node.bench.harness import wait_until

QUORUM = {"x-queue-type": "quorum"}
#: The arguments of the node's retry queues: expire into the work queue, never lose a message.
RETRY_ARGS = {"x-message-ttl": 300, "x-dead-letter-exchange": "",
              "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
              "x-delivery-limit": 5}


@contextlib.contextmanager
def channel(url: str, ssl_options: pika.SSLOptions | None = None) -> Iterator[BlockingChannel]:
    """A channel with publisher confirms on a fresh connection to ``url``."""
    params = pika.URLParameters(url)
    if ssl_options is not None:
        params.ssl_options = ssl_options
    connection = pika.BlockingConnection(params)
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        with contextlib.suppress(AMQPError):
            connection.close()


@pytest.fixture
def queues(rabbit: RabbitCluster) -> Iterator[Callable[[str], str]]:
    """Unique queue names for one test, deleted afterwards (the cluster is the session's)."""
    names: list[str] = []

    def name(role: str) -> str:
        names.append(f"test-{role}-{secrets.token_hex(4)}")
        return names[-1]

    yield name
    i = next(i for i in range(rabbit.size) if rabbit.running(i))
    with channel(rabbit.url(i)) as ch:
        for queue in names:
            ch.queue_delete(queue)


def publish(ch: BlockingChannel, queue: str, body: bytes) -> None:
    """Publish to ``queue`` (default exchange); returns once the broker confirmed it."""
    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)


def get_one(url: str, queue: str, timeout: float = 30,
            ssl_options: pika.SSLOptions | None = None) -> tuple[pika.BasicProperties, bytes]:
    """Consume (and ack) one message from ``queue`` through ``url``, waiting for it to be there
    (a new leader may still be being elected, a TTL still running)."""

    def fetch() -> tuple[pika.BasicProperties, bytes] | None:
        with contextlib.suppress(AMQPError), channel(url, ssl_options) as ch:
            method, props, body = ch.basic_get(queue)
            if method is not None:
                ch.basic_ack(method.delivery_tag)
                return props, body
        return None

    return wait_until(fetch, timeout, interval=0.2, what=f"a message in {queue}")


def members(rabbit: RabbitCluster, queue: str) -> list[str]:
    return sorted(rabbit.queue_info(queue)["members"])


def test_three_running_nodes_in_one_cluster(rabbit: RabbitCluster) -> None:
    for i in range(rabbit.size):
        assert rabbit.running_nodes(i) == sorted(rabbit.nodes)
    assert len(set(rabbit.urls)) == 3


def test_quorum_message_survives_stopped_node(rabbit: RabbitCluster, queues) -> None:
    queue = queues("qq")
    with channel(rabbit.url(0)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
        info = rabbit.queue_info(queue)
        assert info["type"] == "quorum"
        assert members(rabbit, queue) == sorted(rabbit.nodes)
        publish(ch, queue, b"survives")
    try:
        rabbit.stop_node(0)
        assert rabbit.running_nodes(1) == sorted(rabbit.nodes[1:])
        assert get_one(rabbit.url(1), queue)[1] == b"survives"
    finally:
        rabbit.start_node(0)
    wait_until(lambda: rabbit.running_nodes(0) == sorted(rabbit.nodes), 60,
               what="node 0 back in the cluster")
    assert members(rabbit, queue) == sorted(rabbit.nodes)


def test_quorum_queue_takes_publishes_while_a_node_is_killed(rabbit: RabbitCluster,
                                                             queues) -> None:
    queue = queues("qq-kill")
    with channel(rabbit.url(0)) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
    try:
        rabbit.kill_node(2)
        with channel(rabbit.url(0)) as ch:
            publish(ch, queue, b"with two of three")
    finally:
        rabbit.start_node(2)
    wait_until(lambda: rabbit.running_nodes(0) == sorted(rabbit.nodes), 60,
               what="node 2 back in the cluster")
    assert get_one(rabbit.url(2), queue)[1] == b"with two of three"


def test_retry_queue_arguments_and_dead_lettering(rabbit: RabbitCluster, queues) -> None:
    """RabbitMQ 3.10 takes TTL, dead-lettering at-least-once (with reject-publish) and a
    delivery limit on a quorum queue, and an expired message moves to another quorum queue."""
    work, retry = queues("work"), queues("retry")
    with channel(rabbit.url(0)) as ch:
        ch.queue_declare(work, durable=True, arguments=QUORUM)
        ch.queue_declare(retry, durable=True, arguments={
            **QUORUM, **RETRY_ARGS, "x-dead-letter-routing-key": work})
        declared = {name: value for name, _, value in rabbit.queue_info(retry)["arguments"]}
        assert declared == {**QUORUM, **RETRY_ARGS, "x-dead-letter-routing-key": work}
        publish(ch, retry, b"try again")
    props, body = get_one(rabbit.url(1), work)
    assert body == b"try again"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired"
    assert death["queue"] == retry
    assert rabbit.queue_info(retry)["messages"] == 0


def test_quorum_queue_refuses_priorities(rabbit: RabbitCluster, queues) -> None:
    """What a quorum queue does not take (so the node must not ask for it)."""
    with channel(rabbit.url(0)) as ch, pytest.raises(ChannelClosedByBroker) as refused:
        ch.queue_declare(queues("prio"), durable=True, arguments={**QUORUM, "x-max-priority": 5})
    assert refused.value.reply_code == 406


def test_amqps_with_client_certificate(rabbit: RabbitCluster, queues) -> None:
    assert rabbit.certificates is not None, "the fixture starts TLS listeners"
    context = ssl.create_default_context(cafile=str(rabbit.certificates / "ca.crt"))
    context.load_cert_chain(rabbit.certificates / "client.crt",
                            rabbit.certificates / "client.key")
    tls = pika.SSLOptions(context, "127.0.0.1")
    queue = queues("tls")
    with channel(rabbit.tls_urls[1], tls) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)
        publish(ch, queue, b"over tls")
    assert get_one(rabbit.tls_urls[2], queue, ssl_options=tls)[1] == b"over tls"


def test_a_refused_publish_fails_and_the_publisher_reconnects(rabbit: RabbitCluster, queues,
                                                               caplog) -> None:
    """A nack (here: a full queue) is the caller's error, naming the queue; the publisher then
    opens a new connection (a quorum queue's channel may go on refusing after its leader
    moved) and publishes again."""
    from node.broker.client import BrokerUnavailableError, Publisher, parameters

    url = rabbit.url(1)
    full = queues("full")
    with channel(url) as ch:
        ch.queue_declare(full, durable=True, arguments={
            **QUORUM, "x-max-length": 1, "x-overflow": "reject-publish"})
    publisher = Publisher(url, parameters(url), [], timeout_s=30)
    publisher.start_connected()
    try:
        refused = None
        for _ in range(100):  # a quorum queue applies its limit a little after reaching it
            try:
                publisher.publish(full, b"more")
            except BrokerUnavailableError as e:
                refused = e
                break
        assert refused is not None and f"refused the message for '{full}'" in str(refused)
        assert "connecting to broker" in caplog.text and "again" in caplog.text
        with channel(url) as ch:
            ch.queue_purge(full)
        wait_until(publisher.connected.is_set, 30, interval=0.05, what="a new connection")
        publisher.publish(full, b"after")
        assert get_one(url, full)[1] == b"after"
    finally:
        publisher.stop()
