"""The node's queues on the broker, and their arguments: declared idempotently by every role.

All queues are durable quorum queues (Raft-replicated over the broker's nodes):

- ``cxr.jobs``: received objects to process; ``cxr.score``: ``/score`` requests;
- ``cxr.deliver``: result objects to send, one message per destination;
- ``cxr.deliver.retry.<ms>``: a failed delivery waits here its backoff step (``x-message-ttl``)
  and is dead-lettered back to ``cxr.deliver``: a nack with requeue could not wait, and
  repeated requeues grow a quorum queue's log;
- ``cxr.failed``: deliveries given up after ``retry_max_attempts`` (``cxr-node resend``);
- ``cxr.dead``: what no role could read (its reason in the ``x-cxr-reason`` header), and poison
  messages the broker dead-letters after :data:`DELIVERY_LIMIT` redeliveries.

Every dead-lettering queue uses ``at-least-once`` dead-lettering, which needs
``x-overflow: reject-publish``. A queue that exists with other arguments is a configuration
error the broker reports (PRECONDITION_FAILED); retry queues carry their delay in their name
so that a changed backoff declares new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOBS = "cxr.jobs"
SCORE = "cxr.score"
DELIVER = "cxr.deliver"
FAILED = "cxr.failed"
DEAD = "cxr.dead"
RETRY_PREFIX = "cxr.deliver.retry."
#: Redeliveries after which the broker dead-letters a message (a poison message: one that
#: kills its consumer each time); not a retry policy.
DELIVERY_LIMIT = 10
#: Header of a message sent to ``cxr.dead`` by a role: why it could not be processed.
REASON_HEADER = "x-cxr-reason"


def _dead_lettering(target: str) -> dict[str, Any]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def retry_queue(delay_s: float) -> str:
    return f"{RETRY_PREFIX}{round(delay_s * 1000)}ms"


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any]


def queues(retry_delays_s: list[float]) -> list[Queue]:
    """Every queue of the node, dead-letter targets first (a target must exist before a
    message is dead-lettered to it)."""
    quorum = {"x-queue-type": "quorum"}
    work = {**quorum, **_dead_lettering(DEAD), "x-delivery-limit": DELIVERY_LIMIT}
    out = [Queue(DEAD, quorum), Queue(FAILED, quorum), Queue(JOBS, work), Queue(SCORE, work),
           Queue(DELIVER, work)]
    for delay in sorted(set(retry_delays_s)):
        out.append(Queue(retry_queue(delay), {**quorum, **_dead_lettering(DELIVER),
                                              "x-message-ttl": round(delay * 1000)}))
    return out


def retry_delays(initial_s: float, max_s: float, max_attempts: int) -> list[float]:
    """The backoff after each failed attempt but the last: ``initial * 2**(n-1)``, capped."""
    return [min(initial_s * 2 ** (n - 1), max_s) for n in range(1, max(max_attempts, 1))]


def declare(channel: Any, retry_delays_s: list[float]) -> None:
    """Declare every queue on ``channel`` (a pika channel); idempotent."""
    for q in queues(retry_delays_s):
        channel.queue_declare(q.name, durable=True, arguments=q.arguments)
