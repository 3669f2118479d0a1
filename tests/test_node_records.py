"""The job records' contract, the same for every backend: SQLite (the embedded default) and
PostgreSQL (the shared one; ``system``, a throwaway server started once per session).

What a user relies on: a job's life, idempotent closing, deliveries due in order, failures
and re-sends, what ``cxr-node jobs`` shows; and, for the server, that several processes and
threads share it and that a restarted server is used again without restarting the node.
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from node.bench.harness import free_port, wait_until
from node.jobs.model import JobOutcome, ResultObject
from node.jobs.postgres import (
    SCHEMA_VERSION,
    PostgresJobRecords,
    RecordsUnavailableError,
    redact,
)
from node.jobs.records import JobRecords, SqliteJobRecords
from node.jobs.sqlite import Database, SchemaError

SR = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FAILED = JobOutcome("failed", "bad-pixels", "no pixel data")


def result(uid: str) -> ResultObject:
    return ResultObject(f"outbox/{uid}.dcm", uid, SR, EXPLICIT_LE)


def fresh_database(postgres) -> str:
    """A database of its own for one test (the server is the session's)."""
    return postgres.new_database(f"records_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.system)])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobRecords]:
    if request.param == "sqlite":
        yield SqliteJobRecords(Database(tmp_path / "q.sqlite3"))
        return
    with PostgresJobRecords.connect(fresh_database(request.getfixturevalue("postgres"))) as pg:
        yield pg


def test_every_backend_has_every_method_of_the_protocol() -> None:
    members = [n for n, v in vars(JobRecords).items()
               if callable(v) and not n.startswith("_")]
    assert {"deliveries_of", "failed_deliveries"} <= set(members)
    for backend in (SqliteJobRecords, PostgresJobRecords):
        for name in members:
            assert (inspect.signature(getattr(backend, name))
                    == inspect.signature(getattr(JobRecords, name))), (backend, name)


def test_a_job_is_opened_queued_and_read_back_as_written(records: JobRecords) -> None:
    job_id = records.open("inbox/1.dcm", "1.2.3", "MODALITY", "dimse", {"labels": ["a"]})
    job = records.job(job_id)
    assert job is not None
    assert (job.key, job.sop_instance_uid, job.calling_ae, job.origin, job.state,
            job.code, job.reason, job.options) == (
        "inbox/1.dcm", "1.2.3", "MODALITY", "dimse", "queued", None, None, {"labels": ["a"]})
    assert job.created == job.updated and abs(job.created - time.time()) < 60
    assert records.job(job_id + 1000) is None
    declined = records.open(None, "1.2.4", None, "http", None,
                            JobOutcome("skipped", "not-chest", "a knee"))
    assert records.job(declined).state == "skipped"
    assert records.job(declined).options == {}


def test_started_moves_only_queued_jobs_and_requeued_puts_them_back(records) -> None:
    a, b = records.open("k/a", "a", None, "dimse"), records.open("k/b", "b", None, "dimse")
    done = records.open("k/c", "c", None, "dimse")
    records.close(done, JobOutcome.done())
    records.started([])
    records.started([a, b, done])
    assert [records.job(i).state for i in (a, b, done)] == ["processing", "processing", "done"]
    records.requeued(a, "worker lost")
    assert (records.job(a).state, records.job(a).reason) == ("queued", "worker lost")
    assert [j.id for j in records.open_jobs()] == [a, b]
    assert records.known_keys() == {"k/a", "k/b", "k/c"}
    records.open(None, "d", None, "http")
    assert records.known_keys() == {"k/a", "k/b", "k/c"}


def test_closing_twice_keeps_one_delivery_per_destination_and_uid_pending_again(
        records: JobRecords) -> None:
    job = records.open("inbox/1.dcm", "1.2.3", None, "dimse")
    records.close(job, JobOutcome.done(), [("PACS", result("9.1")), ("VIEWER", result("9.1")),
                                          ("PACS", result("9.2"))])
    first = records.deliveries_of(job)
    assert [(d.destination, d.sop_instance_uid, d.state) for d in first] == [
        ("PACS", "9.1", "pending"), ("VIEWER", "9.1", "pending"), ("PACS", "9.2", "pending")]
    records.delivery_failed(first[0].id, "refused", None)
    records.delivered(first[1].id)
    again = records.open("inbox/1b.dcm", "1.2.3", None, "dimse")  # the same source re-sent
    records.close(again, JobOutcome.done(), [("PACS", result("9.1")), ("VIEWER", result("9.1")),
                                            ("PACS", result("9.2"))])
    assert records.deliveries_of(job) == []
    rows = records.deliveries_of(again)
    assert [d.id for d in rows] == [d.id for d in first]
    assert all((d.state, d.attempts, d.reason) == ("pending", 0, None) for d in rows)
    records.close(again, JobOutcome.done(), [("PACS", result("9.1"))])
    assert len(records.deliveries_of(again)) == 3
    assert records.counts() == {"jobs_done": 2, "deliveries_pending": 3}


def test_a_repeat_of_the_same_job_leaves_what_was_sent_alone(records: JobRecords) -> None:
    """A job handed out twice (a worker's acknowledgement lost) is closed twice: what the
    first close's deliveries already sent stays sent (its file may be deleted by now);
    what was not sent is pending again."""
    job = records.open("inbox/2.dcm", "1.2.4", None, "dimse")
    both = [("PACS", result("9.3")), ("VIEWER", result("9.3"))]
    records.close(job, JobOutcome.done(), both)
    sent, failed = records.deliveries_of(job)
    records.delivered(sent.id)
    records.delivery_failed(failed.id, "refused", None)
    records.close(job, JobOutcome.done(), both)
    assert [(d.state, d.attempts) for d in records.deliveries_of(job)] == [
        ("sent", 1), ("pending", 0)]


def test_due_deliveries_come_by_next_try_then_id_and_wait_for_their_time(records) -> None:
    job = records.open("inbox/1.dcm", "1", None, "dimse")
    records.close(job, JobOutcome.done(), [("A", result("1")), ("A", result("2")),
                                          ("A", result("3"))])
    d1, d2, d3 = records.deliveries_of(job)
    now = time.time()
    assert records.due_deliveries(now, 10) == [d1, d2, d3]
    assert records.due_deliveries(now, 2) == [d1, d2]
    records.delivery_failed(d1.id, "timeout", now + 60)
    due = records.due_deliveries(now, 10)
    assert [d.id for d in due] == [d2.id, d3.id]
    [late] = [d for d in records.due_deliveries(now + 61, 10) if d.id == d1.id]
    assert (late.state, late.attempts, late.reason) == ("pending", 1, "timeout")
    assert [d.id for d in records.due_deliveries(now + 61, 10)] == [d2.id, d3.id, d1.id]
    assert [d.id for d in records.due_deliveries(float("inf"), 10)] == [d2.id, d3.id, d1.id]


def test_a_delivery_given_up_is_failed_until_resent(records: JobRecords) -> None:
    job = records.open("inbox/1.dcm", "1", None, "dimse")
    records.close(job, JobOutcome.done(), [("A", result("1")), ("B", result("1")),
                                          ("C", result("1"))])
    a, b, c = records.deliveries_of(job)
    records.delivery_failed(a.id, "refused", None)
    records.delivery_failed(b.id, "timeout", 0)  # a retry due at once
    records.delivery_failed(c.id, "refused", None)
    assert [(d.id, d.state, d.attempts, d.reason) for d in records.failed_deliveries()] == [
        (a.id, "failed", 1, "refused"), (c.id, "failed", 1, "refused")]
    assert [d.id for d in records.due_deliveries(float("inf"), 10)] == [b.id]
    assert [d.id for d in records.failed_deliveries([c.id, b.id])] == [c.id]
    assert records.resend_failed([c.id, b.id]) == 1
    assert [d.id for d in records.failed_deliveries()] == [a.id]
    assert records.resend_failed() == 1
    assert records.resend_failed() == 0 and records.failed_deliveries() == []
    assert [(d.state, d.attempts) for d in records.deliveries_of(job)] == [
        ("pending", 0), ("pending", 1), ("pending", 0)]


def test_a_key_is_needed_until_every_delivery_of_it_is_sent(records: JobRecords) -> None:
    job = records.open("inbox/1.dcm", "1", None, "dimse")
    records.close(job, JobOutcome.done(), [("A", result("1")), ("B", result("1"))])
    a, b = records.deliveries_of(job)
    assert records.key_needed("outbox/1.dcm") and records.unsent_deliveries(job) == 2
    assert not records.key_needed("outbox/other.dcm")
    records.delivered(a.id)
    records.delivery_failed(b.id, "refused", None)
    assert records.key_needed("outbox/1.dcm") and records.unsent_deliveries(job) == 1
    records.resend_failed([b.id])
    records.delivered(b.id)
    assert not records.key_needed("outbox/1.dcm") and records.unsent_deliveries(job) == 0
    sent = records.deliveries_of(job)
    assert [(d.state, d.attempts, d.reason) for d in sent] == [("sent", 1, None),
                                                               ("sent", 1, None)]


def test_counts_and_the_failed_document_show_what_went_wrong(records: JobRecords) -> None:
    assert records.counts() == {}
    failed = records.open("inbox/1.dcm", "1.1", "CT", "dimse")
    records.close(failed, FAILED)
    skipped = records.open(None, "1.2", None, "http", None, JobOutcome("skipped", None, "x"))
    ok = records.open("inbox/3.dcm", "1.3", None, "stow")
    records.close(ok, JobOutcome.done(), [("PACS", result("3.1"))])
    records.open("inbox/4.dcm", "1.4", None, "dimse")
    [d] = records.deliveries_of(ok)
    records.delivery_failed(d.id, "association rejected", None)
    counts = {"jobs_failed": 1, "jobs_skipped": 1, "jobs_done": 1, "jobs_queued": 1,
              "deliveries_failed": 1}
    assert records.counts() == counts
    assert records.failed_document() == {
        "counts": counts,
        "failed_jobs": [
            {"id": failed, "state": "failed", "code": "bad-pixels",
             "reason": "bad-pixels: no pixel data", "sop_instance_uid": "1.1"},
            {"id": skipped, "state": "skipped", "code": None, "reason": "x",
             "sop_instance_uid": "1.2"}],
        "failed_deliveries": [{"id": d.id, "destination": "PACS", "sop_instance_uid": "3.1",
                               "attempts": 1, "reason": "association rejected"}],
    }


def test_concurrent_closes_from_eight_threads_lose_nothing(records: JobRecords) -> None:
    """Workers on many threads close jobs whose results overlap (the same source sent twice),
    in opposite orders: every job closed, one delivery per destination and UID."""
    threads, per_thread = 8, 15
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait(10)
            for i in range(per_thread):
                job = records.open(f"inbox/{t}-{i}.dcm", f"{t}.{i}", None, "dimse")
                shared = [("B", result(f"s.{i}")), ("B", result(f"s.{i + 1}"))]
                records.close(job, JobOutcome.done(),
                              [("A", result(f"{t}.{i}.r")), *shared[::1 if t % 2 else -1]])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors
    assert records.counts() == {"jobs_done": threads * per_thread,
                                "deliveries_pending": threads * per_thread + per_thread + 1}


def test_redact_drops_the_password_and_nothing_else() -> None:
    assert redact("postgresql://cxr:s3cret@db.example:5432/jobs?sslmode=require"
                  ) == "postgresql://cxr@db.example:5432/jobs?sslmode=require"
    assert redact("postgresql://db:5432/jobs") == "postgresql://db:5432/jobs"
    assert redact("postgresql://cxr@[::1]:5432/jobs?password=s3cret&application_name=n"
                  ) == "postgresql://cxr@[::1]:5432/jobs?application_name=n"
    assert "s3cret" not in redact("host=db user=cxr password=s3cret dbname=jobs")


def test_an_unreachable_server_is_records_unavailable_naming_the_url_without_password(
        ) -> None:
    url = f"postgresql://cxr:s3cret@127.0.0.1:{free_port()}/jobs"
    t0 = time.monotonic()
    with pytest.raises(RecordsUnavailableError) as caught:
        PostgresJobRecords.connect(url, timeout=2)
    assert time.monotonic() - t0 < 10
    message = str(caught.value)
    assert "postgresql://cxr@127.0.0.1" in message and "s3cret" not in message


# --- PostgreSQL only: several processes, versions, outages -------------------------------

@pytest.mark.system
def test_connects_racing_on_an_empty_database_create_the_schema_once(postgres) -> None:
    url = fresh_database(postgres)
    barrier = threading.Barrier(6)
    made: list[PostgresJobRecords] = []
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            barrier.wait(10)
            made.append(PostgresJobRecords.connect(url, max_size=2))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    racers = [threading.Thread(target=connect) for _ in range(6)]
    for r in racers:
        r.start()
    for r in racers:
        r.join(60)
    try:
        assert not errors, errors
        assert len(made) == 6
        made[0].open("k", "1", None, "dimse")
        assert made[5].known_keys() == {"k"}
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT component, version FROM schema_version").fetchall() == [
                ("job_records", SCHEMA_VERSION)]
    finally:
        for records in made:
            records.disconnect()


@pytest.mark.system
def test_a_database_of_a_newer_schema_is_refused_clearly(postgres) -> None:
    url = fresh_database(postgres)
    PostgresJobRecords.connect(url).disconnect()
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE schema_version SET version=%s WHERE component='job_records'",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaError, match="upgrade cxr-node") as caught:
        PostgresJobRecords.connect(url)
    assert redact(url) in str(caught.value) and postgres.password not in str(caught.value)


@pytest.mark.system
def test_records_outlive_the_process_that_wrote_them(postgres) -> None:
    url = fresh_database(postgres)
    with PostgresJobRecords.connect(url) as first:
        job = first.open("inbox/1.dcm", "1", "AE", "dimse", {"labels": ["x"]})
        first.close(job, JobOutcome.done(), [("PACS", result("1.1"))])
    first.disconnect()  # again: nothing
    with pytest.raises(RecordsUnavailableError):
        first.counts()
    with PostgresJobRecords.connect(url) as second:
        assert second.job(job).options == {"labels": ["x"]}
        assert [d.sop_instance_uid for d in second.due_deliveries(float("inf"), 10)] == ["1.1"]


@pytest.mark.system
@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_a_restarted_server_is_used_again_and_an_outage_is_a_quick_clear_error(
        postgres, outage: str) -> None:
    """Its own server: stopping the session's would cut off the other tests."""
    server = type(postgres)(postgres.bindir)
    try:
        with PostgresJobRecords.connect(server.url, max_size=4, timeout=2) as records:
            job = records.open("inbox/1.dcm", "1", None, "dimse")
            records.close(job, JobOutcome.done(), [("PACS", result("1.1"))])
            getattr(server, outage)()
            t0 = time.monotonic()
            with pytest.raises(RecordsUnavailableError) as caught:
                records.counts()
            assert time.monotonic() - t0 < 10
            assert redact(server.url) in str(caught.value)
            assert server.password not in str(caught.value)
            server.start()

            def works() -> bool:
                try:
                    return records.counts() == {"jobs_done": 1, "deliveries_pending": 1}
                except RecordsUnavailableError:
                    return False

            wait_until(works, 30, 0.2, "the records to answer after the restart")
            records.delivered(records.deliveries_of(job)[0].id)
            assert records.counts() == {"jobs_done": 1, "deliveries_sent": 1}
    finally:
        server.remove()
