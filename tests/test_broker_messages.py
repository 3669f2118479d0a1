"""Broker messages and queue arguments: what roles of different releases rely on, no broker."""

from __future__ import annotations

import json

import pytest

from node.broker import topology
from node.broker.client import parameters, redact
from node.broker.messages import (
    SCHEMA_VERSION,
    DeliveryMessage,
    JobMessage,
    MessageError,
    ScoreMessage,
    decode,
)
from node.jobs.model import Delivery


def job(**changes) -> JobMessage:
    fields = dict(job_id=7, key="incoming/abc.dcm", sha256="0" * 64, sop_instance_uid="1.2.3",
                  calling_ae="MOD", origin="dimse", received_at=1_700_000_000.5,
                  model_sha256="f" * 64, engine="onnx", options={"explain": "gradcam"})
    return JobMessage(**{**fields, **changes})


def test_a_job_crosses_the_broker_unchanged_and_becomes_the_same_ticket():
    message = job()
    again = decode(message.encode(), JobMessage)
    assert again == message
    ticket = again.ticket()
    assert (ticket.job_id, ticket.key, ticket.sha256, ticket.received_at) == (
        7, "incoming/abc.dcm", "0" * 64, 1_700_000_000.5)
    assert json.loads(message.encode())["schema"] == SCHEMA_VERSION


def test_a_delivery_round_trips_through_its_record():
    d = Delivery(3, 7, "PACS@h:104", "outbox/1.2.dcm", "1.2", "1.2.840.10008.5.1.4.1.1.88.33",
                 "1.2.840.10008.1.2.1", "failed", 4, "refused")
    message = DeliveryMessage.of(d, attempt=5)
    back = decode(message.encode(), DeliveryMessage).delivery()
    assert (back.id, back.key, back.destination, back.attempts, back.state) == (
        3, "outbox/1.2.dcm", "PACS@h:104", 4, "pending")


def test_an_older_release_reads_a_message_with_fields_it_does_not_know():
    body = json.loads(job().encode())
    body["priority"] = "stat"  # a later release's optional field
    assert decode(json.dumps(body).encode(), JobMessage) == job()


@pytest.mark.parametrize("body, words", [
    (b"\xff\xfe not json", "not a JSON message"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"kind": "job"}).encode(), "schema None"),
    (json.dumps({"schema": SCHEMA_VERSION + 1, "kind": "job"}).encode(), "newer than"),
    (json.dumps({"schema": 1, "kind": "reply", "job_id": 1, "state": "done"}).encode(),
     "kind 'reply' is not one of ['job']"),
    (json.dumps({"schema": 1, "kind": "job", "job_id": 1}).encode(), "missing"),
])
def test_an_unreadable_message_says_why(body: bytes, words: str):
    with pytest.raises(MessageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode(body, JobMessage)


def test_wrong_types_and_keys_outside_incoming_are_refused():
    bad = json.loads(job().encode())
    bad["job_id"] = "7"
    with pytest.raises(MessageError, match="job_id '7' is not int"):
        decode(json.dumps(bad).encode(), JobMessage)
    with pytest.raises(MessageError, match="not an incoming object"):
        decode(job(key="../../etc/passwd").encode(), JobMessage)
    assert isinstance(decode(ScoreMessage(**vars(job())).encode(), JobMessage, ScoreMessage),
                      ScoreMessage)


def test_every_work_queue_dead_letters_at_least_once_and_retries_come_back():
    delays = topology.retry_delays(2, 300, 8)
    assert delays == [2, 4, 8, 16, 32, 64, 128]
    queues = {q.name: q.arguments for q in topology.queues(delays)}
    for name in (topology.JOBS, topology.SCORE, topology.DELIVER):
        args = queues[name]
        assert args["x-queue-type"] == "quorum"
        assert args["x-dead-letter-routing-key"] == topology.DEAD
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"
        assert args["x-delivery-limit"] == topology.DELIVERY_LIMIT
    retry = queues[topology.retry_queue(4)]
    assert retry["x-message-ttl"] == 4000
    assert retry["x-dead-letter-routing-key"] == topology.DELIVER
    assert all(q["x-queue-type"] == "quorum" for q in queues.values())
    order = [q.name for q in topology.queues(delays)]
    assert order.index(topology.DEAD) < order.index(topology.JOBS)


def test_broker_urls_never_show_credentials(tmp_path):
    url = "amqps://cxr:s3cret@broker.example.org:5671/%2F"
    assert redact(url) == "amqps://broker.example.org:5671/%2F"
    assert "s3cret" not in redact(url)
    creds = tmp_path / "broker.creds"
    creds.write_text("node:pw-from-file\n")
    [params] = parameters("amqps://broker.example.org/", credentials_file=creds)
    assert (params.credentials.username, params.credentials.password) == (
        "node", "pw-from-file")
    assert params.ssl_options is not None
    with pytest.raises(ValueError, match="is not an amqp") as refused:
        parameters("http://cxr:s3cret@broker/")
    assert "s3cret" not in str(refused.value)
    two = "amqp://a:pw1@n1:5672/,amqp://a:pw1@n2:5673/"
    assert redact(two) == "amqp://n1:5672/,amqp://n2:5673/"
    assert [p.port for p in parameters(two)] == [5672, 5673]
    creds.write_text("no-colon")
    with pytest.raises(ValueError, match="not user:password"):
        parameters("amqp://broker/", credentials_file=creds)
