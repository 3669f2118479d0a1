"""A throwaway PostgreSQL server: the job records of a scaled node in ``cxr-node bench`` and
the tests' session-wide ``postgres`` fixture (``tests/postgres_server.py``).

``initdb`` into a temporary folder and ``postgres`` on a free loopback port, a child of the
process that starts it (not ``pg_ctl``, whose server leaves the process group: a test run or
bench killed as a group would leave it running): no system service, no state outside the
folder. PostgreSQL refuses to run as root (as the tests run here and in CI), so as root its
programs run as the ``postgres`` system user (made by the Debian package), with ``setpriv``
(which execs, so the child is the server itself), in a folder that user owns. Login is by
password (scram), so the URLs handed out carry one, as a deployment's would.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from node.bench.harness import free_port, stop_process, wait_until

logger = logging.getLogger(__name__)

#: Seconds to wait for the server to take connections (or to stop).
READY_TIMEOUT_S = 60
SYSTEM_USER = "postgres"


def postgres_bindir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: on ``PATH``, else Debian's (not on PATH
    there)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def postgres_missing() -> str | None:
    """Why a throwaway PostgreSQL cannot be started here, else None."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root, and there is no {SYSTEM_USER!r} user to run PostgreSQL as"
    return None


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
        self.process: subprocess.Popen | None = None
        self._as_postgres = os.geteuid() == 0
        atexit.register(self.remove)  # a session ended without its teardown
        if self._as_postgres:  # root's mkdtemp is 0700: hand the folder to PostgreSQL's user
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            self._initdb()
        except BaseException:
            self.remove()
            raise

    def _command(self, *args: str) -> list[str]:
        """A PostgreSQL program's command line (as ``postgres`` when we are root)."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
                       "--init-groups", "--", *command]
        return command

    def _run(self, *args: str, timeout: float = READY_TIMEOUT_S) -> str:
        """Run a PostgreSQL program to its end; its output."""
        done = subprocess.run(self._command(*args), capture_output=True, text=True,
                              timeout=timeout,
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
                      "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                      "--no-sync")  # initdb's own flush only: the server keeps fsync=on
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
        return self.process is not None and self.process.poll() is None

    def start(self) -> float:
        """Start the server and wait until it takes connections; the seconds it took."""
        if self.running():
            return 0.0
        t0 = time.monotonic()
        with self.log.open("a") as log:
            self.process = subprocess.Popen(self._command("postgres", "-D", str(self.data)),
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            wait_until(self.ready, READY_TIMEOUT_S, 0.05, f"PostgreSQL on port {self.port}",
                       self.process)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}\n{self.server_log()}") from e
        took = time.monotonic() - t0
        logger.info("PostgreSQL on port %d ready in %.2f s", self.port, took)
        return took

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server (``SIGINT``: fast shutdown, clients cut off, the data kept)."""
        if self.process is not None:
            stop_process(self.process, sig, READY_TIMEOUT_S)
            self.process = None

    def kill(self) -> None:
        """Stop as a crash would (``SIGQUIT``: immediate, no checkpoint; the next start
        recovers)."""
        self.stop(signal.SIGQUIT)

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop and delete the folder."""
        try:
            self.stop(signal.SIGQUIT)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
