"""Job records in PostgreSQL: the one database every role shares in a scaled deployment.

:class:`PostgresJobRecords` is :class:`~node.jobs.records.JobRecords` with the semantics of
:class:`~node.jobs.records.SqliteJobRecords`, for receivers, workers and senders on several
machines at once; the queries both share are :class:`~node.jobs.sql.SqlJobRecords`', their
``?`` placeholders turned into psycopg's ``%s`` here. Each method is one short transaction on
a connection of a pool (``psycopg_pool``), so threads share it. A connection found broken is
replaced (a server restarted), and while the server cannot be reached a method raises
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
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from node.core.errors import OutOfResourcesError
from node.jobs.model import JobOutcome, ResultObject
from node.jobs.sql import CLOSE_JOB, UPSERT_DELIVERY, Rows, SqlJobRecords
from node.jobs.sqlite import SchemaError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[DictRow]

SCHEMA_VERSION = 2
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


def _v1_to_v2(conn: Conn) -> None:
    """Schema 2: the operators' page's tables and indexes, as SQLite's schema 2."""
    from node.jobs.sqlite import SCHEMA_V2

    for statement in SCHEMA_V2.split(";"):
        if statement.strip():
            conn.execute(statement.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
                         .replace("job_id INTEGER", "job_id BIGINT")
                         .replace("REAL", "DOUBLE PRECISION"))


#: ``MIGRATIONS[n]`` takes a database of schema ``n`` to ``n + 1``, in the transaction that
#: holds :data:`SCHEMA_LOCK`.
MIGRATIONS: list[Callable[[Conn], None]] = [_create_v1, _v1_to_v2]


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


def _sql(query: str) -> str:
    """A statement of :mod:`node.jobs.sql` (``?`` placeholders) in psycopg's ``%s``."""
    return query.replace("?", "%s")


def _lock_key(destination: str, sop_instance_uid: str) -> int:
    """A (destination, UID) pair as a signed 32-bit advisory lock key, the same everywhere."""
    key = zlib.crc32(f"{destination}\0{sop_instance_uid}".encode())
    return key - 2**32 if key >= 2**31 else key


class PostgresJobRecords(SqlJobRecords):
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
        return self._transaction(lambda c: c.execute(_sql(query), args).fetchall())

    def _update(self, query: str, args: Sequence[Any] = ()) -> int:
        return self._transaction(lambda c: c.execute(_sql(query), args).rowcount)

    def _update_all(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        self._transaction(lambda c: c.cursor().executemany(_sql(query), rows))

    def _ids(self, ids: Iterable[int]) -> tuple[str, list[Any]]:
        return "id = ANY(?)", [list(ids)]

    def _read(self, work: Callable[[Rows], T]) -> T:
        return self._transaction(
            lambda c: work(lambda query, args: c.execute(_sql(query), args).fetchall()))

    def _insert(self, query: str, args: Sequence[Any]) -> int:
        [row] = self._rows(query + " RETURNING id", args)
        return int(row["id"])

    def _json(self, value: dict[str, Any]) -> Jsonb:
        return Jsonb(value)

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
            c.execute(_sql(CLOSE_JOB),
                      (outcome.state, outcome.code, outcome.reason, now, job_id))
            if rows:
                c.cursor().executemany(_sql(UPSERT_DELIVERY), rows)

        self._transaction(work)
