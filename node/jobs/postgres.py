"""Job records in PostgreSQL: the one database every role shares in a scaled deployment.

:class:`PostgresJobRecords` is :class:`~node.jobs.records.JobRecords` with the semantics of
:class:`~node.jobs.records.SqliteJobRecords`, for receivers, workers and senders on several
machines at once. Each method is one short transaction on a connection of a pool
(``psycopg_pool``), so threads share it. A connection found broken is replaced (a server
restarted), and while the server cannot be reached a method raises
:class:`RecordsUnavailableError` within the pool's timeout instead of hanging: the fronts
answer "busy, try later" (0xA700 / 503) as for a full disk.

The schema is versioned (table ``schema_version``, row ``job_records``) and :data:`MIGRATIONS`
take a database to :data:`SCHEMA_VERSION` at connect, under an advisory lock, so processes
starting together create it once. Passwords never leave this module: :func:`redact`.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from node.core.errors import OutOfResourcesError
from node.jobs.model import Delivery, JobOutcome, JobRecord, ResultObject, failed_document
from node.jobs.sqlite import SchemaError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[DictRow]

SCHEMA_VERSION = 1
#: The row of ``schema_version`` these tables own (other parts may share the database).
COMPONENT = "job_records"
#: ``pg_advisory_xact_lock`` key held while the schema is created or migrated.
SCHEMA_LOCK = 0x63786A6F62  # "cxjob"
#: First key of the ``pg_advisory_xact_lock(int, int)`` locks of (destination, UID) pairs.
DELIVERY_LOCKS = 0x63786476  # "cxdv"
#: Transactions lost to a deadlock or a serialization failure are run again this often.
RETRIES = 3

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id BIGSERIAL PRIMARY KEY,
    key TEXT UNIQUE,
    sop_instance_uid TEXT,
    calling_ae TEXT,
    origin TEXT NOT NULL,
    options JSONB,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated);
CREATE TABLE IF NOT EXISTS deliveries (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    destination TEXT NOT NULL,
    key TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try DOUBLE PRECISION NOT NULL,
    reason TEXT,
    updated DOUBLE PRECISION NOT NULL,
    UNIQUE(destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_try);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id, state);
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(key, state)
"""


class RecordsUnavailableError(OutOfResourcesError):
    """The job records' database cannot be reached now (down, restarting, unreachable):
    try again later. The message names the URL without its password."""


def redact(url: str) -> str:
    """``url`` without its password (user, host, port and database kept), for messages."""
    parts = urlsplit(url)
    if not parts.scheme:  # a "host=... password=..." string: keep only what is not secret
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "<unparsable connection string>"
        params.pop("password", None)
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}@{hostport}" if at and userinfo else hostport
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _create_v1(conn: Conn) -> None:
    """Schema 1: ``jobs`` and ``deliveries`` as in the SQLite database (an empty database
    is schema 0)."""
    for statement in SCHEMA_V1.split(";"):
        conn.execute(statement)


#: ``MIGRATIONS[n]`` takes a database of schema ``n`` to ``n + 1``, in the transaction that
#: holds :data:`SCHEMA_LOCK`.
MIGRATIONS: list[Callable[[Conn], None]] = [_create_v1]


