"""The jobs layer's three interfaces as the embedded default implements them, and the one
mapping of domain errors to HTTP answers."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dicom_io import DeclinedError, InvalidInputError
from node.core.errors import JobFailedError, problem_for
from node.jobs.model import JobOutcome, ResultObject, Ticket
from node.jobs.queue import QueueFullError, SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sqlite import Database
from node.jobs.storage import INCOMING, OUTBOX, SpoolFullError, SpoolStore


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return Database(tmp_path / "queue.sqlite3")


def ticket(job_id: int) -> Ticket:
    return Ticket(job_id, f"incoming/{job_id}.dcm", f"1.2.{job_id}", "MOD", "dimse")


def test_queue_leases_until_acknowledged_and_hands_out_again_after_a_crash(db) -> None:
    queue = SqliteJobQueue(db)
    for n in (1, 2, 3):
        queue.put(ticket(n))
    first = queue.claim(2)
    assert [t.job_id for t in first] == [1, 2] and queue.depth() == 3
    assert [t.job_id for t in queue.claim(5)] == [3]  # leased tickets are not handed out
    assert queue.claim(5) == []
    queue.ack(1)
    assert queue.depth() == 2
    assert queue.recover() == 2  # the process holding 2 and 3 is gone
    assert [t.job_id for t in queue.claim(5)] == [2, 3]


def test_retry_later_waits_and_counts_the_attempt(db) -> None:
    queue = SqliteJobQueue(db)
    queue.put(ticket(7))
    [claimed] = queue.claim(1)
    queue.retry_later(claimed, 0)
    [again] = queue.claim(1)
    assert again.attempt == 2
    queue.retry_later(again, 3600)
    assert queue.claim(1) == [] and queue.depth() == 1
    queue.dead_letter(7, "gave up")
    assert queue.depth() == 0


def test_closing_a_job_twice_records_one_outcome_and_one_delivery_each(db) -> None:
    records = SqliteJobRecords(db)
    job_id = records.open("incoming/a.dcm", "1.2.3", "MOD", "dimse")
    result = ResultObject("outbox/9.dcm", "2.25.9", "1.2.840.10008.5.1.4.1.1.88.34",
                          "1.2.840.10008.1.2.1")
    for _ in range(2):  # a lease handed out again after a crash
        records.close(job_id, JobOutcome.done(), [("PACS@h:104", result)])
    assert records.counts() == {"jobs_done": 1, "deliveries_pending": 1}
    [delivery] = records.due_deliveries(float("inf"), 10)
    records.delivery_failed(delivery.id, "association rejected", None)
    assert records.failed_document()["failed_deliveries"][0]["attempts"] == 1
    assert records.key_needed("outbox/9.dcm")
    assert records.resend_failed([delivery.id]) == 1
    records.delivered(delivery.id)
    assert not records.key_needed("outbox/9.dcm") and records.unsent_deliveries(job_id) == 0


def test_outcome_states_are_checked() -> None:
    with pytest.raises(ValueError, match="queued"):
        JobOutcome("queued")
    assert str(JobOutcome("skipped", "view", "lateral")) == "skipped (view: lateral)"


def test_store_keys_are_area_and_name_and_a_full_store_writes_nothing(tmp_path: Path) -> None:
    store = SpoolStore(tmp_path, quota_bytes=10)
    key = store.put(INCOMING, b"12345")
    assert key.startswith("incoming/") and store.get(key) == b"12345"
    with pytest.raises(SpoolFullError) as full:
        store.put(OUTBOX, b"123456789", name="x.dcm")
    assert full.value.errno == errno.EDQUOT and not (tmp_path / "outbox" / "x.dcm").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    for bad in ("../etc/passwd", "incoming/", "elsewhere/a.dcm", "incoming/a/b"):
        with pytest.raises(ValueError, match="AREA/NAME"):
            store.local_path(bad)
    store.delete(key)
    store.delete(key)  # gone already: nothing happens
    assert list(store.keys(INCOMING)) == []


@pytest.mark.parametrize(("error", "status", "code"), [
    (DeclinedError("view", "lateral view"), 422, "view"),
    (InvalidInputError("corrupt", "truncated"), 400, "corrupt"),
    (JobFailedError("skipped", "own-result", "made by cxr-node"), 422, "own-result"),
    (JobFailedError("failed", "corrupt", "pixel data unreadable"), 400, "corrupt"),
    (JobFailedError("failed", "internal", "RuntimeError"), 500, "internal"),
    (QueueFullError("queue full"), 503, "out-of-resources"),
    (SpoolFullError(errno.ENOSPC, "disk full"), 503, "out-of-resources"),
    (RuntimeError("secret detail"), 500, "internal-error"),
])
def test_every_domain_error_has_one_http_answer(error: Exception, status: int,
                                                code: str) -> None:
    problem = problem_for(error)
    assert (problem.status, problem.code) == (status, code)
    assert set(problem.body()) == {"error", "reason", "code"}
    assert "secret" not in problem.reason
    assert ("Retry-After" in problem.headers) == (status == 503)
