"""DICOM audit messages (PS3.15 A.5): the XML of each event the node reports.

Built with the standard library's ElementTree, one message a line (no line breaks inside), in
the element order of the schema of PS3.15 A.5.1 (``tests/fixtures/audit_message.rng``). The
codes are those of PS3.15 A.5.3 and PS3.16 (DCM); patient identifiers appear only in the
Patient participant object, as A.5.3 asks.
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class Code:
    """A coded value (``csd-code``, ``codeSystemName``, ``originalText``)."""

    code: str
    meaning: str
    system: str = "DCM"


# Event IDs (DCID 400) and event types (DCID 401) of PS3.15 A.5.3
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
AUDIT_LOG_USED = Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
# Active participant roles (DCID 402)
ROLE_APPLICATION = Code("110150", "Application")
ROLE_LAUNCHER = Code("110151", "Application Launcher")
ROLE_DESTINATION = Code("110152", "Destination Role ID")
ROLE_SOURCE = Code("110153", "Source Role ID")
# Participant object ID types (A.5.1.2.4 and DCID 404)
PATIENT_NUMBER = Code("2", "Patient Number", "RFC-3881")
URI = Code("12", "URI", "RFC-3881")
STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")
NODE_ID = Code("110182", "Node ID")

#: EventOutcomeIndicator values (A.5.1)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a person, process or node taking part in the event."""

    user_id: str
    requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_id: str | None = None
    user_name: str | None = None
    #: IP address or host name where it acts from
    access_point: str | None = None


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: the patient, a study, the audit log, a node."""

    object_id: str
    id_type: Code
    name: str
    type_code: str | None = None
    role: str | None = None
    life_cycle: str | None = None
    #: (type, value) pairs, the value base64-encoded in the message
    details: tuple[tuple[str, str], ...] = ()
    #: SOP Class UID -> SOP Instance UIDs (a study's ParticipantObjectDescription)
    instances: dict[str, tuple[str, ...]] = field(default_factory=dict)
    accession: str | None = None


def patient(patient_id: str, name: str) -> ParticipantObject:
    """The Patient participant object (A.5.3: Patient ID, and the name)."""
    return ParticipantObject(patient_id, PATIENT_NUMBER, name, type_code="1", role="1")


def study(study_uid: str, instances: dict[str, tuple[str, ...]],
          accession: str | None = None, life_cycle: str | None = None) -> ParticipantObject:
    """A Study participant object with its SOP classes and instances."""
    return ParticipantObject(study_uid, STUDY_INSTANCE_UID, "", type_code="2", role="3",
                             life_cycle=life_cycle, instances=instances, accession=accession)


def access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def utc_time(when: float | None = None) -> str:
    """xsd:dateTime in UTC with milliseconds (PS3.15 A.5.2.5)."""
    moment = datetime.now(UTC) if when is None else \
        datetime.fromtimestamp(when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                       "originalText": code.meaning})


def _one_line(text: str) -> str:
    """``text`` without line breaks or control characters (not allowed in XML 1.0)."""
    return " ".join("".join(c if c >= " " else " " for c in str(text)).split())


def _participant(root: ET.Element, p: Participant) -> None:
    attrs = {"UserID": _one_line(p.user_id), "UserIsRequestor": "true" if p.requestor
             else "false"}
    if p.alternative_id:
        attrs["AlternativeUserID"] = _one_line(p.alternative_id)
    if p.user_name:
        attrs["UserName"] = _one_line(p.user_name)
    if p.access_point:
        attrs["NetworkAccessPointID"] = p.access_point
        attrs["NetworkAccessPointTypeCode"] = access_point_type(p.access_point)
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    for role in p.roles:
        _code(element, "RoleIDCode", role)


def _object(root: ET.Element, o: ParticipantObject) -> None:
    attrs = {"ParticipantObjectID": _one_line(o.object_id)}
    for key, value in (("ParticipantObjectTypeCode", o.type_code),
                       ("ParticipantObjectTypeCodeRole", o.role),
                       ("ParticipantObjectDataLifeCycle", o.life_cycle)):
        if value is not None:
            attrs[key] = value
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _code(element, "ParticipantObjectIDTypeCode", o.id_type)
    ET.SubElement(element, "ParticipantObjectName").text = _one_line(o.name)
    for kind, value in o.details:
        ET.SubElement(element, "ParticipantObjectDetail",
                      {"type": kind, "value": base64.b64encode(value.encode()).decode()})
    if o.instances or o.accession:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        if o.accession:
            ET.SubElement(description, "Accession", {"Number": _one_line(o.accession)})
        for sop_class, uids in sorted(o.instances.items()):
            sop = ET.SubElement(description, "SOPClass",
                                {"UID": sop_class, "NumberOfInstances": str(len(uids))})
            for uid in uids:
                ET.SubElement(sop, "Instance", {"UID": uid})


def message(event: Code, outcome: str, participants: Sequence[Participant], source_id: str,
            objects: Iterable[ParticipantObject] = (), *, action: str | None = None,
            event_types: Sequence[Code] = (), description: str | None = None,
            site: str | None = None, when: float | None = None) -> str:
    """One AuditMessage as XML text on one line (A.5.1)."""
    root = ET.Element("AuditMessage")
    attrs = {"EventDateTime": utc_time(when), "EventOutcomeIndicator": outcome}
    if action is not None:
        attrs["EventActionCode"] = action
    identification = ET.SubElement(root, "EventIdentification", attrs)
    _code(identification, "EventID", event)
    for kind in event_types:
        _code(identification, "EventTypeCode", kind)
    if description:
        ET.SubElement(identification, "EventOutcomeDescription").text = _one_line(description)
    for p in participants:
        _participant(root, p)
    source = {"AuditSourceID": _one_line(source_id)}
    if site:
        source["AuditEnterpriseSiteID"] = _one_line(site)
    audit_source = ET.SubElement(root, "AuditSourceIdentification", source)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server
    for o in objects:
        _object(root, o)
    return ET.tostring(root, encoding="unicode")
