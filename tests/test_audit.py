"""The audit trail's messages, sinks and reader, in this process: each kind of message valid
against the DICOM audit message schema (PS3.15 A.5.1, ``tests/fixtures/audit_message.rng``),
the codes of A.5.3, patient identifiers only where the standard puts them, and sinks that
never fail the caller. The real actions that produce them: ``tests/system/test_audit.py``."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pydicom
import pytest
from lxml import etree
from pydicom.uid import generate_uid

from node.audit import AuditTrail, FileSink, SyslogSink, syslog_frame
from node.audit.command import read_log
from node.cli.main import main
from node.jobs.intake import receive
from node.jobs.storage import OUTBOX, SpoolStore

SCHEMA = Path(__file__).parent / "fixtures" / "audit_message.rng"
PATIENT_ID, PATIENT_NAME = "PID-4711", "Doe^Jane"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def valid(schema: etree.RelaxNG, xml: str) -> etree._Element:
    """``xml`` parsed, after checking it against the schema of PS3.15 A.5.1."""
    root = etree.fromstring(xml.encode())
    assert schema.validate(root), schema.error_log
    return root


class ListSink:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def write(self, xml: str) -> bool:
        self.messages.append(xml)
        return True

    def close(self, timeout: float = 5) -> None:
        pass


def event_of(root: etree._Element) -> tuple[str, str | None, str, list[str]]:
    ident = root.find("EventIdentification")
    return (ident.find("EventID").get("csd-code"), ident.get("EventActionCode"),
            ident.get("EventOutcomeIndicator"),
            [t.get("csd-code") for t in ident.findall("EventTypeCode")])


def objects(root: etree._Element, role: str) -> list[etree._Element]:
    return [o for o in root.findall("ParticipantObjectIdentification")
            if o.get("ParticipantObjectTypeCodeRole") == role]


def cr_bytes(cr_path: Path, patient_id: str = PATIENT_ID, name: str = PATIENT_NAME,
             study: str | None = None) -> bytes:
    import io

    ds = pydicom.dcmread(cr_path)
    ds.PatientID, ds.PatientName = patient_id, name
    ds.StudyInstanceUID = study or ds.StudyInstanceUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture()
def trail() -> tuple[AuditTrail, ListSink]:
    sink = ListSink()
    return AuditTrail("CXRNODE", [sink]), sink


def test_application_start_and_stop_are_valid_application_activity(trail, schema) -> None:
    audit, sink = trail
    audit.application_start()
    audit.application_stop()
    start, stop = (valid(schema, x) for x in sink.messages)
    assert event_of(start) == ("110100", "E", "0", ["110120"])
    assert event_of(stop) == ("110100", "E", "0", ["110121"])
    roles = [p.find("RoleIDCode").get("csd-code") for p in start.findall("ActiveParticipant")]
    assert roles == ["110150", "110151"]  # the application and who launched it
    assert start.find("AuditSourceIdentification").get("AuditSourceID") == "CXRNODE"


def test_rejected_association_is_a_security_alert_naming_the_node(trail, schema) -> None:
    audit, sink = trail
    audit.association_rejected("INTRUDER", "10.0.0.9", "calling AE title 'INTRUDER' not "
                                                       "allowed")
    root = valid(schema, sink.messages[0])
    assert event_of(root) == ("110113", "E", "4", ["110126"])
    subject = root.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "INTRUDER@10.0.0.9"
    assert "not allowed" in root.find("EventIdentification/EventOutcomeDescription").text


@pytest.mark.parametrize("success, logout, outcome, kind", [
    (True, False, "0", "110122"), (False, False, "4", "110122"), (True, True, "0", "110123")])
def test_user_authentication_names_the_user_and_the_outcome(trail, schema, success, logout,
                                                            outcome, kind) -> None:
    audit, sink = trail
    audit.user_authentication("alice", success, address="192.0.2.7", logout=logout)
    root = valid(schema, sink.messages[0])
    assert event_of(root) == ("110114", "E", outcome, [kind])
    person = root.find("ActiveParticipant")
    assert (person.get("UserID"), person.get("UserIsRequestor"),
            person.get("NetworkAccessPointID")) == ("alice", "true", "192.0.2.7")


def test_received_object_is_transferred_with_action_c_and_its_patient(trail, schema,
                                                                      cr_path) -> None:
    audit, sink = trail
    received = receive(cr_bytes(cr_path), "dimse", "MODALITY")
    audit.instances_received(received)
    root = valid(schema, sink.messages[0])
    assert event_of(root) == ("110104", "C", "0", [])
    (patient,) = objects(root, "1")
    assert patient.get("ParticipantObjectID") == PATIENT_ID
    assert patient.find("ParticipantObjectName").text == PATIENT_NAME
    (study,) = objects(root, "3")
    assert study.get("ParticipantObjectID") == str(received.dataset.StudyInstanceUID)
    instance = study.find("ParticipantObjectDescription/SOPClass/Instance")
    assert instance.get("UID") == received.sop_instance_uid
    source = root.find("ActiveParticipant")
    assert source.get("UserID") == "MODALITY" and source.get("UserIsRequestor") == "true"


def test_sent_files_make_one_message_per_patient_and_outcome(trail, schema, cr_path,
                                                             tmp_path) -> None:
    audit, sink = trail
    files = []
    for i, (pid, name) in enumerate([("P1", "One^A"), ("P1", "One^A"), ("P2", "Two^B")]):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(cr_bytes(cr_path, pid, name))
    audit.instances_sent("PACS@127.0.0.1:104", [(files[0], None), (files[1], None),
                                                (files[2], "C-STORE status 0xA700")])
    roots = [valid(schema, x) for x in sink.messages]
    assert [(event_of(r)[:3], objects(r, "1")[0].get("ParticipantObjectID")) for r in roots] \
        == [(("110104", "R", "0"), "P1"), (("110104", "R", "4"), "P2")]
    assert len(roots[0].findall(".//Instance")) == 2
    assert "0xA700" in roots[1].find("EventIdentification/EventOutcomeDescription").text
    destination = roots[0].findall("ActiveParticipant")[1]
    assert (destination.get("UserID"), destination.get("NetworkAccessPointID")) == \
        ("PACS", "127.0.0.1")


def test_deleted_object_is_accessed_with_action_d(trail, schema, cr_path, tmp_path) -> None:
    audit, sink = trail
    store = SpoolStore(tmp_path / "spool")
    key = store.put(OUTBOX, cr_bytes(cr_path))
    audit.deleting(store, key)
    root = valid(schema, sink.messages[0])
    assert event_of(root) == ("110103", "D", "0", [])
    assert objects(root, "1")[0].get("ParticipantObjectID") == PATIENT_ID


def test_an_operators_action_names_the_operator(trail, schema, cr_path, tmp_path) -> None:
    audit, sink = trail
    store = SpoolStore(tmp_path / "spool")
    key = store.put(OUTBOX, cr_bytes(cr_path))
    audit.operator_accessed("alice", store, key, address="192.0.2.7",
                            detail="resent delivery 3 to PACS")
    root = valid(schema, sink.messages[0])
    assert event_of(root) == ("110103", "R", "0", [])
    operator = root.find("ActiveParticipant")
    assert (operator.get("UserID"), operator.get("UserIsRequestor")) == ("alice", "true")
    assert objects(root, "1")[0].get("ParticipantObjectID") == PATIENT_ID


def test_unreadable_values_and_control_characters_still_make_valid_messages(trail, schema,
                                                                            cr_path) -> None:
    audit, sink = trail
    received = receive(cr_bytes(cr_path, "ID\x01\n2", "Bad\x00Name\r\n"), "stow", None)
    audit.instances_received(received)
    audit.user_authentication("a\x1bb <x>&", False)
    for xml in sink.messages:
        valid(schema, xml)
        assert "\n" not in xml


def test_a_failing_sink_or_file_never_fails_the_caller(cr_path, tmp_path, caplog) -> None:
    class Broken(ListSink):
        def write(self, xml: str) -> bool:
            raise RuntimeError("disk on fire")

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the log's folder should be")
    good = ListSink()
    audit = AuditTrail("CXRNODE", [Broken(), FileSink(blocked / "audit.log"), good])
    with caplog.at_level(logging.WARNING):
        audit.instances_received(receive(cr_bytes(cr_path), "dimse", "MODALITY"))
        audit.instances_sent("PACS@127.0.0.1:104", [(tmp_path / "gone.dcm", None)])
    assert len(good.messages) == 1  # the other sinks still got it
    assert "audit sink Broken failed" in caplog.text
    assert PATIENT_ID not in caplog.text and "Doe" not in caplog.text


def test_file_sink_appends_one_message_a_line(tmp_path, schema, cr_path) -> None:
    path = tmp_path / "logs" / "audit.log"
    audit = AuditTrail("CXRNODE", [FileSink(path)], log_path=path)
    audit.application_start()
    audit.instances_received(receive(cr_bytes(cr_path), "dimse", "MODALITY"))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        valid(schema, line)


def test_syslog_frame_is_rfc5424_with_octet_counting() -> None:
    frame = syslog_frame("<AuditMessage/>", "host1", "cxr-node", "42", when=0)
    length, _, message = frame.partition(b" ")
    assert int(length) == len(message)
    assert message.startswith(b"<85>1 1970-01-01T00:00:00.000Z host1 cxr-node 42 "
                              b"IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage/>")


def test_syslog_sink_never_blocks_when_the_collector_is_gone(caplog) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = SyslogSink("127.0.0.1", port, ssl.create_default_context(), capacity=2,
                      backoff_s=(60, 60))
    with caplog.at_level(logging.WARNING):
        results = [sink.write(f"<AuditMessage n='{i}'/>") for i in range(6)]
        sink.close(timeout=0.2)
    # one taken by the thread (retrying), two queued, the rest dropped, none blocked
    assert results.count(False) >= 3 and sink.dropped == results.count(False)
    assert sink.sent == 0 and "queue full" in caplog.text


def test_audit_command_prints_filtered_and_records_the_reading(tmp_path, schema, cr_path,
                                                               capsys) -> None:
    path = tmp_path / "audit.log"
    audit = AuditTrail("CXRNODE", [FileSink(path)], log_path=path)
    audit.application_start()
    audit.instances_received(receive(cr_bytes(cr_path), "dimse", "MODALITY"))
    audit.user_authentication(None, False)
    assert main(["audit", "--log", str(path), "--event", "transferred"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "DICOM Instances Transferred" in out[0] and PATIENT_ID in out[0]
    assert main(["audit", "--log", str(path), "--failures", "--xml"]) == 0
    (failure,) = capsys.readouterr().out.splitlines()
    assert event_of(valid(schema, failure))[0] == "110114"
    entries = list(read_log(path))
    assert [e.event_code for e in entries] == ["110100", "110104", "110114", "110101",
                                               "110101"]
    last = valid(schema, entries[-1].xml)
    log = last.find("ParticipantObjectIdentification")
    assert log.get("ParticipantObjectID") == path.resolve().as_uri()
    assert main(["audit", "--log", str(tmp_path / "none.log")]) == 2
