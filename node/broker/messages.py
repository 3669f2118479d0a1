"""The messages roles exchange over the broker: references (keys, UIDs, sha256), never DICOM.

Every body is JSON with ``schema`` (:data:`SCHEMA_VERSION`) and ``kind``. A role reads every
schema up to its own, so roles can be upgraded one at a time (new fields only ever get
defaults); a body it cannot read raises :class:`MessageError`, and its consumer sends it to the
dead-letter queue with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from node.jobs.model import Delivery, Ticket

#: The schema this release writes; it reads every version from 1 up to this one.
SCHEMA_VERSION = 1


class MessageError(ValueError):
    """A message body that cannot be read: its reason is what the dead-letter queue keeps."""


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str] = ""

    def encode(self) -> bytes:
        return json.dumps({"schema": SCHEMA_VERSION, "kind": self.kind, **asdict(self)},
                          separators=(",", ":")).encode()


@dataclass(frozen=True)
class JobMessage(Message):
    """A received object to process: its record, its stored object and how it came.

    ``received_at`` (epoch seconds) dates the results, so a repeat builds identical objects;
    ``model_sha256`` and ``engine`` are the pool's model as the receiver knows it: a worker
    with other weights or another engine refuses the job.
    """

    kind: ClassVar[str] = "job"
    job_id: int
    key: str
    sha256: str
    sop_instance_uid: str | None
    calling_ae: str | None
    origin: str
    received_at: float
    model_sha256: str
    engine: str
    options: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1

    def ticket(self) -> Ticket:
        return Ticket(self.job_id, self.key, self.sop_instance_uid, self.calling_ae,
                      self.origin, dict(self.options), self.attempt, self.sha256,
                      self.received_at)


@dataclass(frozen=True)
class ScoreMessage(JobMessage):
    """A ``/score`` upload (stored without fsync: its answer is its acknowledgement); the
    answer goes to the AMQP ``reply_to`` with the request's ``correlation_id``."""

    kind: ClassVar[str] = "score"


@dataclass(frozen=True)
class ReplyMessage(Message):
    """A worker's answer to a :class:`ScoreMessage`: the job's outcome and, when done, the
    scoring document and the keys of the result objects it stored (when asked for DICOM)."""

    kind: ClassVar[str] = "reply"
    job_id: int
    state: str
    code: str | None = None
    reason: str | None = None
    document: dict[str, Any] | None = None
    result_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeliveryMessage(Message):
    """One result object for one destination; ``attempt`` counts the tries so far + 1."""

    kind: ClassVar[str] = "delivery"
    delivery_id: int
    job_id: int
    destination: str
    key: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    attempt: int = 1

    @classmethod
    def of(cls, d: Delivery, attempt: int = 1) -> DeliveryMessage:
        return cls(d.id, d.job_id, d.destination, d.key, d.sop_instance_uid, d.sop_class_uid,
                   d.transfer_syntax_uid, attempt)

    def delivery(self) -> Delivery:
        return Delivery(self.delivery_id, self.job_id, self.destination, self.key,
                        self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax_uid,
                        "pending", self.attempt - 1, None)


KINDS: dict[str, type[Message]] = {m.kind: m for m in (JobMessage, ScoreMessage, ReplyMessage,
                                                       DeliveryMessage)}


def decode(body: bytes, *expected: type[Message]) -> Message:
    """The message in ``body``, of one of the ``expected`` kinds.

    Raises:
        MessageError: not JSON, a schema newer than this release, another kind, a field
            missing or of the wrong type.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageError(f"not a JSON message: {e}") from e
    if not isinstance(doc, dict):
        raise MessageError("not a JSON object")
    schema, kind = doc.pop("schema", None), doc.pop("kind", None)
    if not isinstance(schema, int) or schema < 1:
        raise MessageError(f"schema {schema!r} is not a version number")
    if schema > SCHEMA_VERSION:
        raise MessageError(f"schema {schema} is newer than this release reads "
                           f"({SCHEMA_VERSION}): upgrade this role")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None or (expected and cls not in expected):
        raise MessageError(f"kind {kind!r} is not one of "
                           f"{[c.kind for c in expected or KINDS.values()]}")
    names = {f.name for f in fields(cls)}
    try:
        message = cls(**{k: v for k, v in doc.items() if k in names})
    except TypeError as e:
        raise MessageError(f"{kind} message: {e}") from e
    _check_types(message)
    return message


_TYPES: dict[str, tuple[type, ...]] = {
    "job_id": (int,), "delivery_id": (int,), "attempt": (int,), "key": (str,),
    "sha256": (str,), "destination": (str,), "origin": (str,), "engine": (str,),
    "model_sha256": (str,), "received_at": (int, float), "options": (dict,),
    "sop_class_uid": (str,), "transfer_syntax_uid": (str,), "state": (str,),
}


def _check_types(message: Message) -> None:
    for name, types in _TYPES.items():
        value = getattr(message, name, None)
        if hasattr(message, name) and (not isinstance(value, types) or isinstance(value, bool)):
            raise MessageError(f"{message.kind} message: {name} {value!r} is not "
                               f"{' or '.join(t.__name__ for t in types)}")
    if isinstance(message, JobMessage) and not message.key.startswith("incoming/"):
        raise MessageError(f"job message: key {message.key!r} is not an incoming object")
