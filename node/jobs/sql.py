"""Job records' queries, written once for every SQL backend.

SQLite and PostgreSQL read and update the ``jobs`` and ``deliveries`` tables with the same
statements; they differ only in how a statement reaches the server (a thread's connection
or a pooled transaction), in placeholders and in lists of ids. :class:`SqlJobRecords` holds
the statements they share, so that a change to what a query means is made once and cannot
drift between the backends. Each backend supplies a few primitives (run a query, run an
update, insert a row and give its id, a list of ids, JSON) and what really differs: ``close``
(PostgreSQL's advisory locks, one ``executemany``), transactions, retries and errors.

Statements are written with ``?`` placeholders (SQLite's); PostgreSQL's backend turns each
``?`` into ``%s``, so no statement here may hold a literal ``?`` (or ``%``). Columns computed
by a query are named (``COUNT(*) AS n``) because rows are read by name: ``sqlite3.Row`` and
psycopg's ``DictRow`` both answer ``row["name"]``.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from node.jobs.model import Delivery, JobOutcome, JobRecord, failed_document

T = TypeVar("T")
#: A row read by column name: ``sqlite3.Row`` or psycopg's ``DictRow``.
Row = Any
#: Runs a query, gives its rows: what :meth:`SqlJobRecords._read` hands its work.
Rows = Callable[[str, Sequence[Any]], list[Row]]

#: A new job.
INSERT_JOB = ("INSERT INTO jobs(key, sop_instance_uid, calling_ae, origin, options, state,"
              " code, reason, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: A job's outcome, when it is closed.
CLOSE_JOB = "UPDATE jobs SET state=?, code=?, reason=?, updated=? WHERE id=?"
#: A delivery of a closed job. A re-sent source gives the same result UIDs: the row of that
#: (destination, UID) is delivered again, not added twice.
UPSERT_DELIVERY = (
    "INSERT INTO deliveries(job_id, destination, key, sop_instance_uid,"
    " sop_class_uid, transfer_syntax_uid, state, next_try, updated)"
    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
    " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET"
    " job_id=excluded.job_id, key=excluded.key,"
    " sop_class_uid=excluded.sop_class_uid,"
    " transfer_syntax_uid=excluded.transfer_syntax_uid, state='pending',"
    " attempts=0, next_try=excluded.next_try, reason=NULL,"
    " updated=excluded.updated"
    # the same job closed again (a repeat: its message handed out twice) leaves what was
    # sent alone; another job with the same result UIDs (the source sent again) sends again
    " WHERE deliveries.job_id != excluded.job_id OR deliveries.state != 'sent'")


def job_record(row: Row) -> JobRecord:
    """A ``jobs`` row as a :class:`JobRecord`. Options are JSON text in SQLite and JSONB
    (read back as a dict) in PostgreSQL."""
    options = row["options"]
    if isinstance(options, str):
        options = json.loads(options)
    return JobRecord(row["id"], row["key"], row["sop_instance_uid"], row["calling_ae"],
                     row["origin"], row["state"], row["code"], row["reason"],
                     dict(options) if options else {}, row["created"], row["updated"])


def delivery(row: Row) -> Delivery:
    """A ``deliveries`` row as a :class:`Delivery`."""
    return Delivery(row["id"], row["job_id"], row["destination"], row["key"],
                    row["sop_instance_uid"], row["sop_class_uid"], row["transfer_syntax_uid"],
                    row["state"], row["attempts"], row["reason"])


def _counts(rows: Rows) -> dict[str, int]:
    out = {f"jobs_{r['state']}": r["n"] for r in
           rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ())}
    out.update({f"deliveries_{r['state']}": r["n"] for r in
                rows("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state", ())})
    return out


class SqlJobRecords(ABC):
    """The :class:`~node.jobs.records.JobRecords` methods whose SQL every backend shares.

    A backend adds ``close`` and the primitives below; the statements here use ``?``
    placeholders and :meth:`_ids` for lists of ids.
    """

    @abstractmethod
    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Row]:
        """The rows of one query (a transaction of its own where the backend has them)."""

    @abstractmethod
    def _update(self, query: str, args: Sequence[Any] = ()) -> int:
        """One statement in a transaction of its own; the rows it changed."""

    @abstractmethod
    def _update_all(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """``query`` once for each of ``rows``, all in one transaction."""

    @abstractmethod
    def _ids(self, ids: Iterable[int]) -> tuple[str, list[Any]]:
        """A condition "``id`` is one of ``ids``" and its arguments: SQLite has no arrays
        (``id IN (?, ?)``), PostgreSQL takes one (``id = ANY(?)``) whatever the count."""

    @abstractmethod
    def _insert(self, query: str, args: Sequence[Any]) -> int:
        """One ``INSERT`` in a transaction of its own; the new row's id (SQLite's
        ``lastrowid``, PostgreSQL's ``RETURNING id``)."""

    @abstractmethod
    def _json(self, value: dict[str, Any]) -> Any:
        """``value`` as the backend stores JSON (SQLite: text, PostgreSQL: JSONB)."""

    def select(self, query: str, args: Sequence[Any] = ()) -> list[Row]:
        """The rows of a read-only ``query`` (``?`` placeholders): for the pages' queries
        (:mod:`node.jobs.browse`), which are written once for every backend as well."""
        return self._rows(query, args)

    def execute(self, query: str, args: Sequence[Any] = ()) -> int:
        """One statement (``?`` placeholders) in a transaction of its own; rows changed."""
        return self._update(query, args)

    def execute_many(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """``query`` (``?`` placeholders) once for each of ``rows``, in one transaction: one
        commit (and, on PostgreSQL, one batch) instead of one per row."""
        if rows:
            self._update_all(query, rows)

    def reading(self, work: Callable[[Rows], T]) -> T:
        """``work`` given a way to run queries, on one connection where that matters."""
        return self._read(work)

    def _read(self, work: Callable[[Rows], T]) -> T:
        """``work`` given a way to run queries, all on one connection where that matters
        (PostgreSQL: one transaction instead of one pooled checkout per query)."""
        return work(self._rows)

    def open(self, key: str | None, sop_instance_uid: str | None, calling_ae: str | None,
             origin: str, options: dict[str, Any] | None = None,
             outcome: JobOutcome | None = None) -> int:
        now = time.time()
        state, code, reason = ("queued", None, None) if outcome is None else (
            outcome.state, outcome.code, outcome.reason)
        return self._insert(INSERT_JOB, (key, sop_instance_uid, calling_ae, origin,
                                         self._json(options) if options else None,
                                         state, code, reason, now, now))

    def started(self, job_ids: Sequence[int]) -> None:
        where, ids = self._ids(job_ids)
        self._update(f"UPDATE jobs SET state='processing', updated=? WHERE {where}"
                     " AND state='queued'", [time.time(), *ids])

    def requeued(self, job_id: int, reason: str) -> None:
        self._update("UPDATE jobs SET state='queued', reason=?, updated=? WHERE id=?",
                     (reason, time.time(), job_id))

    def job(self, job_id: int) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        return job_record(rows[0]) if rows else None

    def open_jobs(self) -> list[JobRecord]:
        return [job_record(r) for r in self._rows("SELECT * FROM jobs WHERE state IN"
                                                  " ('queued', 'processing') ORDER BY id")]

    def known_keys(self) -> set[str]:
        return {r["key"] for r in self._rows("SELECT key FROM jobs WHERE key IS NOT NULL")}

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        return [delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE state='pending' AND next_try<=?"
            " ORDER BY next_try, id LIMIT ?", (now, limit))]

    def delivered(self, delivery_id: int) -> None:
        self._update("UPDATE deliveries SET state='sent', attempts=attempts+1, reason=NULL,"
                     " updated=? WHERE id=?", (time.time(), delivery_id))

    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None:
        state = "failed" if next_try is None else "pending"
        self._update("UPDATE deliveries SET state=?, attempts=attempts+1, reason=?,"
                     " next_try=?, updated=? WHERE id=?",
                     (state, reason, next_try or 0, time.time(), delivery_id))

    def unsent_deliveries(self, job_id: int) -> int:
        return int(self._rows("SELECT COUNT(*) AS n FROM deliveries WHERE job_id=? AND"
                              " state!='sent'", (job_id,))[0]["n"])

    def key_needed(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM deliveries WHERE key=? AND state!='sent'"
                               " LIMIT 1", (key,)))

    def resend_failed(self, ids: Sequence[int] | None = None) -> int:
        now = time.time()
        query = ("UPDATE deliveries SET state='pending', attempts=0, next_try=?, updated=?"
                 " WHERE state='failed'")
        args: list[Any] = [now, now]
        if ids:
            where, listed = self._ids(ids)
            query += f" AND {where}"
            args += listed
        return self._update(query, args)

    def deliveries_of(self, job_id: int) -> list[Delivery]:
        return [delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE job_id=? ORDER BY id", (job_id,))]

    def failed_deliveries(self, ids: Sequence[int] | None = None) -> list[Delivery]:
        query = "SELECT * FROM deliveries WHERE state='failed'"
        args: list[Any] = []
        if ids:
            where, args = self._ids(ids)
            query += f" AND {where}"
        return [delivery(r) for r in self._rows(query + " ORDER BY id", args)]

    def counts(self) -> dict[str, int]:
        return self._read(_counts)

    def failed_document(self) -> dict[str, Any]:
        def work(rows: Rows) -> dict[str, Any]:
            jobs = [job_record(r) for r in rows("SELECT * FROM jobs WHERE state IN"
                                                " ('failed', 'skipped') ORDER BY id", ())]
            deliveries = [delivery(r) for r in rows(
                "SELECT * FROM deliveries WHERE state='failed' ORDER BY id", ())]
            return failed_document(_counts(rows), jobs, deliveries)

        return self._read(work)