def _migrate(conn: Conn, where: str) -> None:
    """Create or migrate the schema, once however many processes start at the same time."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version"
                     " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version WHERE component=%s",
                           (COMPONENT,)).fetchone()
        version = int(row["version"]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaError(f"job records at {where} have schema {version}; this release "
                              f"reads up to {SCHEMA_VERSION}: upgrade cxr-node")
        for step in range(version, SCHEMA_VERSION):
            logger.info("job records at %s: schema %d -> %d", where, step, step + 1)
            MIGRATIONS[step](conn)
        if version != SCHEMA_VERSION:
            conn.execute("INSERT INTO schema_version(component, version) VALUES (%s, %s)"
                         " ON CONFLICT(component) DO UPDATE SET version=excluded.version",
                         (COMPONENT, SCHEMA_VERSION))


def _lock_key(destination: str, sop_instance_uid: str) -> int:
    """A (destination, UID) pair as a signed 32-bit advisory lock key, the same everywhere."""
    key = zlib.crc32(f"{destination}\0{sop_instance_uid}".encode())
    return key - 2**32 if key >= 2**31 else key


def _job(row: DictRow) -> JobRecord:
    return JobRecord(row["id"], row["key"], row["sop_instance_uid"], row["calling_ae"],
                     row["origin"], row["state"], row["code"], row["reason"],
                     dict(row["options"]) if row["options"] else {},
                     row["created"], row["updated"])


def _delivery(row: DictRow) -> Delivery:
    return Delivery(row["id"], row["job_id"], row["destination"], row["key"],
                    row["sop_instance_uid"], row["sop_class_uid"], row["transfer_syntax_uid"],
                    row["state"], row["attempts"], row["reason"])


class PostgresJobRecords:
    """:class:`~node.jobs.records.JobRecords` in PostgreSQL, shared by threads and processes.

    ``PostgresJobRecords(url)`` (or :meth:`connect`) reaches the server, creates or migrates
    the schema and opens a pool of ``min_size``..``max_size`` connections; ``timeout`` seconds
    bound both connecting and the wait for a connection in a call. :meth:`disconnect` when
    done (``close`` is the protocol's: it closes a job), or use it as a context manager.
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8,
                 timeout: float = 10.0) -> None:
        self.where = redact(url)
        self._password = psycopg.conninfo.conninfo_to_dict(url).get("password")
        connect_timeout = max(1, round(timeout))
        try:
            with psycopg.connect(url, connect_timeout=connect_timeout,
                                 row_factory=dict_row) as conn:
                _migrate(conn, self.where)
        except psycopg.OperationalError as e:
            raise self._unavailable(e) from e
        # reconnect_timeout bounds each background reconnection (with its growing back-off)
        # so that a server back after a long outage is used within seconds, not minutes
        self.pool: ConnectionPool[Conn] = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
            kwargs={"connect_timeout": connect_timeout, "row_factory": dict_row,
                    "application_name": "cxr-node"},
            check=ConnectionPool.check_connection, reconnect_timeout=max(timeout, 5.0),
            name=f"job records at {self.where}")
        try:
            self.pool.open(wait=True, timeout=timeout)
        except psycopg.OperationalError as e:
            self.pool.close()
            raise self._unavailable(e) from e
        logger.info("job records at %s (schema %d)", self.where, SCHEMA_VERSION)

    @classmethod
    def connect(cls, url: str, *, min_size: int = 1, max_size: int = 8,
                timeout: float = 10.0) -> PostgresJobRecords:
        """Job records at ``url`` (``postgresql://user:pass@host:port/db``), schema ready;
        :class:`RecordsUnavailableError` when the server cannot be reached."""
        return cls(url, min_size=min_size, max_size=max_size, timeout=timeout)

    def disconnect(self) -> None:
        """Close the pool's connections (again: nothing); later calls raise
        :class:`RecordsUnavailableError`."""
        self.pool.close()

    def __enter__(self) -> PostgresJobRecords:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def _unavailable(self, e: Exception) -> RecordsUnavailableError:
        reason = str(e).strip() or type(e).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return RecordsUnavailableError(f"job records at {self.where} unavailable: {reason}")

    def _transaction(self, work: Callable[[Conn], T]) -> T:
        """``work`` in one transaction (committed when it returns), run again after a
        deadlock; a server out of reach is :class:`RecordsUnavailableError`."""
        for attempt in range(1, RETRIES + 1):
            try:
                with self.pool.connection() as conn:
                    return work(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure) as e:
                if attempt == RETRIES:
                    raise self._unavailable(e) from e
                logger.info("job records: %s, running the transaction again", e)
            except psycopg.OperationalError as e:
                raise self._unavailable(e) from e
        raise AssertionError("unreachable")

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[DictRow]:
        return self._transaction(lambda c: c.execute(query, args).fetchall())

    def _update(self, query: str, args: Sequence[Any] = ()) -> int:
        return self._transaction(lambda c: c.execute(query, args).rowcount)

    def open(self, key: str | None, sop_instance_uid: str | None, calling_ae: str | None,
             origin: str, options: dict[str, Any] | None = None,
             outcome: JobOutcome | None = None) -> int:
        now = time.time()
        state, code, reason = ("queued", None, None) if outcome is None else (
            outcome.state, outcome.code, outcome.reason)
        [row] = self._rows(
            "INSERT INTO jobs(key, sop_instance_uid, calling_ae, origin, options, state, code,"
            " reason, created, updated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
            (key, sop_instance_uid, calling_ae, origin, Jsonb(options) if options else None,
             state, code, reason, now, now))
        return int(row["id"])

    def started(self, job_ids: Sequence[int]) -> None:
        self._update("UPDATE jobs SET state='processing', updated=%s WHERE id = ANY(%s)"
                     " AND state='queued'", (time.time(), list(job_ids)))

    def close(self, job_id: int, outcome: JobOutcome,
              deliveries: Sequence[tuple[str, ResultObject]] = ()) -> None:
        now = time.time()
        # rows in the order given (delivery ids, hence the sending order, as SQLite's); their
        # (destination, UID) pairs locked first in one order, so that two closes sharing
        # results (the same source sent twice) wait for each other instead of deadlocking
        rows = [(job_id, destination, obj.key, obj.sop_instance_uid, obj.sop_class_uid,
                 obj.transfer_syntax_uid, now, now) for destination, obj in deliveries]
        locks = [(DELIVERY_LOCKS, k) for k in sorted({_lock_key(r[1], r[3]) for r in rows})]

        def work(c: Conn) -> None:
            if locks:
                c.cursor().executemany("SELECT pg_advisory_xact_lock(%s, %s)", locks)
            c.execute("UPDATE jobs SET state=%s, code=%s, reason=%s, updated=%s WHERE id=%s",
                      (outcome.state, outcome.code, outcome.reason, now, job_id))
            if rows:
                # a re-sent source gives the same result UIDs: deliver again, no new row
                c.cursor().executemany(
                    "INSERT INTO deliveries(job_id, destination, key, sop_instance_uid,"
                    " sop_class_uid, transfer_syntax_uid, state, next_try, updated)"
                    " VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s)"
                    " ON CONFLICT(destination, sop_instance_uid) DO UPDATE SET"
                    " job_id=excluded.job_id, key=excluded.key,"
                    " sop_class_uid=excluded.sop_class_uid,"
                    " transfer_syntax_uid=excluded.transfer_syntax_uid, state='pending',"
                    " attempts=0, next_try=excluded.next_try, reason=NULL,"
                    " updated=excluded.updated", rows)

        self._transaction(work)

    def requeued(self, job_id: int, reason: str) -> None:
        self._update("UPDATE jobs SET state='queued', reason=%s, updated=%s WHERE id=%s",
                     (reason, time.time(), job_id))

    def job(self, job_id: int) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE id=%s", (job_id,))
        return _job(rows[0]) if rows else None

    def open_jobs(self) -> list[JobRecord]:
        return [_job(r) for r in self._rows("SELECT * FROM jobs WHERE state IN"
                                            " ('queued', 'processing') ORDER BY id")]

    def known_keys(self) -> set[str]:
        return {r["key"] for r in self._rows("SELECT key FROM jobs WHERE key IS NOT NULL")}

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        return [_delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE state='pending' AND next_try<=%s"
            " ORDER BY next_try, id LIMIT %s", (now, limit))]

    def delivered(self, delivery_id: int) -> None:
        self._update("UPDATE deliveries SET state='sent', attempts=attempts+1, reason=NULL,"
                     " updated=%s WHERE id=%s", (time.time(), delivery_id))

    def delivery_failed(self, delivery_id: int, reason: str, next_try: float | None) -> None:
        state = "failed" if next_try is None else "pending"
        self._update("UPDATE deliveries SET state=%s, attempts=attempts+1, reason=%s,"
                     " next_try=%s, updated=%s WHERE id=%s",
                     (state, reason, next_try or 0, time.time(), delivery_id))

    def unsent_deliveries(self, job_id: int) -> int:
        return int(self._rows("SELECT COUNT(*) AS n FROM deliveries WHERE job_id=%s AND"
                              " state!='sent'", (job_id,))[0]["n"])

    def key_needed(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM deliveries WHERE key=%s AND state!='sent'"
                               " LIMIT 1", (key,)))

    def resend_failed(self, ids: Sequence[int] | None = None) -> int:
        now = time.time()
        query = ("UPDATE deliveries SET state='pending', attempts=0, next_try=%s, updated=%s"
                 " WHERE state='failed'")
        args: list[Any] = [now, now]
        if ids:
            query += " AND id = ANY(%s)"
            args.append(list(ids))
        return self._update(query, args)

    def deliveries_of(self, job_id: int) -> list[Delivery]:
        return [_delivery(r) for r in self._rows(
            "SELECT * FROM deliveries WHERE job_id=%s ORDER BY id", (job_id,))]

    def failed_deliveries(self, ids: Sequence[int] | None = None) -> list[Delivery]:
        query = "SELECT * FROM deliveries WHERE state='failed'"
        args: list[list[int]] = []
        if ids:
            query += " AND id = ANY(%s)"
            args = [list(ids)]
        return [_delivery(r) for r in self._rows(query + " ORDER BY id", args)]

    @staticmethod
    def _counts(c: Conn) -> dict[str, int]:
        out = {f"jobs_{r['state']}": r["n"] for r in
               c.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
        out.update({f"deliveries_{r['state']}": r["n"] for r in
                    c.execute("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")})
        return out

    def counts(self) -> dict[str, int]:
        return self._transaction(self._counts)

    def failed_document(self) -> dict[str, Any]:
        def work(c: Conn) -> dict[str, Any]:
            jobs = [_job(r) for r in c.execute("SELECT * FROM jobs WHERE state IN"
                                               " ('failed', 'skipped') ORDER BY id")]
            deliveries = [_delivery(r) for r in c.execute(
                "SELECT * FROM deliveries WHERE state='failed' ORDER BY id")]
            return failed_document(self._counts(c), jobs, deliveries)

        return self._transaction(work)
