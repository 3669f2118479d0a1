"""The node's audit trail: one object, made by the service, that the fronts and jobs call.

Each method builds one DICOM audit message (:mod:`node.audit.messages`) and hands it to the
sinks (:mod:`node.audit.sinks`). None of them ever raises into the work that called it: a
message that cannot be built or written is a warning in the log (without its content, which
can hold patient identifiers), and the DICOM or HTTP work goes on.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.audit import messages as m

logger = logging.getLogger(__name__)

#: the header fields an audit message needs from an object (read before the pixels)
HEADER_TAGS = ["PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber",
               "SOPClassUID", "SOPInstanceUID"]


class Sink(Protocol):
    def write(self, xml: str) -> bool: ...

    def close(self, timeout: float = 5) -> None: ...


@dataclass(frozen=True)
class Instance:
    """What an audit message says of one DICOM object."""

    patient_id: str
    patient_name: str
    study_uid: str
    accession: str
    sop_class: str
    sop_uid: str

    @classmethod
    def of(cls, ds: Any) -> Instance:
        def text(keyword: str) -> str:
            try:
                return str(ds.get(keyword, "") or "").strip()
            except Exception:  # a value pydicom cannot read
                return ""

        return cls(*(text(k) for k in HEADER_TAGS))

    @classmethod
    def read(cls, path: Path) -> Instance | None:
        """The header of the file at ``path``; ``None`` when it cannot be read."""
        import pydicom

        try:
            return cls.of(pydicom.dcmread(path, stop_before_pixels=True,
                                          specific_tags=HEADER_TAGS))
        except Exception as e:
            logger.warning("audit: %s unreadable (%s)", path.name, type(e).__name__)
            return None


def by_patient(instances: Iterable[Instance]) -> list[list[m.ParticipantObject]]:
    """The participant objects of one message per patient (A.5.3: one patient a message):
    the patient, then each of its studies with its instances."""
    patients: dict[tuple[str, str], dict[str, list[Instance]]] = defaultdict(
        lambda: defaultdict(list))
    for i in instances:
        patients[(i.patient_id, i.patient_name)][i.study_uid].append(i)
    out = []
    for (patient_id, name), studies in patients.items():
        objects = [m.patient(patient_id, name)]
        for study_uid, items in studies.items():
            classes: dict[str, list[str]] = defaultdict(list)
            for i in items:
                classes[i.sop_class].append(i.sop_uid)
            objects.append(m.study(study_uid, {k: tuple(v) for k, v in classes.items()},
                                   next((i.accession for i in items if i.accession), None)))
        out.append(objects)
    return out


class AuditTrail:
    """Audit messages of one node process (AE title ``ae_title``) to ``sinks``."""

    def __init__(self, ae_title: str, sinks: Sequence[Sink] = (), *,
                 log_path: Path | None = None) -> None:
        self.ae_title = ae_title
        self.sinks = list(sinks)
        self.log_path = log_path
        self.host = socket.gethostname()

    @classmethod
    def from_settings(cls, settings: Any) -> AuditTrail:
        """The trail ``settings`` ask for: the file (``audit_log``, default in the spool) and
        syslog over TLS (``audit_syslog``); none with ``audit = false``."""
        from node.audit.sinks import FileSink

        if not settings.audit:
            return cls(settings.ae_title)
        path = settings.audit_log or settings.spool / "audit.log"
        sinks: list[Sink] = [FileSink(path)]
        if settings.audit_syslog:
            sinks.append(syslog_sink(settings))
        return cls(settings.ae_title, sinks, log_path=path)

    @classmethod
    def off(cls) -> AuditTrail:
        """A trail that records nothing (parts used without a node: tests, tools)."""
        return cls("-")

    @property
    def enabled(self) -> bool:
        return bool(self.sinks)

    def record(self, build: Callable[[], str | list[str]]) -> None:
        """Build the message(s) and write them to every sink; never raises."""
        if not self.sinks:
            return
        try:
            built = build()
        except Exception as e:
            logger.warning("audit message not built: %s", type(e).__name__)
            return
        for xml in [built] if isinstance(built, str) else built:
            for sink in self.sinks:
                try:
                    sink.write(xml)
                except Exception as e:  # a sink must not fail the caller either
                    logger.warning("audit sink %s failed: %s", type(sink).__name__,
                                   type(e).__name__)

    def close(self, timeout: float = 5) -> None:
        """Flush and stop the sinks (syslog sends what is queued, within ``timeout``)."""
        for sink in self.sinks:
            sink.close(timeout)

    # participants
    def me(self, requestor: bool, *roles: m.Code) -> m.Participant:
        """This node process as an active participant."""
        return m.Participant(self.ae_title, requestor, roles, alternative_id=str(os.getpid()),
                             access_point=self.host)

    def _message(self, event: m.Code, outcome: str, participants: Sequence[m.Participant],
                 objects: Iterable[m.ParticipantObject] = (), **kwargs: Any) -> str:
        return m.message(event, outcome, participants, self.ae_title, objects, **kwargs)

    # events
    def application_start(self) -> None:
        self._application(m.APPLICATION_START)

    def application_stop(self) -> None:
        self._application(m.APPLICATION_STOP)

    def _application(self, kind: m.Code) -> None:
        """Application Activity (A.5.3.1): the node and the user who launched it."""
        def build() -> str:
            launcher = m.Participant(_os_user(), True, (m.ROLE_LAUNCHER,))
            return self._message(m.APPLICATION_ACTIVITY, m.SUCCESS,
                                 [self.me(False, m.ROLE_APPLICATION), launcher],
                                 action="E", event_types=[kind])
        self.record(build)

    def association_rejected(self, calling_ae: str, address: str | None, reason: str) -> None:
        """Security Alert (A.5.3.11), Node Authentication: a refused association."""
        def build() -> str:
            node_id = f"{calling_ae}@{address}" if address else calling_ae
            peer = m.Participant(calling_ae, True, alternative_id=f"AETITLE={calling_ae}",
                                 access_point=address)
            subject = m.ParticipantObject(node_id, m.NODE_ID, calling_ae, type_code="2",
                                          details=(("Alert Description", reason),))
            return self._message(m.SECURITY_ALERT, m.MINOR_FAILURE, [self.me(False), peer],
                                 [subject], action="E", event_types=[m.NODE_AUTHENTICATION],
                                 description=reason)
        self.record(build)

    def user_authentication(self, user: str | None, success: bool, *,
                            address: str | None = None, logout: bool = False,
                            detail: str | None = None) -> None:
        """User Authentication (A.5.3.12): a sign-in (or out) on the HTTP front, ``user``
        ``None`` when the caller named none (a bearer token refused)."""
        def build() -> str:
            person = m.Participant(user or "unknown", True, access_point=address)
            return self._message(m.USER_AUTHENTICATION,
                                 m.SUCCESS if success else m.MINOR_FAILURE,
                                 [person, self.me(False)], action="E",
                                 event_types=[m.LOGOUT if logout else m.LOGIN],
                                 description=detail)
        self.record(build)

    def instances_received(self, received: Any) -> None:
        """DICOM Instances Transferred (A.5.3.7), action C: an object stored on arrival
        (``received``: :class:`~node.jobs.intake.Received`: its origin, calling AE and
        address)."""
        def build() -> list[str]:
            address = received.address
            who = received.calling_ae or received.origin
            source = m.Participant(who, True, (m.ROLE_SOURCE,),
                                   alternative_id=f"AETITLE={received.calling_ae}"
                                   if received.calling_ae else None, access_point=address)
            return [self._message(m.INSTANCES_TRANSFERRED, m.SUCCESS,
                                  [source, self.me(False, m.ROLE_DESTINATION)], objects,
                                  action="C")
                    for objects in by_patient([Instance.of(received.dataset)])]
        self.record(build)

    def instances_sent(self, destination: str,
                       results: Sequence[tuple[Path, str | None]]) -> None:
        """DICOM Instances Transferred (A.5.3.7), action R: result files sent to
        ``destination`` (per file ``None`` or why it failed): one message per patient and
        outcome, the failed ones with their reasons."""
        def build() -> list[str]:
            peer = _destination(destination)
            out = []
            for failed in (False, True):
                chosen = [(p, e) for p, e in results if (e is not None) == failed]
                read = [i for i in (Instance.read(p) for p, _ in chosen) if i is not None]
                reasons = sorted({e for _, e in chosen if e})
                for objects in by_patient(read):
                    out.append(self._message(
                        m.INSTANCES_TRANSFERRED, m.MINOR_FAILURE if failed else m.SUCCESS,
                        [self.me(True, m.ROLE_SOURCE), peer], objects, action="R",
                        description="; ".join(reasons)[:1000] if failed else None))
            return out
        self.record(build)

    def deleting(self, store: Any, key: str) -> None:
        """DICOM Instances Accessed (A.5.3.6), action D: the object ``key`` of ``store`` (an
        :class:`~node.jobs.storage.ObjectStore`) is about to be deleted (delivered, and
        ``purge_delivered``); called before, to read its header."""
        self._accessed(store, key, lambda: [self.me(True)], "D")

    def operator_accessed(self, user: str, store: Any, key: str, *, action: str = "R",
                          address: str | None = None, detail: str | None = None) -> None:
        """DICOM Instances Accessed (A.5.3.6) on an operator's request (``/ui``: resend a
        delivery, run a job again): the operator, by name, is the requestor; the object
        ``key`` of ``store`` gives the patient and study; ``detail`` says what was done."""
        self._accessed(store, key, lambda: [m.Participant(user, True, access_point=address),
                                            self.me(False)], action, detail)

    def _accessed(self, store: Any, key: str, participants: Callable[[], list[m.Participant]],
                  action: str, detail: str | None = None) -> None:
        def build() -> list[str]:
            instance = Instance.read(store.local_path(key))
            return [self._message(m.INSTANCES_ACCESSED, m.SUCCESS, participants(), objects,
                                  action=action, description=detail)
                    for objects in by_patient([instance] if instance else [])]
        self.record(build)

    def audit_log_used(self, user: str | None = None, path: Path | None = None) -> None:
        """Audit Log Used (A.5.3.2): the audit log was read (``cxr-node audit``)."""
        def build() -> str:
            where = (path or self.log_path or Path("audit.log")).resolve()
            reader = m.Participant(user or _os_user(), True, access_point=self.host)
            log = m.ParticipantObject(where.as_uri(), m.URI, "Security Audit Log",
                                      type_code="2", role="13")
            return self._message(m.AUDIT_LOG_USED, m.SUCCESS, [reader], [log], action="R")
        self.record(build)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a container)
        return str(os.getuid())


def _destination(destination: str) -> m.Participant:
    """A delivery's destination (``AE@HOST:PORT`` or a STOW-RS URL) as a participant."""
    from urllib.parse import urlsplit

    if destination.startswith(("http://", "https://")):
        host = urlsplit(destination).hostname
        return m.Participant(destination, False, (m.ROLE_DESTINATION,), access_point=host)
    ae, _, address = destination.partition("@")
    host = address.rpartition(":")[0].strip("[]") or None
    return m.Participant(ae, False, (m.ROLE_DESTINATION,), alternative_id=f"AETITLE={ae}",
                         access_point=host)


def syslog_sink(settings: Any) -> Sink:
    """The syslog sink of ``settings.audit_syslog`` (``HOST:PORT``), TLS verified against
    ``audit_syslog_ca`` (default: the system's CAs), with a client certificate if given."""
    import ssl

    from node.audit.sinks import SyslogSink

    host, _, port = settings.audit_syslog.rpartition(":")
    context = ssl.create_default_context(
        cafile=str(settings.audit_syslog_ca) if settings.audit_syslog_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.audit_syslog_cert is not None:
        context.load_cert_chain(settings.audit_syslog_cert, settings.audit_syslog_key)
    return SyslogSink(host.strip("[]"), int(port), context)
