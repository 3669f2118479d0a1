"""Driving a node from outside, shared by ``cxr-node bench`` and the system tests: free ports,
waits with a deadline, ``cxr-node serve`` as a process (started, ready, stopped) and a
receiving storage SCP (pynetdicom, in this process).

Nothing here imports the model: these run while the node process has the CPU.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The line ``cxr-node serve`` prints on stdout once both fronts answer.
READY_PREFIX = "cxr-node ready:"
#: Log lines (``-v``) of the background ONNX export: its start, and each way it ends.
EXPORT_STARTED = "exporting the model to ONNX in the background"
EXPORT_ENDED = ("prediction by ONNX Runtime", "predicting with PyTorch", "ONNX fast path failed")
#: Job and delivery states in which the node still has work to do.
BUSY_JOB_STATES = ("queued", "processing")
BUSY_DELIVERY_STATES = ("pending",)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.1,
               what: str = "the condition", proc: subprocess.Popen | None = None) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something true, and
    return that. ``TimeoutError`` past ``timeout`` seconds, ``RuntimeError`` as soon as
    ``proc`` (the process that should bring it about) has exited; both name ``what`` was
    awaited ("port 104 to open")."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def wait_port(port: int, timeout: float = 60, proc: subprocess.Popen | None = None,
              host: str = "127.0.0.1") -> None:
    """Wait until ``host:port`` takes a TCP connection."""

    def opens() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return True
        return False

    wait_until(opens, timeout, 0.1, f"port {port} to open", proc)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig``, wait ``timeout`` seconds, then kill; the exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("process %d did not stop in %.0f s; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A bearer token when the environment gives the node one (``CXR_NODE_HTTP_TOKEN``)."""
    token = (os.environ if env is None else env).get("CXR_NODE_HTTP_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def cxr_node() -> list[str]:
    """How to run ``cxr-node`` with this interpreter: its console script when installed next
    to it (as a user runs it), else the module."""
    script = Path(sys.executable).with_name("cxr-node")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "node.cli.main"]


def http_json(port: int, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, Any]:
    """One request to 127.0.0.1:``port``: the status and the JSON answer (or, when it is
    not JSON, its first 300 characters)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text[:300].decode(errors="replace")


@dataclass
class NodeProcess:
    """``cxr-node serve`` as a process on free ports of 127.0.0.1, its stderr and stdout in
    ``log`` (by default next to the spool). ``start`` returns once the node printed its ready
    line (``ready_s`` after launch) and ``/readyz`` agrees."""

    spool: Path
    model: str | Path
    destinations: list[str]
    explain: str = "gradcam"
    ae_title: str = "CXRNODE"
    extra: Sequence[str] = ()
    env: dict[str, str] | None = None
    verbose: bool = False
    log: Path | None = None
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen | None = None
    ready_s: float | None = None
    launched: float = 0.0
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)
    #: ``serve`` options every node of this kind gets (before ``extra``, which may override).
    serve_args: ClassVar[tuple[str, ...]] = ()

    def command(self) -> list[str]:
        cmd = [*cxr_node(), *(["-v"] if self.verbose else []), "serve", "--bind", "127.0.0.1",
               "--dicom-port", str(self.dicom_port), "--http-port", str(self.http_port),
               "--ae-title", self.ae_title, "--model", str(self.model),
               "--spool", str(self.spool), "--explain", self.explain, *self.serve_args,
               *self.extra]
        for d in self.destinations:
            cmd += ["--destination", d]
        return cmd

    @property
    def tls(self) -> bool:
        """Whether the fronts speak TLS (then this harness cannot ask ``/readyz``)."""
        return "--tls-cert" in self.extra

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120) -> NodeProcess:
        """Start (again, after a stop or a kill, on the same ports) and wait until ready."""
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        self.log = self.log or self.spool.parent / f"{self.spool.name}-node.log"
        self._ready = threading.Event()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        with self.log.open("ab") as log:
            self.launched = time.perf_counter()
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                         env=env)
        threading.Thread(target=self._read_stdout, args=(self.proc, self._ready),
                         name="node-stdout", daemon=True).start()
        try:
            wait_until(self._ready.is_set, timeout, 0.02, "the node to be ready", self.proc)
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"{e}; its log:\n{self.log_tail()}") from None
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its log:\n{self.log_tail()}") from None
        if not self.tls:
            status, body = self.get("/readyz")
            if status != 200:
                raise RuntimeError(f"node printed ready but /readyz answered {status}: {body}")
        return self

    def _read_stdout(self, proc: subprocess.Popen, ready: threading.Event) -> None:
        """Copy the node's stdout to the log (after what it logged before), note the ready
        line's time."""
        assert proc.stdout is not None and self.log is not None
        with self.log.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith(READY_PREFIX.encode()) and not ready.is_set():
                    self.ready_s = time.perf_counter() - self.launched
                    ready.set()

    def fast_path_pending(self) -> bool:
        """Whether the background ONNX export still runs: ``/readyz`` says so, or over TLS
        (no client certificate here) the log of a ``verbose`` node."""
        if self.tls:
            text = self.log_text()
            return EXPORT_STARTED in text and not any(end in text for end in EXPORT_ENDED)
        status, body = self.get("/readyz")
        return status == 200 and body.get("onnx_fast_path") == "pending"

    def wait_fast_path(self, timeout: float = 120) -> float:
        """Wait while the ONNX export runs in the background; seconds from launch to its end
        (to now when there was none)."""
        wait_until(lambda: not self.fast_path_pending(), timeout, 0.1,
                   "the ONNX export to end", self.proc)
        return time.perf_counter() - self.launched

    def headers(self) -> dict[str, str]:
        return auth_headers({**os.environ, **(self.env or {})})

    def get(self, path: str, timeout: float = 30) -> tuple[int, dict]:
        """``GET`` on the HTTP front: the status and the JSON body (or its first bytes)."""
        status, body = http_json(self.http_port, "GET", path, headers=self.headers(),
                                 timeout=timeout)
        return status, body if isinstance(body, dict) else {"text": body}

    def counts(self) -> dict[str, int]:
        status, body = self.get("/jobs")
        return dict(body.get("counts", {})) if status == 200 else {}

    def idle(self) -> bool:
        """No job queued or processing and no delivery pending."""
        counts = self.counts()
        if not counts:
            return False
        busy = [f"jobs_{s}" for s in BUSY_JOB_STATES]
        busy += [f"deliveries_{s}" for s in BUSY_DELIVERY_STATES]
        return not any(counts.get(k, 0) for k in busy)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 60) -> int:
        return stop_process(self.proc, timeout=timeout) if self.proc is not None else 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"


