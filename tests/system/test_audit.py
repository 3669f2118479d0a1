"""The audit trail (IHE ATNA) produced by real actions against a real node process: a
storescu association (received, action C), one from an AE not on the allow list (security
alert), an HTTP request with a wrong token (user authentication failed), the delivery of the
results to dcmtk's storescp (sent, action R), the purge of what was delivered (accessed,
action D), the start and stop, and ``cxr-node audit`` reading the log (audit log used).
Every message in the node's audit log is checked against the schema of PS3.15 A.5.1, and the
same messages reach a real syslog collector (rsyslog with GnuTLS, RFC 5425, client
certificates); the node's own log holds no patient identifier."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from conftest import require_tool
from lxml import etree

from node.audit import SyslogSink
from node.bench.harness import cxr_node
from system.conftest import radiograph_copy
from system.peers import (
    Certificates,
    NodeProcess,
    Receiver,
    free_port,
    stop_process,
    storescu,
    wait_port,
    wait_until,
)

SCHEMA = Path(__file__).parents[1] / "fixtures" / "audit_message.rng"
PATIENT_ID, PATIENT_NAME = "ATNA-55012377", "Auditee^Patricia"
TOKEN = "audit-test-token"


def rsyslogd() -> str:
    """rsyslogd with its TLS driver; missing is a failure in CI (setup installs them), else
    a skip."""
    path = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
    if path is None or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        require_tool("rsyslogd (with rsyslog-gnutls)")
    return str(path)


class Rsyslog:
    """rsyslogd as a TLS syslog collector (imtcp, gtls driver, octet-counted framing) that
    requires a client certificate signed by the test CA, writing each message's PRI, MSGID,
    APP-NAME and MSG on a line of ``folder/received.log``."""

    def __init__(self, folder: Path, certs: Certificates) -> None:
        self.folder, self.certs = folder, certs
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.output = folder / "received.log"

    def start(self) -> Rsyslog:
        (self.folder / "work").mkdir(parents=True, exist_ok=True)
        c = self.certs
        config = self.folder / "rsyslog.conf"
        config.write_text(f"""
