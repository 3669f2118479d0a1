"""Real RabbitMQ brokers as ordinary child processes: one node (``cxr-node bench``) or a
cluster (the system tests).

The node's scale-out mode relies on quorum queues replicating across brokers, which only a
real multi-node cluster shows. Each node here has its own name, data and log folders, config,
loopback ports (AMQP, optional TLS, Erlang distribution) and the cluster has its own Erlang
cookie (a per-cluster HOME) and its own epmd on its own port, so neither a system RabbitMQ nor
the user's ``~/.erlang.cookie`` can interfere. Debian's ``/usr/sbin/rabbitmq-server`` switches
to the ``rabbitmq`` user; the real scripts under ``/usr/lib/rabbitmq/bin`` run as the caller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node.bench.harness import free_port, wait_port, wait_until

logger = logging.getLogger(__name__)

#: Debian's real scripts (``/usr/sbin/rabbitmq-server`` is a wrapper that switches user).
RABBITMQ_BIN = Path(os.environ.get("CXR_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
#: The user the cluster creates instead of ``guest`` (as production would).
USER = "cxr"
#: Seconds a node may take to boot (3 nodes share 2 cores in CI).
START_TIMEOUT = 120.0
#: Seconds a graceful stop may take before the node is killed.
STOP_TIMEOUT = 60.0


def rabbitmq_missing() -> str | None:
    """Why RabbitMQ cannot be started here (its scripts are not installed), else None."""
    for name in ("rabbitmq-server", "rabbitmqctl"):
        if not (RABBITMQ_BIN / name).is_file():
            return f"RabbitMQ is not installed ({RABBITMQ_BIN / name} is missing)"
    if shutil.which("epmd") is None:
        return "RabbitMQ is not installed (no epmd on PATH)"
    return None


#: A child that outlives its owner: its stdin gets "+PGID"/"-PGID" lines for the process groups
#: the cluster runs; at end of input (the owner stopped the cluster, or died without doing so:
#: a timeout's SIGKILL, a crash) it ends what is left, so no broker outlives a test run.
WATCHDOG = """
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
    for group in list(groups):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            groups.discard(group)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        time.sleep(0.2)
        for group in list(groups):
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                groups.discard(group)
"""


class RabbitCluster:
    """``size`` RabbitMQ nodes clustered on loopback, under ``folder``.

    Node 0 boots first (the seed); the others boot in parallel and join it on first boot
    through ``cluster_formation.classic_config``. A restarted node rejoins with its own data.
    """

    def __init__(self, folder: Path, size: int = 3, certificates: Path | None = None) -> None:
        self.folder = Path(folder)
        self.size = size
        #: a folder with ca.crt, server.crt and server.key (``system.peers.Certificates``)
        self.certificates = certificates
        token = secrets.token_hex(3)
        self.nodes = [f"cxrt{token}-{i}@localhost" for i in range(size)]
        self.password = secrets.token_hex(12)
        self.ports = [free_port() for _ in range(size)]
        self.tls_ports = [free_port() for _ in range(size)] if certificates else []
        self.dist_ports = [free_port() for _ in range(size)]
        self.epmd_port = free_port()
        self.home = self.folder / "home"
        self._procs: list[subprocess.Popen | None] = [None] * size
        self._epmd: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        #: seconds the last ``start()`` took, for the record
        self.start_seconds = 0.0

    # -- addresses ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.size)]

    def url(self, i: int) -> str:
        return f"amqp://{USER}:{self.password}@127.0.0.1:{self.ports[i]}/%2F"

    @property
    def tls_urls(self) -> list[str]:
        return [f"amqps://{USER}:{self.password}@127.0.0.1:{p}/%2F" for p in self.tls_ports]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RabbitCluster:
        """Start epmd and every node, and return once all run as one cluster."""
        began = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        for i in range(self.size):
            self._write_config(i)
        try:
            self._start_watchdog()
            self._start_epmd()
            self.start_node(0)
            with ThreadPoolExecutor(max(1, self.size - 1)) as pool:
                list(pool.map(self.start_node, range(1, self.size)))
            self._await_members(self.size)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        logger.info("RabbitMQ: %d node(s) running in %.1f s", self.size, self.start_seconds)
        return self

    def start_node(self, i: int) -> None:
        """Start node ``i`` (again: same data, it rejoins) and wait until it is running."""
        proc = self._procs[i]
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"{self.nodes[i]} is already running")
        self._kill(i)  # what is left of a node that ended by itself
        with open(self._dir(i) / "server.log", "ab") as out:
            self._procs[i] = proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")], env=self._env(i), cwd=self._dir(i),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._watch(f"+{proc.pid}")
        deadline = time.monotonic() + START_TIMEOUT
        try:
            # the port opens late in the boot (cheap to poll); await_startup then proves it is
            # this node that answers (a port is only free until someone else takes it)
            wait_port(self.ports[i], START_TIMEOUT, proc=proc)
            wait_until(lambda: self._started(i, deadline), max(1.0, deadline - time.monotonic()),
                       interval=0.5, what=f"{self.nodes[i]} to start", proc=proc)
        except (RuntimeError, TimeoutError) as e:
            self._kill(i)
            raise RuntimeError(f"{self.nodes[i]} did not start: {e}\n{self.log_tail(i)}") from e

    def stop_node(self, i: int) -> None:
        """Stop node ``i`` gracefully (``rabbitmqctl stop``): its data stays for start_node."""
        proc = self._procs[i]
        if proc is None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._ctl(i, "stop", timeout=STOP_TIMEOUT)
            proc.wait(STOP_TIMEOUT)
        self._kill(i)  # nothing left to kill unless the graceful stop failed

    def kill_node(self, i: int) -> None:
        """Crash node ``i``: SIGKILL to its beam and the rest of its process group."""
        self._kill(i)

    def stop(self) -> None:
        """Stop every node (SIGTERM: a graceful stop, all at once), then epmd; kill leftovers."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for i, proc in enumerate(self._procs):
            if proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            self._kill(i)
        if self._epmd is not None:
            self._epmd.kill()
            self._epmd.wait()
            self._watch(f"-{self._epmd.pid}")
            self._epmd = None
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # nothing left to watch: it exits
            self._watchdog.wait(10)
            self._watchdog = None

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------

    def running(self, i: int) -> bool:
        proc = self._procs[i]
        return proc is not None and proc.poll() is None

    def ctl(self, i: int, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE args`` against node ``i``; its stdout. RuntimeError if it fails."""
        return self._ctl(i, *args, timeout=timeout)

    def running_nodes(self, i: int | None = None) -> list[str]:
        """The cluster's running nodes as node ``i`` (default: the first running one) sees."""
        i = self._any_running() if i is None else i
        status = json.loads(self.ctl(i, "cluster_status", "--formatter", "json"))
        return sorted(status["running_nodes"])

    def queue_info(self, name: str, vhost: str = "/") -> dict:
        """Counts, type, members and leader of queue ``name`` (asked of a running node)."""
        columns = ("name", "messages", "messages_ready", "messages_unacknowledged", "type",
                   "durable", "members", "online", "leader", "arguments")
        out = self.ctl(self._any_running(), "list_queues", "-p", vhost, *columns,
                       "--formatter", "json")
        for row in json.loads(out):
            if row["name"] == name:
                return row
        raise KeyError(f"no queue {name!r} in vhost {vhost!r}")

    def log_tail(self, i: int, lines: int = 40) -> str:
        """The end of node ``i``'s console output and log, for error messages."""
        parts = []
        for path in (self._dir(i) / "server.log", self._dir(i) / "log" / f"{self.nodes[i]}.log"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no log for {self.nodes[i]})"

    # -- internals ---------------------------------------------------------------------------

    def _dir(self, i: int) -> Path:
        return self.folder / f"node{i}"

    def _write_config(self, i: int) -> None:
        d = self._dir(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("# empty: keeps /etc/rabbitmq/rabbitmq-env.conf out\n")
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.ports[i]}",
            f"default_user = {USER}",
            f"default_pass = {self.password}",
            "log.console = false",
            "log.file.level = info",
            # the seed lists nobody (it starts alone); the others find and join the seed
            "cluster_formation.peer_discovery_backend = classic_config",
        ]
        if i > 0:
            lines.append(f"cluster_formation.classic_config.nodes.1 = {self.nodes[0]}")
        if self.certificates is not None:
            c = self.certificates
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_ports[i]}",
                f"ssl_options.cacertfile = {c / 'ca.crt'}",
                f"ssl_options.certfile = {c / 'server.crt'}",
                f"ssl_options.keyfile = {c / 'server.key'}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_", "ERLANG_"))}
        env.update(HOME=str(self.home), ERL_EPMD_PORT=str(self.epmd_port),
                   ERL_EPMD_ADDRESS="127.0.0.1", LC_ALL="C.UTF-8", LANG="C.UTF-8")
        return env

    def _env(self, i: int) -> dict[str, str]:
        d = self._dir(i)
        env = self._base_env()
        env.update(
            RABBITMQ_NODENAME=self.nodes[i],
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_ports[i]),
            # several nodes share few cores: unbound schedulers, distribution on loopback only
            RABBITMQ_SCHEDULER_BIND_TYPE="u",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _ctl(self, i: int, *args: str, timeout: float = 60) -> str:
        env = self._base_env()
        env["RABBITMQ_CONF_ENV_FILE"] = str(self._dir(i) / "rabbitmq-env.conf")
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodes[i], *args],
                              env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.nodes[i]} {' '.join(args)} exited with "
                               f"{done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def _started(self, i: int, deadline: float) -> bool:
        wait = max(1, int(deadline - time.monotonic()))
        try:
            self._ctl(i, "await_startup", "--timeout", str(wait), timeout=wait + 15)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False  # not registered yet (or not this node): ask again
        return True

    def _start_watchdog(self) -> None:
        with open(self.folder / "watchdog.log", "ab") as log:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, text=True)

    def _watch(self, line: str) -> None:
        """Tell the watchdog a process group to end (+PGID) or that it has ended (-PGID)."""
        if self._watchdog is not None and self._watchdog.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ValueError):
                self._watchdog.stdin.write(line + "\n")
                self._watchdog.stdin.flush()

    def _start_epmd(self) -> None:
        """The cluster's own epmd on its own port: nodes find it there and start no other."""
        with open(self.folder / "epmd.log", "ab") as log:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._watch(f"+{self._epmd.pid}")
        wait_port(self.epmd_port, 10, proc=self._epmd)

    def _kill(self, i: int) -> None:
        """SIGKILL to node ``i``'s process group; returns once none of it is left running."""
        proc = self._procs[i]
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # the shell is gone at once; the beam (its sockets, its epmd entry) a moment later
        wait_until(lambda: not _group_alive(proc.pid), 30, interval=0.05,
                   what=f"{self.nodes[i]} to die")
        self._watch(f"-{proc.pid}")
        self._procs[i] = None  # its pid may be reused: never signal it again

    def _any_running(self) -> int:
        for i in range(self.size):
            if self.running(i):
                return i
        raise RuntimeError("no RabbitMQ node is running")

    def _await_members(self, count: int, timeout: float = 60) -> list[str]:
        """Wait until ``count`` nodes run in one cluster (as the first running node sees it)."""

        def clustered() -> list[str] | None:
            nodes = self.running_nodes()
            return nodes if len(nodes) >= count else None

        return wait_until(clustered, timeout, interval=0.5,
                          what=f"{count} running nodes in the RabbitMQ cluster")


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