@dataclass
class Arrival:
    at: float
    sop_class: str
    size: int


class ResultReceiver:
    """A pynetdicom C-STORE SCP in this process collecting the node's results: arrival time
    (``time.perf_counter``), SOP class and size of each, by SOP Instance UID."""

    def __init__(self, ae_title: str = "BENCH", host: str = "127.0.0.1",
                 compressed: bool = True) -> None:
        """``compressed``: also take the capture's compressed syntaxes, as archives do."""
        self.ae_title = ae_title
        self.host = host
        self.compressed = compressed
        self.port = 0
        self.arrivals: dict[str, Arrival] = {}
        self._lock = threading.Lock()
        self._server = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def start(self) -> ResultReceiver:
        from pydicom.uid import (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            JPEG2000Lossless,
            JPEGBaseline8Bit,
        )
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        # Explicit VR first, as dcmtk's storescp and most archives prefer (pynetdicom's
        # default prefers Implicit VR, which makes the sender re-encode every object); the
        # capture's compressed syntaxes, as an archive takes them.
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        if self.compressed:
            syntaxes += [JPEGBaseline8Bit, JPEG2000Lossless]
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.maximum_associations = 16
        self.port = free_port(self.host)
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event) -> int:
        at = time.perf_counter()
        try:
            uid = str(event.request.AffectedSOPInstanceUID)
            sop_class = str(event.request.AffectedSOPClassUID)
            size = len(event.encoded_dataset(include_meta=False))
        except Exception:  # never raise into pynetdicom
            logger.exception("result receiver: unreadable C-STORE")
            return 0xC000
        with self._lock:
            self.arrivals[uid] = Arrival(at, sop_class, size)
        return 0x0000

    def got(self, uids: set[str]) -> dict[str, Arrival]:
        with self._lock:
            return {u: self.arrivals[u] for u in uids if u in self.arrivals}

    def wait_for(self, expected: set[str], timeout: float,
                 idle: Callable[[], bool] | None = None) -> dict[str, Arrival]:
        """Wait until every ``expected`` UID arrived, or ``idle`` says twice, a second apart,
        that the node has nothing left to do; return what arrived of ``expected`` (at the
        deadline too: what is missing is the caller's to report).

        Results the node legitimately does not send (a heat map suppressed by its sanity
        check gives an SR only) and failed jobs end the wait by the ``idle`` rule.
        """
        next_idle_check = time.monotonic() + 1.0
        idle_in_a_row = 0

        def done() -> bool:
            nonlocal next_idle_check, idle_in_a_row
            if len(self.got(expected)) == len(expected):
                return True
            now = time.monotonic()
            if idle is not None and now >= next_idle_check:
                next_idle_check = now + 1.0
                idle_in_a_row = idle_in_a_row + 1 if idle() else 0
            return idle_in_a_row >= 2

        with contextlib.suppress(TimeoutError):
            wait_until(done, timeout, 0.02, "the results to arrive")
        return self.got(expected)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
