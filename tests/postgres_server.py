"""A throwaway PostgreSQL server for the tests, and its session-wide ``postgres`` fixture.

``initdb`` into a temporary folder and ``pg_ctl start`` on a free loopback port, as an
ordinary process: no system service, no state outside the folder. PostgreSQL refuses to run
as root (as the tests do here and in CI), so as root its programs run as the ``postgres``
system user (made by the Debian package) in a folder that user owns. Login is by password
(scram), so the URLs the tests hand out carry one, as a deployment's would.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from node.bench.harness import free_port, wait_until

logger = logging.getLogger(__name__)

#: Seconds to wait for the server to take connections (or to stop).
READY_TIMEOUT_S = 60
SYSTEM_USER = "postgres"


def postgres_bindir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on ``PATH``, else Debian's (not on PATH there)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    """One PostgreSQL cluster in its own folder: ``url``, ``stop``/``start``, ``kill``,
    ``new_database``. ``start`` after ``stop`` or ``kill`` reuses the same data."""

    def __init__(self, bindir: Path, user: str = "cxr", password: str = "cxr-test-secret",
                 database: str = "cxr") -> None:
        self.bindir = bindir
        self.user, self.password, self.database = user, password, database
        self.root = Path(tempfile.mkdtemp(prefix="cxr-pg-"))
        self.data, self.sockets, self.log = (self.root / "data", self.root / "sock",
                                             self.root / "server.log")
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:  # root's mkdtemp is 0700: hand the folder to PostgreSQL's user
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
        except BaseException:
            self.remove()
            raise

    def _run(self, *args: str, timeout: float = READY_TIMEOUT_S) -> str:
        """Run a PostgreSQL program (as ``postgres`` when we are root); its output."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}\n{self.server_log()}")
        return done.stdout

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._as_postgres:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        self._write(pwfile, self.password + "\n")
        self.sockets.mkdir()
        self._write(self.log, "")
        if self._as_postgres:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.sockets}'\n")
        self.start()
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    @property
    def url(self) -> str:
        """``postgresql://USER:PASS@127.0.0.1:PORT/DB`` of the default database."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        """An autocommit connection to the ``postgres`` database (to create databases)."""
        return psycopg.connect(self.url_of("postgres"), autocommit=True, connect_timeout=5)

    def new_database(self, name: str) -> str:
        """A fresh, empty database ``name`` (dropped first if there is one); its URL."""
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_of(name)

    def ready(self) -> bool:
        """Whether the server takes connections now."""
        try:
            with psycopg.connect(self.url_of("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> float:
        """Start the server and wait until it takes connections; the seconds it took."""
        t0 = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", str(READY_TIMEOUT_S), "start")
        wait_until(self.ready, READY_TIMEOUT_S, 0.05, f"PostgreSQL on port {self.port}")
        took = time.monotonic() - t0
        logger.info("PostgreSQL on port %d ready in %.2f s", self.port, took)
        return took

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected, the data kept)."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w",
                      "-t", str(READY_TIMEOUT_S), "stop")

    def kill(self) -> None:
        """Stop as a crash would (``immediate``: no checkpoint; the next start recovers)."""
        self.stop("immediate")

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop and delete the folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session. Missing PostgreSQL skips, but fails in CI
    (which installs it); use ``postgres.new_database(name)`` to keep tests apart."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (initdb) is not installed although CI should have "
                        "installed it")
        pytest.skip("PostgreSQL (initdb) is not installed (.ci/run installs it)")
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        server.remove()
