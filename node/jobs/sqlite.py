"""The embedded job database: one SQLite file (WAL) in the spool, versioned, with migrations.

It backs both :class:`~node.jobs.queue.SqliteJobQueue` and
:class:`~node.jobs.records.SqliteJobRecords`; each keeps to its own tables, so either can be
replaced by a shared engine (a broker, a database server) without the other noticing.

``PRAGMA user_version`` is the schema version. :data:`MIGRATIONS` take a file written by an
earlier release to the current one at open, in one transaction each: a spool is taken over
by a newer node with nothing lost.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom

from node.jobs.storage import SpoolFullError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: SQLite's result code for a full disk ("database or disk is full").
SQLITE_FULL = 13

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE,
    sop_instance_uid TEXT,
    calling_ae TEXT,
    origin TEXT NOT NULL,
    options TEXT,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    key TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    reason TEXT,
    updated REAL NOT NULL,
    UNIQUE(destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id, state);
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(key, state);
CREATE TABLE IF NOT EXISTS queue (
    job_id INTEGER PRIMARY KEY,
    ticket TEXT NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_ready ON queue(leased, available_at, job_id);
"""

#: Schema 2: what the operators' page (/ui) reads: filters' indexes, each done job's view
#: (findings, explanation, result UIDs) and its findings per day for the model monitor.
SCHEMA_V2 = """
CREATE INDEX IF NOT EXISTS jobs_code ON jobs(code, id);
CREATE INDEX IF NOT EXISTS jobs_calling_ae ON jobs(calling_ae, id);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
CREATE TABLE IF NOT EXISTS job_views (
    job_id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_views_created ON job_views(created);
CREATE TABLE IF NOT EXISTS job_findings (
    job_id INTEGER NOT NULL,
    label TEXT NOT NULL,
    day INTEGER NOT NULL,
    probability REAL NOT NULL,
    positive INTEGER NOT NULL,
    PRIMARY KEY (job_id, label)
);
CREATE INDEX IF NOT EXISTS job_findings_day ON job_findings(day, label);
"""


class SchemaError(RuntimeError):
    """The job database is of a newer release than this one, or cannot be migrated."""


class Database:
    """One SQLite file shared by threads (a connection each), opened at :data:`SCHEMA_VERSION`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._migrate()

    def connection(self) -> sqlite3.Connection:
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error. A full disk
        (``SQLITE_FULL``, in a statement or at the commit) raises
        :class:`~node.jobs.storage.SpoolFullError`: out of resources, nothing written."""
        db = self.connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) == SQLITE_FULL or \
                    "database or disk is full" in str(e):
                raise SpoolFullError(errno.ENOSPC, f"job database full: {e}") from e
            raise

    def version(self) -> int:
        return int(self.connection().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            legacy = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'"
                                ).fetchone() is not None
            if version > SCHEMA_VERSION:
                raise SchemaError(f"job database {self.path} has schema {version}; this "
                                  f"release reads up to {SCHEMA_VERSION}: upgrade cxr-node")
            if version == 0 and not legacy:  # a new file
                for statement in (SCHEMA + SCHEMA_V2).split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                return
            for step in range(version, SCHEMA_VERSION):
                logger.info("migrating job database schema %d -> %d", step, step + 1)
                MIGRATIONS[step](db, self.path.parent)
                db.execute(f"PRAGMA user_version={step + 1}")


def _key(path: str) -> str:
    """A storage key (``AREA/NAME``) from an absolute spool path of schema 0."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def _header(root: Path, key: str) -> tuple[str, str]:
    """SOP Class and Transfer Syntax UIDs of a stored result ('' when the file is gone)."""
    try:
        ds = pydicom.dcmread(root / key, stop_before_pixels=True,
                             specific_tags=["SOPClassUID"])
        return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
        return "", ""


def _v0_to_v1(db: sqlite3.Connection, root: Path) -> None:
    """Schema 0 (releases up to cad69d8): absolute paths, reasons as ``"code: reason"``, the
    queue as the jobs' state. To keys, split reasons, a queue of its own, result headers on
    the delivery records."""
    db.execute("ALTER TABLE jobs RENAME TO jobs_v0")
    db.execute("ALTER TABLE deliveries RENAME TO deliveries_v0")
    for name in ("jobs_state", "deliveries_due"):
        db.execute(f"DROP INDEX IF EXISTS {name}")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for r in db.execute("SELECT * FROM jobs_v0 ORDER BY id").fetchall():
        code, reason = None, r["reason"]
        if r["state"] in ("skipped", "failed") and reason and ": " in reason:
            code, _, reason = reason.partition(": ")
        state = "queued" if r["state"] == "processing" else r["state"]
        options = json.loads(r["options"]) if r["options"] else {}
        db.execute("INSERT INTO jobs(id, key, sop_instance_uid, calling_ae, origin, options,"
                   " state, code, reason, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (r["id"], _key(r["path"]), r["sop_instance_uid"], r["calling_ae"],
                    r["origin"], json.dumps(options) if options else None, state, code,
                    reason, r["created"], r["updated"]))
        if state == "queued":
            ticket = {"job_id": r["id"], "key": _key(r["path"]),
                      "sop_instance_uid": r["sop_instance_uid"], "calling_ae": r["calling_ae"],
                      "origin": r["origin"], "options": options, "attempt": 1}
            db.execute("INSERT INTO queue(job_id, ticket, available_at) VALUES (?, ?, 0)",
                       (r["id"], json.dumps(ticket)))
    for r in db.execute("SELECT * FROM deliveries_v0 ORDER BY id").fetchall():
        key = _key(r["path"])
        sop_class, syntax = _header(root, key) if r["state"] != "sent" else ("", "")
        db.execute("INSERT INTO deliveries(id, job_id, destination, key, sop_instance_uid,"
                   " sop_class_uid, transfer_syntax_uid, state, attempts, next_try, reason,"
                   " updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (r["id"], r["job_id"], r["destination"], key, r["sop_instance_uid"],
                    sop_class, syntax, r["state"], r["attempts"], r["next_try"], r["reason"],
                    r["updated"]))
    db.execute("DROP TABLE deliveries_v0")
    db.execute("DROP TABLE jobs_v0")


def _v1_to_v2(db: sqlite3.Connection, root: Path) -> None:
    """Schema 1 (releases up to issue #18): the tables and indexes of the operators' page;
    jobs closed before have no view (the page says so)."""
    for statement in SCHEMA_V2.split(";"):
        if statement.strip():
            db.execute(statement)


#: ``MIGRATIONS[n]`` takes a database of schema ``n`` to ``n + 1`` (the spool root given).
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [_v0_to_v1, _v1_to_v2]
