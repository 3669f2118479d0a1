"""The job queue: tickets to process, handed out as leases, at least once.

:class:`JobQueue` is what the workers and the intake need of a queue; a message broker can
stand behind it (put = publish with a confirm, claim = consume with a prefetch, ack = ack,
retry_later = publish to a delayed queue, dead_letter = publish to a failed queue).
:class:`SqliteJobQueue` is the embedded default, a table of its own in the spool's database.

A claimed ticket stays leased until :meth:`~JobQueue.ack`, :meth:`~JobQueue.retry_later` or
:meth:`~JobQueue.dead_letter`; a lease still held when its process died is handed out again
(:meth:`~JobQueue.recover`). Finishing a job twice is harmless (its result UIDs are
deterministic, its record's close is idempotent).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Protocol

from node.core.errors import OutOfResourcesError
from node.jobs.model import Ticket
from node.jobs.sqlite import Database


class QueueFullError(OutOfResourcesError):
    """Back-pressure: too many jobs waiting; the caller should retry later."""


class JobQueue(Protocol):
    def put(self, ticket: Ticket) -> None:
        """Queue ``ticket``; returns only once it is durable."""
        ...

    def claim(self, limit: int) -> list[Ticket]:
        """Lease up to ``limit`` tickets, oldest first."""
        ...

    def ack(self, job_id: int) -> None:
        """The job's result is durable: drop its ticket."""
        ...

    def retry_later(self, ticket: Ticket, delay_s: float) -> None:
        """Hand the ticket out again after ``delay_s`` (a transient problem)."""
        ...

    def dead_letter(self, job_id: int, reason: str) -> None:
        """Give up on the job: drop its ticket (its record says why)."""
        ...

    def recover(self) -> int:
        """Return leases held by a process that is gone; how many."""
        ...

    def depth(self) -> int:
        """Tickets queued or leased."""
        ...


def _ticket(text: str) -> Ticket:
    return Ticket(**json.loads(text))


class SqliteJobQueue:
    """:class:`JobQueue` in the ``queue`` table of the spool's database (one process)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, ticket: Ticket) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO queue(job_id, ticket, leased, available_at)"
                      " VALUES (?, ?, 0, 0)", (ticket.job_id, json.dumps(asdict(ticket))))

    def claim(self, limit: int) -> list[Ticket]:
        now = time.time()
        query = ("SELECT job_id, ticket FROM queue WHERE leased=0 AND available_at<=?"
                 " ORDER BY job_id LIMIT ?")
        # A read first: a worker finding nothing must not take the write lock that every
        # C-STORE and upload needs to be acknowledged.
        if not self.db.connection().execute(query, (now, 1)).fetchone():
            return []
        with self.db.transaction() as c:
            rows = c.execute(query, (now, limit)).fetchall()
            if rows:
                c.execute(f"UPDATE queue SET leased=1 WHERE job_id IN "
                          f"({','.join('?' * len(rows))})", [r["job_id"] for r in rows])
        return [_ticket(r["ticket"]) for r in rows]

    def ack(self, job_id: int) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM queue WHERE job_id=?", (job_id,))

    def retry_later(self, ticket: Ticket, delay_s: float) -> None:
        again = Ticket(**{**asdict(ticket), "attempt": ticket.attempt + 1})
        with self.db.transaction() as c:
            c.execute("UPDATE queue SET leased=0, available_at=?, ticket=? WHERE job_id=?",
                      (time.time() + delay_s, json.dumps(asdict(again)), ticket.job_id))

    def dead_letter(self, job_id: int, reason: str) -> None:
        self.ack(job_id)

    def recover(self) -> int:
        with self.db.transaction() as c:
            return c.execute("UPDATE queue SET leased=0 WHERE leased=1").rowcount

    def depth(self) -> int:
        return int(self.db.connection().execute("SELECT COUNT(*) FROM queue").fetchone()[0])