global(workDirectory="{self.folder / 'work'}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{c.path('ca.crt')}"
       defaultNetstreamDriverCertFile="{c.path('server.crt')}"
       defaultNetstreamDriverKeyFile="{c.path('server.key')}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="x509/certvalid")
input(type="imtcp" port="{self.port}")
template(name="fields" type="string" string="%pri% %msgid% %app-name% %msg%\\n")
*.* action(type="omfile" file="{self.output}" template="fields")
""")
        self.proc = subprocess.Popen([rsyslogd(), "-n", "-f", str(config), "-i",
                                      str(self.folder / "rsyslogd.pid")],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.folder / "rsyslogd.log").open("ab"))
        wait_port(self.port, 30, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def messages(self) -> list[tuple[str, str, str, str]]:
        """(PRI, MSGID, APP-NAME, the XML) of each message received."""
        if not self.output.exists():
            return []
        out = []
        for line in self.output.read_text(encoding="utf-8").splitlines():
            pri, msgid, app, msg = line.split(" ", 3)
            out.append((pri, msgid, app, msg.lstrip("\ufeff")))
        return out


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    rsyslogd()
    folder = tmp_path_factory.mktemp("rsyslog")
    r = Rsyslog(folder, Certificates(folder / "certs").make()).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, dcmtk) -> Iterator[Receiver]:
    r = Receiver("PACS", free_port(), tmp_path_factory.mktemp("audit-pacs")).start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path, pacs: Receiver,
         collector: Rsyslog) -> Iterator[NodeProcess]:
    certs = collector.certs
    n = NodeProcess(tmp_path_factory.mktemp("audit-node") / "spool", whole_model_path,
                    [pacs.address], explain="none",
                    extra=("--allow-calling-ae", "MODALITY", "--no-onnx-fast-path"),
                    env={"CXR_NODE_HTTP_TOKEN": TOKEN,
                         "CXR_NODE_AUDIT_SYSLOG": f"127.0.0.1:{collector.port}",
                         "CXR_NODE_AUDIT_SYSLOG_CA": str(certs.path("ca.crt")),
                         "CXR_NODE_AUDIT_SYSLOG_CERT": str(certs.path("client.crt")),
                         "CXR_NODE_AUDIT_SYSLOG_KEY": str(certs.path("client.key"))})
    n.start()
    yield n
    n.stop()


def audit_log(node: NodeProcess) -> Path:
    return node.spool / "audit.log"


def messages(node: NodeProcess, schema: etree.RelaxNG) -> list[etree._Element]:
    """Every message of the node's audit log, each checked against the schema."""
    path = audit_log(node)
    roots = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        root = etree.fromstring(line.encode())
        assert schema.validate(root), (schema.error_log, line)
        roots.append(root)
    return roots


def event(root: etree._Element) -> tuple[str, str | None, str]:
    ident = root.find("EventIdentification")
    return (ident.find("EventID").get("csd-code"), ident.get("EventActionCode"),
            ident.get("EventOutcomeIndicator"))


def patients(root: etree._Element) -> list[tuple[str, str]]:
    return [(o.get("ParticipantObjectID"), o.findtext("ParticipantObjectName"))
            for o in root.findall("ParticipantObjectIdentification")
            if o.get("ParticipantObjectTypeCodeRole") == "1"]


def instances(root: etree._Element) -> set[str]:
    return {i.get("UID") for i in root.iter("Instance")}


def wait_for_event(node: NodeProcess, schema: etree.RelaxNG, check, what: str,
                   timeout: float = 60) -> etree._Element:
    """The first message of the audit log that ``check`` accepts, waited for."""
    found = wait_until(lambda: [r for r in messages(node, schema) if check(r)][:1], timeout,
                       0.2, what, node.proc)
    return found[0]


def test_start_is_audited_in_the_file_and_at_the_syslog_collector(node, collector,
                                                                  schema) -> None:
    start = wait_for_event(node, schema, lambda r: event(r)[0] == "110100",
                           "Application Start")
    assert start.find("EventIdentification/EventTypeCode").get("csd-code") == "110120"
    pri, msgid, app, xml = wait_until(lambda: next(iter(collector.messages()), None), 30,
                                      0.2, "the collector to get a message")
    assert (pri, msgid, app) == ("85", "IHE+RFC-3881", "cxr-node")
    assert event(etree.fromstring(xml.encode()))[0] == "110100"


def test_image_received_sent_and_purged_is_audited_with_its_patient(
        node, pacs, schema, cr_path: Path, tmp_path: Path) -> None:
    image = radiograph_copy(cr_path, tmp_path / "in.dcm", "audit", downscale=4,
                            PatientID=PATIENT_ID, PatientName=PATIENT_NAME)
    source_uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    sent = storescu(node.dicom_port, [image])
    assert sent.returncode == 0, sent.stderr
    received = wait_for_event(node, schema, lambda r: event(r) == ("110104", "C", "0")
                              and source_uid in instances(r), "the received image")
    assert patients(received) == [(PATIENT_ID, PATIENT_NAME)]
    source = received.find("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor"),
            source.get("NetworkAccessPointID")) == ("MODALITY", "true", "127.0.0.1")
    # the source is deleted once every result is delivered: then all is in the log
    wait_for_event(node, schema, lambda r: event(r) == ("110103", "D", "0")
                   and source_uid in instances(r), "the source's deletion", timeout=120)
    roots = messages(node, schema)
    delivered = [r for r in roots if event(r) == ("110104", "R", "0")]
    results = set().union(*map(instances, delivered))
    assert results and all(patients(r) == [(PATIENT_ID, PATIENT_NAME)] for r in delivered)
    assert {r.findall("ActiveParticipant")[1].get("UserID") for r in delivered} == {"PACS"}
    at_pacs = {str(ds.SOPInstanceUID) for ds in pacs.wait_for(len(results))}
    assert results <= at_pacs
    deleted = set().union(*(instances(r) for r in roots if event(r) == ("110103", "D", "0")))
    assert deleted == results | {source_uid}  # each result and the source, purged


