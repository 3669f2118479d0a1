"""A spool written by an earlier release is taken over with nothing lost.

``tests/fixtures/spool_v0`` was written by the code of commit cad69d8 (schema 0, before the
jobs layer had its interfaces; ``made_by.py.txt`` is the script): a job done with one result
sent, one pending and one failed; a skipped job; a job processing when the node died; two
queued jobs; and an object stored whose job was never committed.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.jobs.intake import Handoff, Intake
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sender import Sender
from node.jobs.sqlite import SCHEMA_VERSION, Database, SchemaError
from node.jobs.storage import INCOMING, SpoolStore
from node.settings import Settings

FIXTURE = Path(__file__).parent / "fixtures" / "spool_v0"
#: The destination the fixture's deliveries name.
PACS_PORT = 41104


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("*.txt"))
    return root


def open_node_jobs(root: Path) -> tuple[Database, Intake]:
    store = SpoolStore(root)
    db = Database(root / "queue.sqlite3")
    intake = Intake(store, SqliteJobQueue(db), SqliteJobRecords(db), handoff=Handoff(0))
    return db, intake


def test_schema_0_is_migrated_with_every_job_and_delivery(spool: Path) -> None:
    db, intake = open_node_jobs(spool)
    assert db.version() == SCHEMA_VERSION
    records = intake.records
    counts = records.counts()
    assert counts == {"jobs_done": 1, "jobs_queued": 3, "jobs_skipped": 1,
                      "deliveries_sent": 1, "deliveries_pending": 1, "deliveries_failed": 1}
    skipped = records.job(2)
    assert (skipped.state, skipped.code) == ("skipped", "view")
    assert "frontal" in skipped.reason
    done = records.job(1)
    assert done.key.startswith("incoming/") and intake.store.get(done.key)
    pending = records.due_deliveries(float("inf"), 10)
    assert [(d.key, d.sop_class_uid) for d in pending] == [
        ("outbox/2.25.102.dcm", "1.2.840.10008.5.1.4.1.1.2")]
    assert pending[0].transfer_syntax_uid  # read once, at migration, from the stored file


def test_taken_over_spool_resumes_and_loses_nothing(spool: Path) -> None:
    """After the takeover every queued, interrupted or orphaned object is queued once, and the
    pending delivery reaches its destination."""
    _, intake = open_node_jobs(spool)
    queued = intake.recover()
    assert queued == 4  # jobs 3 (was processing), 4, 5 and the object never recorded
    claimed = intake.claim(16)
    assert sorted(w.ticket.sop_instance_uid for w in claimed) == [
        f"1.2.826.0.1.3680043.8.498.1000{n}" for n in (3, 4, 5, 6)]
    assert all(intake.store.get(w.ticket.key) for w in claimed)

    received: list[str] = []
    got = threading.Event()

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        got.set()
        return 0x0000

    ae = AE(ae_title="PACS")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ImplicitVRLittleEndian)
        ae.add_supported_context(cx.abstract_syntax, "1.2.840.10008.1.2.1")
    try:
        server = ae.start_server(("127.0.0.1", PACS_PORT), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
    except OSError:
        pytest.skip(f"port {PACS_PORT}, which the fixture's deliveries name, is taken")
    try:
        settings = Settings(spool=spool, model="unused.pt")
        sender = Sender(settings, intake.records, intake.store, threading.Event())
        assert sender.send_due() == 1
        assert got.wait(10) and received == ["2.25.102"]
    finally:
        server.shutdown()
    assert intake.records.counts()["deliveries_sent"] == 2
    assert intake.records.failed_document()["failed_deliveries"][0]["attempts"] == 1


def test_a_newer_schema_is_refused_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    Database(path)
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="upgrade cxr-node"):
        Database(path)


def test_an_object_stored_without_a_record_is_gated_when_recovered(tmp_path: Path,
                                                                   cr_path: Path) -> None:
    root = tmp_path / "spool"
    _, intake = open_node_jobs(root)
    intake.store.put(INCOMING, b"not a DICOM object at all")
    intake.store.put(INCOMING, cr_path.read_bytes())
    assert intake.recover() == 1
    document = intake.records.failed_document()
    assert [j["code"] for j in document["failed_jobs"]] == ["not-dicom"]
