"""End-to-end parts of ``cxr-node bench``: the node under test as a process, a result receiver
(a pynetdicom storage SCP in the bench process), HTTP clients for ``/score`` and a DIMSE sender.

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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

logger = logging.getLogger(__name__)

READY_PREFIX = "cxr-node ready:"
#: Job and delivery states in which the node still has work to do.
BUSY_JOB_STATES = ("queued", "processing")
BUSY_DELIVERY_STATES = ("pending",)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def proc_status_mb(pid: int, key: str = "VmHWM") -> float | None:
    """A memory line of ``/proc/<pid>/status`` (``VmHWM``: peak RSS) in MB (10^6 bytes)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


@dataclass
class NodeUnderTest:
    """``cxr-node serve`` as a subprocess on free ports of 127.0.0.1, logging to a file."""

    model: str
    spool: Path
    explain: str
    destinations: list[str]
    log_path: Path
    node_args: list[str] = field(default_factory=list)
    ae_title: str = "CXRNODE"
    dicom_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen | None = None
    ready_s: float | None = None
    ready_rss_mb: float | None = None
    ready_peak_rss_mb: float | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    #: Highest anonymous RSS seen (MB), sampled every 50 ms from ready to stop.
    peak_anon_mb: float | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "node.cli.main", "serve", "--bind", "127.0.0.1",
               "--dicom-port", str(self.dicom_port), "--http-port", str(self.http_port),
               "--ae-title", self.ae_title, "--model", self.model, "--spool", str(self.spool),
               "--explain", self.explain, *self.node_args]
        for d in self.destinations:
            cmd += ["--destination", d]
        return cmd

    def start(self, timeout: float = 300) -> float:
        """Start and wait for the ready line; return seconds from launch to ready."""
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        started = self.launched = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                     env=env, text=True)
        log.close()
        threading.Thread(target=self._read_stdout, name="bench-node-stdout",
                         daemon=True).start()
        deadline = started + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode} before it was "
                                   f"ready; its log:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                self.stop()
                raise TimeoutError(f"the node was not ready in {timeout:.0f} s; its log:\n"
                                   f"{self.log_tail()}")
        self.ready_s = time.perf_counter() - started
        status, body = self.get("/readyz")
        if status != 200:
            raise RuntimeError(f"node printed ready but /readyz answered {status}: {body}")
        self.ready_rss_mb = proc_status_mb(self.proc.pid, "VmRSS")
        self.ready_peak_rss_mb = proc_status_mb(self.proc.pid, "VmHWM")
        threading.Thread(target=self._sample_anon, name="bench-node-anon", daemon=True).start()
        return self.ready_s

    def _sample_anon(self) -> None:
        """The kernel keeps no peak of anonymous memory: sample ``RssAnon`` (the memory the
        node owns, without the library pages that ``VmHWM`` also counts)."""
        proc = self.proc
        while proc is not None and proc.poll() is None:
            anon = proc_status_mb(proc.pid, "RssAnon")
            if anon is not None and (self.peak_anon_mb is None or anon > self.peak_anon_mb):
                self.peak_anon_mb = anon
            time.sleep(0.05)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(READY_PREFIX):
                self._ready.set()
            logger.debug("node: %s", line.rstrip())

    def wait_fast_path(self, timeout: float = 300) -> float:
        """Wait while the ONNX export runs in the background; seconds from launch to its end
        (the ready time when there was none)."""
        deadline = time.perf_counter() + timeout
        while True:
            status, body = self.get("/readyz")
            if status != 200 or body.get("onnx_fast_path") != "pending":
                return time.perf_counter() - self.launched
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the ONNX export did not finish in {timeout:.0f} s")
            time.sleep(0.1)

    def get(self, path: str, timeout: float = 30) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("GET", path, headers=auth_headers())
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, {"text": text[:200].decode(errors="replace")}

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

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, every thread) the node has used so far."""
        return process_cpu_s(self.proc.pid) if self.proc is not None else None

    def peak_rss_mb(self) -> float | None:
        return proc_status_mb(self.proc.pid) if self.proc is not None else None

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("node %d did not stop in %.0f s; killing it", self.proc.pid,
                               timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def auth_headers() -> dict[str, str]:
    """A bearer token when the environment gives the node one (``CXR_NODE_HTTP_TOKEN``)."""
    token = os.environ.get("CXR_NODE_HTTP_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass
class Arrival:
    at: float
    sop_class: str
    size: int


class ResultReceiver:
    """A pynetdicom C-STORE SCP collecting the node's results (arrival time, class, size)."""

    def __init__(self, ae_title: str = "BENCH", host: str = "127.0.0.1") -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = 0
        self.arrivals: dict[str, Arrival] = {}
        self.duplicates = 0
        self._lock = threading.Lock()
        self._server = None
        self._ae = None

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def start(self) -> ResultReceiver:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.ae_title)
        # Explicit VR first, as dcmtk's storescp and most archives prefer (pynetdicom's
        # default prefers Implicit VR, which makes the sender re-encode every object).
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax,
                                     [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_associations = 16
        self.port = free_port(self.host)
        self._server = ae.start_server((self.host, self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self._ae = ae
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
            if uid in self.arrivals:
                self.duplicates += 1
            self.arrivals[uid] = Arrival(at, sop_class, size)
        return 0x0000

    def got(self, uids: set[str]) -> dict[str, Arrival]:
        with self._lock:
            return {u: self.arrivals[u] for u in uids if u in self.arrivals}

    def wait_for(self, expected: set[str], timeout: float,
                 idle: Callable[[], bool] | None = None) -> dict[str, Arrival]:
        """Wait until every ``expected`` UID arrived, or ``idle`` says twice, a second apart,
        that the node has nothing left to do; return what arrived of ``expected``.

        Results the node legitimately does not send (a heat map suppressed by its sanity
        check gives an SR only) and failed jobs end the wait by the ``idle`` rule.
        """
        deadline = time.monotonic() + timeout
        next_idle_check = time.monotonic() + 1.0
        idle_in_a_row = 0
        while True:
            got = self.got(expected)
            if len(got) == len(expected):
                return got
            now = time.monotonic()
            if idle is not None and now >= next_idle_check:
                next_idle_check = now + 1.0
                idle_in_a_row = idle_in_a_row + 1 if idle() else 0
                if idle_in_a_row >= 2:
                    return self.got(expected)
            if now > deadline:
                return got
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


@dataclass
class HttpRun:
    """One ``/score`` load: latencies of the successful requests, errors, wall time."""

    clients: int
    latencies: list[float]
    errors: list[str]
    wall_s: float

    @property
    def ips(self) -> float | None:
        return len(self.latencies) / self.wall_s if self.latencies and self.wall_s > 0 else None

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)


def http_load(port: int, bodies: Sequence[bytes], count: int, clients: int,
              query: str = "", timeout: float = 600) -> HttpRun:
    """``count`` ``POST /score`` requests from ``clients`` threads, each with its own
    keep-alive connection; bodies are used in turn."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Content-Type": "application/dicom", **auth_headers()}

    def client() -> None:
        nonlocal issued
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            while True:
                with lock:
                    if issued >= count:
                        return
                    i = issued
                    issued += 1
                body = bodies[i % len(bodies)]
                started = time.perf_counter()
                try:
                    conn.request("POST", "/score" + query, body=body, headers=headers)
                    response = conn.getresponse()
                    text = response.read()
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"HTTP {response.status}: "
                                      f"{text[:160].decode(errors='replace')}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"bench-client-{i}", daemon=True)
               for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return HttpRun(clients, latencies, errors, time.perf_counter() - started)


@dataclass
class DimseRun:
    """One C-STORE stream: the copies' SOP Instance UIDs, when sending began and ended."""

    sent: list[str]
    first_send: float
    send_done: float
    errors: list[str]


def dimse_send(port: int, called_ae: str, datasets: Sequence[Dataset], count: int,
               calling_ae: str = "BENCHSCU", timeout: float = 120) -> DimseRun:
    """C-STORE ``count`` copies (each with a new SOP Instance UID) in one association.

    The copies are written as files first (in a temporary folder) and sent as a modality or
    archive sends stored files: streamed as they are, not re-encoded.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files: list[tuple[str, Path]] = []
        for i in range(count):
            ds = datasets[i % len(datasets)]
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            files.append((uid, Path(tmp) / f"{i}.dcm"))
            ds.save_as(files[-1][1], enforce_file_format=True)
        return _send_files(port, called_ae, datasets, files, calling_ae, timeout)


def _send_files(port: int, called_ae: str, datasets: Sequence[Dataset],
                files: list[tuple[str, Path]], calling_ae: str, timeout: float) -> DimseRun:
    from pynetdicom import AE

    from node.dimse.scu import associate, stream_files_as_stored

    stream_files_as_stored()  # as the node sends: files given by path are streamed

    ae = AE(ae_title=calling_ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                     for ds in datasets}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = associate(ae, "127.0.0.1", port, called_ae)  # TCP_NODELAY, as the node sends
    if not assoc.is_established:
        raise RuntimeError(f"association with the node ({called_ae}@127.0.0.1:{port}) failed")
    sent: list[str] = []
    errors: list[str] = []
    first = time.perf_counter()
    try:
        for i, (uid, path) in enumerate(files):
            if i == 0:
                first = time.perf_counter()
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code == 0x0000:
                sent.append(uid)
            else:
                errors.append(f"C-STORE status {code if code is None else hex(code)}")
            if not assoc.is_established:
                errors.append("association ended early")
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return DimseRun(sent, first, time.perf_counter(), errors)


def class_names(arrivals: dict[str, Arrival]) -> dict[str, dict[str, float]]:
    """Arrivals by SOP class name: count and mean size in MB."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for a in arrivals.values():
        name = UID(a.sop_class).name
        counts[name] += 1
        sizes[name] += a.size
    return {name: {"count": n, "mean_mb": round(sizes[name] / n / 1e6, 3)}
            for name, n in sorted(counts.items())}


def wait_idle(node: NodeUnderTest, timeout: float = 120) -> bool:
    """Wait until the node has no work left (after a warm-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if node.idle():
                return True
        time.sleep(0.2)
    return False
