"""The job queue behind a small interface; SQLite (WAL, in the spool) is the embedded default.

A *job* is one received object to process; a *delivery* is one result object for one
destination. States: jobs ``queued`` -> ``processing`` -> ``done`` | ``skipped`` | ``failed``;
deliveries ``pending`` -> ``sent`` | ``failed`` (re-sendable).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    calling_ae TEXT,
    origin TEXT NOT NULL,
    options TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    reason TEXT,
    updated REAL NOT NULL,
    UNIQUE(destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);
"""


@dataclass(frozen=True)
class Job:
    id: int
    path: str
    sop_instance_uid: str | None
    calling_ae: str | None
    origin: str
    state: str
    reason: str | None
    options: dict | None = None


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    destination: str
    path: str
    sop_instance_uid: str
    state: str
    attempts: int
    reason: str | None


class JobQueue(Protocol):
    """What the node needs of a queue (a distributed engine can implement it later)."""

    def enqueue(self, path: str, sop_instance_uid: str | None, calling_ae: str | None,
                origin: str, options: dict | None = None) -> int: ...
    def claim(self, limit: int) -> list[Job]: ...
    def finish(self, job_id: int, state: str, reason: str | None = None,
               deliveries: Sequence[tuple[str, str, str]] = ()) -> None: ...
    def due_deliveries(self, now: float, limit: int) -> list[Delivery]: ...
    def delivered(self, delivery_id: int) -> None: ...
    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def requeue(self, job_id: int, reason: str) -> None:
        """Put a claimed job back (a transient problem such as a full outbox)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='queued', reason=?, updated=? WHERE id=?",
                       (reason, time.time(), job_id))

    def path_needed(self, path: str) -> bool:
        """Whether a delivery not yet sent still needs the file at ``path``."""
        row = self._db().execute("SELECT 1 FROM deliveries WHERE path=? AND state!='sent'"
                                 " LIMIT 1", (path,)).fetchone()
        return row is not None

    def recover(self) -> int: ...


class SqliteQueue:
    """:class:`JobQueue` on SQLite; safe to share between threads (one connection each)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def enqueue(self, path: str, sop_instance_uid: str | None, calling_ae: str | None,
                origin: str, options: dict | None = None) -> int:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs(path, sop_instance_uid, calling_ae, origin, options, state,"
                " created, updated) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                (path, sop_instance_uid, calling_ae, origin,
                 json.dumps(options) if options else None, now, now))
            return int(cur.lastrowid)

    def known_paths(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT path FROM jobs")}

    def claim(self, limit: int) -> list[Job]:
        # A read first: a worker finding nothing must not take the write lock that every
        # C-STORE and upload needs to be acknowledged.
        if self._db().execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone() \
                is None:
            return []
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY id LIMIT ?",
                              (limit,)).fetchall()
            if rows:
                db.execute(
                    f"UPDATE jobs SET state='processing', updated=? WHERE id IN "
                    f"({','.join('?' * len(rows))})", (time.time(), *[r["id"] for r in rows]))
        return [_job(r, "processing") for r in rows]

    def finish(self, job_id: int, state: str, reason: str | None = None,
               deliveries: Sequence[tuple[str, str, str]] = ()) -> None:
        """Close a job and, in the same transaction, add its (destination, path, uid) items."""
        if state not in ("done", "skipped", "failed"):
            raise ValueError(f"job state {state!r}")
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, reason=?, updated=? WHERE id=?",
                       (state, reason, now, job_id))
            for destination, path, uid in deliveries:
                # a re-sent source gives the same result UIDs: deliver again, no new row
                db.execute(
                    "INSERT INTO deliveries(job_id, destination, path, sop_instance_uid, state,"
                    " next_try, updated) VALUES (?, ?, ?, ?, 'pending', ?, ?)"
                    " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET"
                    " job_id=excluded.job_id, path=excluded.path, state='pending', attempts=0,"
                    " next_try=excluded.next_try, reason=NULL, updated=excluded.updated",
                    (job_id, destination, path, uid, now, now))

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        rows = self._db().execute(
            "SELECT * FROM deliveries WHERE state='pending' AND next_try<=? ORDER BY next_try, id"
            " LIMIT ?", (now, limit)).fetchall()
        return [_delivery(r) for r in rows]

    def delivered(self, delivery_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state='sent', attempts=attempts+1, reason=NULL,"
                       " updated=? WHERE id=?", (time.time(), delivery_id))

    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None:
        """Record a failed attempt: retry at ``next_try``, or give up (``None``)."""
        state = "failed" if next_try is None else "pending"
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state=?, attempts=attempts+1, reason=?,"
                       " next_try=?, updated=? WHERE id=?",
                       (state, reason, next_try or 0, time.time(), delivery_id))

    def unsent_deliveries(self, job_id: int) -> int:
        """How many deliveries of ``job_id`` are not confirmed yet."""
        row = self._db().execute("SELECT COUNT(*) FROM deliveries WHERE job_id=? AND"
                                 " state!='sent'", (job_id,)).fetchone()
        return int(row[0])

    def job(self, job_id: int) -> Job | None:
        row = self._db().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def counts(self) -> dict[str, int]:
        db = self._db()
        out = {f"jobs_{r[0]}": r[1] for r in
               db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        out.update({f"deliveries_{r[0]}": r[1] for r in
                    db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")})
        return out

    def failed(self) -> tuple[list[Job], list[Delivery]]:
        db = self._db()
        jobs = [_job(r) for r in db.execute("SELECT * FROM jobs WHERE state IN"
                                            " ('failed', 'skipped') ORDER BY id")]
        deliveries = [_delivery(r) for r in
                      db.execute("SELECT * FROM deliveries WHERE state='failed' ORDER BY id")]
        return jobs, deliveries

    def resend_failed(self, ids: Sequence[int] | None = None) -> int:
        """Put failed deliveries (all, or those ``ids``) back to pending; return how many."""
        now = time.time()
        with self._tx() as db:
            if ids:
                cur = db.execute(
                    f"UPDATE deliveries SET state='pending', attempts=0, next_try=?, updated=?"
                    f" WHERE state='failed' AND id IN ({','.join('?' * len(ids))})",
                    (now, now, *ids))
            else:
                cur = db.execute("UPDATE deliveries SET state='pending', attempts=0, next_try=?,"
                                 " updated=? WHERE state='failed'", (now, now))
            return cur.rowcount

    def requeue(self, job_id: int, reason: str) -> None:
        """Put a claimed job back (a transient problem such as a full outbox)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='queued', reason=?, updated=? WHERE id=?",
                       (reason, time.time(), job_id))

    def path_needed(self, path: str) -> bool:
        """Whether a delivery not yet sent still needs the file at ``path``."""
        row = self._db().execute("SELECT 1 FROM deliveries WHERE path=? AND state!='sent'"
                                 " LIMIT 1", (path,)).fetchone()
        return row is not None

    def recover(self) -> int:
        """After a crash: jobs left ``processing`` go back to ``queued``; return how many."""
        with self._tx() as db:
            cur = db.execute("UPDATE jobs SET state='queued', updated=? WHERE"
                             " state='processing'", (time.time(),))
            return cur.rowcount

    def depth(self) -> int:
        row = self._db().execute("SELECT COUNT(*) FROM jobs WHERE state IN"
                                 " ('queued', 'processing')").fetchone()
        return int(row[0])


def _job(row: sqlite3.Row, state: str | None = None) -> Job:
    options = json.loads(row["options"]) if row["options"] else None
    return Job(row["id"], row["path"], row["sop_instance_uid"], row["calling_ae"],
               row["origin"], state or row["state"], row["reason"], options)


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(row["id"], row["job_id"], row["destination"], row["path"],
                    row["sop_instance_uid"], row["state"], row["attempts"], row["reason"])
