"""Job records: each job's state, code, reason and timings, and its deliveries.

:class:`JobRecords` is what ``cxr-node jobs``, ``GET /jobs``, ``resend``, the sender and the
deletion of delivered files read and write; a database server shared by every machine can
stand behind it. :class:`SqliteJobRecords` is the embedded default (the spool's database).
Closing a job is idempotent: a job processed twice (a lease handed out again) records the same
outcome and the same deliveries (result UIDs are deterministic).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from node.jobs.model import Delivery, JobOutcome, JobRecord, ResultObject, failed_document
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


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(row["id"], row["key"], row["sop_instance_uid"], row["calling_ae"],
                     row["origin"], row["state"], row["code"], row["reason"],
                     json.loads(row["options"]) if row["options"] else {},
                     row["created"], row["updated"])


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(row["id"], row["job_id"], row["destination"], row["key"],
                    row["sop_instance_uid"], row["sop_class_uid"], row["transfer_syntax_uid"],
                    row["state"], row["attempts"], row["reason"])


def _in(ids: Iterable[int]) -> tuple[str, list[int]]:
    ids = list(ids)
    return ",".join("?" * len(ids)), ids


class SqliteJobRecords:
    """:class:`JobRecords` in the ``jobs`` and ``deliveries`` tables of the spool's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def open(self, key: str | None, sop_instance_uid: str | None, calling_ae: str | None,
             origin: str, options: dict[str, Any] | None = None,
             outcome: JobOutcome | None = None) -> int:
        now = time.time()
        state, code, reason = ("queued", None, None) if outcome is None else (
            outcome.state, outcome.code, outcome.reason)
        with self.db.transaction() as c:
            return int(c.execute(
                "INSERT INTO jobs(key, sop_instance_uid, calling_ae, origin, options, state,"
                " code, reason, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, sop_instance_uid, calling_ae, origin,
                 json.dumps(options) if options else None, state, code, reason, now, now),
            ).lastrowid)

    def started(self, job_ids: Sequence[int]) -> None:
        marks, ids = _in(job_ids)
        with self.db.transaction() as c:
            c.execute(f"UPDATE jobs SET state='processing', updated=? WHERE id IN ({marks})"
                      " AND state='queued'", (time.time(), *ids))

    def close(self, job_id: int, outcome: JobOutcome,
              deliveries: Sequence[tuple[str, ResultObject]] = ()) -> None:
        now = time.time()
        with self.db.transaction() as c:
            c.execute("UPDATE jobs SET state=?, code=?, reason=?, updated=? WHERE id=?",
                      (outcome.state, outcome.code, outcome.reason, now, job_id))
            for destination, obj in deliveries:
                # a re-sent source gives the same result UIDs: deliver again, no new row
                c.execute(
                    "INSERT INTO deliveries(job_id, destination, key, sop_instance_uid,"
                    " sop_class_uid, transfer_syntax_uid, state, next_try, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
                    " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET"
                    " job_id=excluded.job_id, key=excluded.key,"
                    " sop_class_uid=excluded.sop_class_uid,"
                    " transfer_syntax_uid=excluded.transfer_syntax_uid, state='pending',"
                    " attempts=0, next_try=excluded.next_try, reason=NULL,"
                    " updated=excluded.updated",
                    (job_id, destination, obj.key, obj.sop_instance_uid, obj.sop_class_uid,
                     obj.transfer_syntax_uid, now, now))

    def requeued(self, job_id: int, reason: str) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE jobs SET state='queued', reason=?, updated=? WHERE id=?",
                      (reason, time.time(), job_id))

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.connection().execute(query, args).fetchall()

    def job(self, job_id: int) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def open_jobs(self) -> list[JobRecord]:
        return [_job(r) for r in self._rows("SELECT * FROM jobs WHERE state IN"
                                            " ('queued', 'processing') ORDER BY id")]

    def known_keys(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT key FROM jobs WHERE key IS NOT NULL")}

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        return [_delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE state='pending' AND next_try<=?"
            " ORDER BY next_try, id LIMIT ?", (now, limit))]

    def delivered(self, delivery_id: int) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE deliveries SET state='sent', attempts=attempts+1, reason=NULL,"
                      " updated=? WHERE id=?", (time.time(), delivery_id))

    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None:
        state = "failed" if next_try is None else "pending"
        with self.db.transaction() as c:
            c.execute("UPDATE deliveries SET state=?, attempts=attempts+1, reason=?,"
                      " next_try=?, updated=? WHERE id=?",
                      (state, reason, next_try or 0, time.time(), delivery_id))

    def unsent_deliveries(self, job_id: int) -> int:
        return int(self._rows("SELECT COUNT(*) FROM deliveries WHERE job_id=? AND"
                              " state!='sent'", (job_id,))[0][0])

    def key_needed(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM deliveries WHERE key=? AND state!='sent'"
                               " LIMIT 1", (key,)))

    def resend_failed(self, ids: Sequence[int] | None = None) -> int:
        now = time.time()
        query = ("UPDATE deliveries SET state='pending', attempts=0, next_try=?, updated=?"
                 " WHERE state='failed'")
        args: list[Any] = [now, now]
        if ids:
            marks, listed = _in(ids)
            query += f" AND id IN ({marks})"
            args += listed
        with self.db.transaction() as c:
            return c.execute(query, args).rowcount

    def deliveries_of(self, job_id: int) -> list[Delivery]:
        return [_delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE job_id=? ORDER BY id", (job_id,))]

    def failed_deliveries(self, ids: Sequence[int] | None = None) -> list[Delivery]:
        query = "SELECT * FROM deliveries WHERE state='failed'"
        args: list[int] = []
        if ids:
            marks, args = _in(ids)
            query += f" AND id IN ({marks})"
        return [_delivery(r) for r in self._rows(query + " ORDER BY id", args)]

    def counts(self) -> dict[str, int]:
        out = {f"jobs_{r[0]}": r[1] for r in
               self._rows("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        out.update({f"deliveries_{r[0]}": r[1] for r in
                    self._rows("SELECT state, COUNT(*) FROM deliveries GROUP BY state")})
        return out

    def failed_document(self) -> dict[str, Any]:
        jobs = [_job(r) for r in self._rows("SELECT * FROM jobs WHERE state IN"
                                            " ('failed', 'skipped') ORDER BY id")]
        deliveries = [_delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE state='failed' ORDER BY id")]
        return failed_document(self.counts(), jobs, deliveries)
