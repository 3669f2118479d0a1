"""``cxr-node audit``: read the audit log, filtered, and record that it was read (Audit Log
Used, PS3.15 A.5.3.2), as a security officer's reading of it must be."""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.audit.sinks import FileSink
from node.audit.trail import AuditTrail


@dataclass(frozen=True)
class Entry:
    """One message of the log, with what the filters and the summary use."""

    xml: str
    time: str
    event: str
    event_code: str
    action: str
    outcome: str
    participants: tuple[str, ...]
    patients: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> Entry:
        root = ET.fromstring(line)
        ident = root.find("EventIdentification")
        event = ident.find("EventID") if ident is not None else None
        if ident is None or event is None:
            raise ValueError("not an audit message")
        kinds = [t.get("originalText", "") for t in ident.findall("EventTypeCode")]
        name = event.get("originalText", "") + (f" ({', '.join(kinds)})" if kinds else "")
        return cls(line, ident.get("EventDateTime", ""), name, event.get("csd-code", ""),
                   ident.get("EventActionCode", "-"), ident.get("EventOutcomeIndicator", ""),
                   tuple(p.get("UserID", "") for p in root.findall("ActiveParticipant")),
                   tuple(o.get("ParticipantObjectID", "")
                         for o in root.findall("ParticipantObjectIdentification")
                         if o.get("ParticipantObjectTypeCodeRole") == "1"))

    def summary(self) -> str:
        patients = f" patient {', '.join(self.patients)}" if self.patients else ""
        return (f"{self.time} {self.event} action {self.action} outcome {self.outcome}: "
                f"{', '.join(self.participants)}{patients}")


def read_log(path: Path) -> Iterator[Entry | None]:
    """Each line of the log parsed; ``None`` for a line that is no audit message."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield Entry.parse(line.strip())
            except (ET.ParseError, ValueError):
                yield None


def add_audit_command(sub: Any) -> None:
    """The ``audit`` sub-command of ``cxr-node`` (``sub``: argparse's sub-parsers)."""
    p = sub.add_parser("audit", help="print the audit trail (IHE ATNA), filtered; the reading "
                                     "is itself recorded")
    p.add_argument("--spool", type=Path, default=Path("spool"),
                   help="the node's spool (its audit.log)")
    p.add_argument("--config", type=Path, help="the node's TOML config (its audit_log)")
    p.add_argument("--log", type=Path, help="the audit log file itself")
    p.add_argument("--event", help="only events whose name or code contains this "
                                   "(e.g. 'Transferred', 110113)")
    p.add_argument("--since", help="only events at or after this UTC time (ISO 8601 prefix)")
    p.add_argument("--patient", help="only events about this Patient ID")
    p.add_argument("--failures", action="store_true", help="only events that failed")
    p.add_argument("--xml", action="store_true", help="print the messages as stored")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    settings = None
    if args.config is not None:
        from node.settings import Settings

        settings = Settings.load(args.config)
    path = args.log or (settings.audit_log if settings is not None else None) or \
        ((settings.spool if settings is not None else args.spool) / "audit.log")
    if not path.is_file():
        raise ValueError(f"no audit log at {path}")
    shown = unreadable = 0
    for entry in read_log(path):
        if entry is None:
            unreadable += 1
            continue
        if args.event and args.event.lower() not in f"{entry.event} {entry.event_code}".lower():
            continue
        if args.since and entry.time < args.since:
            continue
        if args.patient and args.patient not in entry.patients:
            continue
        if args.failures and entry.outcome == "0":
            continue
        print(entry.xml if args.xml else entry.summary())
        shown += 1
    if unreadable:
        print(f"cxr-node audit: {unreadable} line(s) of {path} are no audit message",
              file=sys.stderr)
    trail = (AuditTrail.from_settings(settings) if settings is not None and settings.audit
             else AuditTrail("cxr-node", [FileSink(path)], log_path=path))
    trail.audit_log_used(path=path)
    trail.close()
    return 0
