"""Job records: each job's state, code, reason and timings, and its deliveries.

:class:`JobRecords` is what ``cxr-node jobs``, ``GET /jobs``, ``resend``, the sender and the
deletion of delivered files read and write; a database server shared by every machine can
stand behind it. :class:`SqliteJobRecords` is the embedded default (the spool's database);
its queries, shared with PostgreSQL's backend, are in :mod:`node.jobs.sql`.
Closing a job is idempotent: a job processed twice (a lease handed out again) records the same
outcome and the same deliveries (result UIDs are deterministic).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from node.jobs.model import Delivery, JobOutcome, JobRecord, ResultObject
from node.jobs.sql import CLOSE_JOB, UPSERT_DELIVERY, SqlJobRecords
from node.jobs.sqlite import Database


class JobRecords(Protocol):
    def open(self, key: str | None, sop_instance_uid: str | None, calling_ae: str | None,
             origin: str, options: dict[str, Any] | None = None,
             outcome: JobOutcome | None = None) -> int:
        """A new job record (``queued``, or closed at once with ``outcome``); its id."""
        ...

    def started(self, job_ids: Sequence[int]) -> None: ...

    def close(self, job_id: int, outcome: JobOutcome,
              deliveries: Sequence[tuple[str, ResultObject]] = ()) -> None:
        """Close a job and add its (destination, result object) deliveries, at once."""
        ...

    def requeued(self, job_id: int, reason: str) -> None: ...

    def job(self, job_id: int) -> JobRecord | None: ...

    def open_jobs(self) -> list[JobRecord]:
        """Jobs not closed (``queued`` or ``processing``)."""
        ...

    def known_keys(self) -> set[str]: ...

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]: ...

    def delivered(self, delivery_id: int) -> None: ...

    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None:
        """A failed attempt: retry at ``next_try``, or give up (``None``)."""
        ...

    def unsent_deliveries(self, job_id: int) -> int: ...

    def key_needed(self, key: str) -> bool:
        """Whether a delivery not yet sent still needs the object ``key``."""
        ...

    def resend_failed(self, ids: Sequence[int] | None = None) -> int:
        """Failed deliveries (all, or those of ``ids``) to ``pending`` again; how many."""
        ...

    def deliveries_of(self, job_id: int) -> list[Delivery]:
        """The job's deliveries, in any state, by id."""
        ...

    def failed_deliveries(self, ids: Sequence[int] | None = None) -> list[Delivery]:
        """Failed deliveries (all, or those of ``ids``) by id: what :meth:`resend_failed`
        with the same ``ids`` would send again."""
        ...

    def counts(self) -> dict[str, int]: ...

    def failed_document(self) -> dict[str, Any]:
        """Counts, failed and skipped jobs, failed deliveries: ``cxr-node jobs --json``."""
        ...


class SqliteJobRecords(SqlJobRecords):
    """:class:`JobRecords` in the ``jobs`` and ``deliveries`` tables of the spool's database.

    Its queries are :class:`~node.jobs.sql.SqlJobRecords`' own; reads run on the thread's
    connection (autocommit), writes each in a ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.connection().execute(query, args).fetchall()

    def _update(self, query: str, args: Sequence[Any] = ()) -> int:
        with self.db.transaction() as c:
            return c.execute(query, args).rowcount

    def _update_all(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.db.transaction() as c:
            c.executemany(query, rows)

    def _ids(self, ids: Iterable[int]) -> tuple[str, list[Any]]:
        ids = list(ids)
        return f"id IN ({','.join('?' * len(ids))})", ids

    def _insert(self, query: str, args: Sequence[Any]) -> int:
        with self.db.transaction() as c:
            return int(c.execute(query, args).lastrowid)

    def _json(self, value: dict[str, Any]) -> str:
        return json.dumps(value)

    def close(self, job_id: int, outcome: JobOutcome,
              deliveries: Sequence[tuple[str, ResultObject]] = ()) -> None:
        now = time.time()
        with self.db.transaction() as c:
            c.execute(CLOSE_JOB, (outcome.state, outcome.code, outcome.reason, now, job_id))
            for destination, obj in deliveries:
                c.execute(UPSERT_DELIVERY,
                          (job_id, destination, obj.key, obj.sop_instance_uid,
                           obj.sop_class_uid, obj.transfer_syntax_uid, now, now))
