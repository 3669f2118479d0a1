"""A spool written by an earlier release is taken over with nothing lost.

``tests/fixtures/spool_v0`` was written by the code of commit cad69d8 (schema 0, before the
jobs layer had its interfaces; ``made_by.py.txt`` is the script): a job done with one result
sent, one pending and one failed; a skipped job; a job processing when the node died; two
queued jobs; and an object stored whose job was never committed.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.bench.harness import wait_until
from node.broker.messages import DeliveryMessage, JobMessage, ReplyMessage, ScoreMessage, decode
from node.jobs.intake import Handoff, Intake
from node.jobs.queue import SqliteJobQueue
from node.jobs.records import SqliteJobRecords
from node.jobs.sender import Sender
from node.jobs.sqlite import SCHEMA_VERSION, Database, SchemaError
from node.jobs.storage import INCOMING, SpoolStore
from node.service import Node
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


#: spool_v1 (schema 1, release v0.1.0) and the port its deliveries name.
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "spool_v1"
PACS_V1_PORT = 41105
BROKER_V1 = Path(__file__).parent / "fixtures" / "broker_v1"


class Pacs:
    """A storage SCP on the port a fixture's deliveries name: it keeps what it receives."""

    def __init__(self, port: int) -> None:
        self.received: list[pydicom.Dataset] = []
        self.ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, ImplicitVRLittleEndian)
            self.ae.add_supported_context(cx.abstract_syntax, "1.2.840.10008.1.2.1")
        try:
            self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
                (evt.EVT_C_STORE, self._store)])
        except OSError:
            pytest.skip(f"port {port}, which the fixture's deliveries name, is taken")

    def _store(self, event: evt.Event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def uids(self) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in list(self.received)}

    def sources(self) -> set[str]:
        """The images the received structured reports are about."""
        return {str(ref.ReferencedSOPInstanceUID) for ds in list(self.received)
                for item in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for series in item.ReferencedSeriesSequence
                for ref in series.ReferencedSOPSequence}


def test_schema_1_of_release_0_1_0_is_migrated_with_every_job_and_delivery(
        tmp_path: Path) -> None:
    root = tmp_path / "spool"
    shutil.copytree(FIXTURE_V1, root, ignore=shutil.ignore_patterns("*.txt"))
    db, intake = open_node_jobs(root)
    assert db.version() == SCHEMA_VERSION
    counts = intake.records.counts()
    assert counts == {"jobs_done": 2, "jobs_queued": 2, "jobs_skipped": 1,
                      "deliveries_failed": 1, "deliveries_pending": 1}
    assert (intake.records.job(3).state, intake.records.job(3).code) == ("skipped", "view")
    assert intake.records.job(5).origin == "stow"
    [pending] = intake.records.due_deliveries(float("inf"), 10)
    assert (pending.job_id, pending.destination) == (2, f"PACS@127.0.0.1:{PACS_V1_PORT}")
    assert intake.store.get(pending.key)


@pytest.mark.parametrize(("fixture", "port", "queued", "sent"), [
    (FIXTURE, PACS_PORT, [f"1.2.826.0.1.3680043.8.498.1000{n}" for n in (3, 4, 5, 6)],
     "2.25.102"),
    (FIXTURE_V1, PACS_V1_PORT, [f"1.2.826.0.1.3680043.8.498.1100{n}" for n in (4, 5)],
     None),
], ids=["schema0", "schema1-v0.1.0"])
def test_this_release_takes_over_an_earlier_spool_and_its_results_arrive(
        tmp_path: Path, loaded_model, fixture: Path, port: int, queued: list[str],
        sent: str | None) -> None:
    """The node of this release started on an earlier release's spool: queued, interrupted
    and orphaned images are scored and their reports arrive; the pending delivery arrives; a
    failed one is sent again when the operator asks (``cxr-node jobs --resend``)."""
    root = tmp_path / "spool"
    shutil.copytree(fixture, root, ignore=shutil.ignore_patterns("*.txt"))
    pacs = Pacs(port)
    settings = Settings(spool=root, model="in-memory", bind="127.0.0.1", dicom_port=0,
                        http_port=None, explain="none", onnx_fast_path=False, workers=1,
                        destinations=[f"PACS@127.0.0.1:{port}"], retry_initial_s=0.2,
                        min_free_mb=0)
    node = Node(settings, loaded_model)
    node.start()
    try:
        pending = [d.sop_instance_uid for d in node.records.due_deliveries(float("inf"), 10)]
        wait_until(lambda: set(queued) <= pacs.sources(), 60, 0.1, "the queued images' reports")
        wait_until(lambda: set(pending) <= pacs.uids(), 60, 0.1, "the pending delivery")
        if sent:
            assert sent in pacs.uids()
        failed = [d.sop_instance_uid for d in node.records.failed_deliveries()]
        assert failed and node.records.resend_failed() == len(failed)
        node.sender.wake.set()
        wait_until(lambda: set(failed) <= pacs.uids(), 60, 0.1, "the failed delivery, resent")
        wait_until(lambda: not node.records.open_jobs(), 30, 0.1, "every job closed")
    finally:
        node.stop()
        pacs.ae.shutdown()


def broker_body(kind: str) -> bytes:
    return (BROKER_V1 / f"{kind}.json").read_bytes()


def test_broker_messages_of_release_0_1_0_are_consumed(tmp_path: Path) -> None:
    """Each kind v0.1.0 published (schema 1) is read by this release's roles, and names what
    the v0.1.0 spool holds: a worker's job (its object and checksum), a receiver's reply, a
    sender's delivery (its record)."""
    root = tmp_path / "spool"
    shutil.copytree(FIXTURE_V1, root, ignore=shutil.ignore_patterns("*.txt"))
    _, intake = open_node_jobs(root)
    for kind, cls in (("job", JobMessage), ("score", ScoreMessage)):
        job = decode(broker_body(kind), JobMessage, ScoreMessage)
        assert type(job) is cls
        ticket = job.ticket()
        record = intake.records.job(ticket.job_id)
        assert (record.key, record.sop_instance_uid) == (ticket.key, ticket.sop_instance_uid)
        assert hashlib.sha256(intake.store.get(ticket.key)).hexdigest() == ticket.sha256
        intake.queue.put(ticket)  # what a worker does with it: it claims it like any other
    assert {w.ticket.job_id for w in intake.claim(8)} >= {4, 5}
    reply = decode(broker_body("reply"), ReplyMessage)
    assert (reply.state, reply.result_keys) == ("done", ["outbox/2.25.1.dcm"])
    message = decode(broker_body("delivery"), DeliveryMessage)
    delivery = message.delivery()
    [recorded] = [d for d in intake.records.deliveries_of(message.job_id)
                  if d.id == delivery.id]
    assert (delivery.key, delivery.destination, delivery.sop_class_uid) == (
        recorded.key, recorded.destination, recorded.sop_class_uid)
    assert delivery.attempts == 1 and intake.store.get(delivery.key)
