"""The audit trail of IHE ATNA: DICOM audit messages (PS3.15 A.5) of what the node does with
patient data and who tried to use it, to a local file and optionally to syslog over TLS."""

from node.audit.messages import Code, Participant, ParticipantObject, message
from node.audit.sinks import FileSink, SyslogSink, syslog_frame
from node.audit.trail import AuditTrail, Instance

__all__ = ["AuditTrail", "Code", "FileSink", "Instance", "Participant", "ParticipantObject",
           "SyslogSink", "message", "syslog_frame"]