def test_association_from_an_ae_not_allowed_is_a_security_alert(node, schema, cr_path,
                                                                tmp_path: Path) -> None:
    image = radiograph_copy(cr_path, tmp_path / "x.dcm", "intruder", downscale=8)
    refused = storescu(node.dicom_port, [image], calling="INTRUDER")
    assert refused.returncode != 0
    alert = wait_for_event(node, schema, lambda r: event(r)[0] == "110113",
                           "the security alert")
    assert event(alert) == ("110113", "E", "4")
    subject = alert.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "INTRUDER@127.0.0.1"
    assert "not allowed" in alert.findtext("EventIdentification/EventOutcomeDescription")


def test_a_wrong_bearer_token_is_a_failed_user_authentication(node, schema) -> None:
    answer = httpx.get(f"{node.url}/jobs", headers={"Authorization": "Bearer wrong"},
                       timeout=30)
    assert answer.status_code == 401
    failed = wait_for_event(node, schema, lambda r: event(r)[0] == "110114",
                            "the failed authentication")
    assert event(failed) == ("110114", "E", "4")
    who = failed.find("ActiveParticipant")
    assert who.get("NetworkAccessPointID") == "127.0.0.1"
    assert "/jobs" in failed.findtext("EventIdentification/EventOutcomeDescription")


def test_a_lost_syslog_connection_is_retried_and_loses_nothing(collector: Rsyslog,
                                                                tmp_path: Path) -> None:
    other = Rsyslog(tmp_path / "rsyslog", collector.certs).start()
    context = ssl.create_default_context(cafile=str(collector.certs.path("ca.crt")))
    context.load_cert_chain(collector.certs.path("client.crt"),
                            collector.certs.path("client.key"))
    sink = SyslogSink("127.0.0.1", other.port, context, backoff_s=(0.1, 0.5))
    try:
        assert sink.write("<AuditMessage n='1'/>")
        wait_until(lambda: len(other.messages()) == 1, 30, 0.1, "the first message")
        other.stop()  # the collector goes away: its connection is closed
        assert sink.write("<AuditMessage n='2'/>")  # queued, not blocking
        other.start()  # back on the same port
        wait_until(lambda: len(other.messages()) == 2, 30, 0.1, "the message sent meanwhile")
    finally:
        sink.close(timeout=5)
        other.stop()
    assert [xml for *_, xml in other.messages()] == ["<AuditMessage n='1'/>",
                                                     "<AuditMessage n='2'/>"]


def test_stop_and_reading_the_log_are_audited_everywhere_and_patients_in_no_other_log(
        node, collector, schema) -> None:
    node.stop()
    roots = messages(node, schema)
    assert event(roots[-1]) == ("110100", "E", "0")
    assert roots[-1].find("EventIdentification/EventTypeCode").get("csd-code") == "110121"
    # the collector got every message of the file, the stop included (flushed at stop)
    in_file = audit_log(node).read_text(encoding="utf-8").splitlines()
    wait_until(lambda: len(collector.messages()) >= len(in_file), 30, 0.2,
               "the collector to get every message")
    assert [xml for *_, xml in collector.messages()] == in_file
    # patient identifiers: in the audit messages, and in the node's own log never
    assert PATIENT_ID in audit_log(node).read_text()
    log = node.log_text()
    assert PATIENT_ID not in log and "Auditee" not in log and "Patricia" not in log
    # cxr-node audit: the operator reads the log (filtered); the reading is recorded
    shown = subprocess.run([*cxr_node(), "audit", "--spool", str(node.spool), "--patient",
                            PATIENT_ID], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines and all(PATIENT_ID in line for line in lines)
    assert any("DICOM Instances Transferred" in line for line in lines)
    last = messages(node, schema)[-1]
    assert event(last) == ("110101", "R", "0")
    assert last.find("ParticipantObjectIdentification").get("ParticipantObjectID") == \
        audit_log(node).resolve().as_uri()
