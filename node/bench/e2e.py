"""End-to-end parts of ``cxr-node bench``: the node under test as a measured process, HTTP
clients for ``/score`` and a DIMSE sender (the node and the result receiver themselves are the
shared harness's, :mod:`node.bench.harness`).

Nothing here imports the model: these run while the node process has the CPU.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from node.bench.harness import Arrival, NodeProcess, auth_headers


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
class MeasuredNode(NodeProcess):
    """The node under test, with its memory (at ready, peak) and CPU time read from ``/proc``."""

    ready_rss_mb: float | None = None
    ready_peak_rss_mb: float | None = None
    #: Highest anonymous RSS seen (MB), sampled every 50 ms from ready to stop.
    peak_anon_mb: float | None = None

    def start(self, timeout: float = 300) -> MeasuredNode:
        super().start(timeout)
        assert self.proc is not None
        self.ready_rss_mb = proc_status_mb(self.proc.pid, "VmRSS")
        self.ready_peak_rss_mb = proc_status_mb(self.proc.pid, "VmHWM")
        threading.Thread(target=self._sample_anon, name="bench-node-anon", daemon=True).start()
        return self

    def _sample_anon(self) -> None:
        """The kernel keeps no peak of anonymous memory: sample ``RssAnon`` (the memory the
        node owns, without the library pages that ``VmHWM`` also counts)."""
        proc = self.proc
        while proc is not None and proc.poll() is None:
            anon = proc_status_mb(proc.pid, "RssAnon")
            if anon is not None and (self.peak_anon_mb is None or anon > self.peak_anon_mb):
                self.peak_anon_mb = anon
            time.sleep(0.05)

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, every thread) the node has used so far."""
        return process_cpu_s(self.proc.pid) if self.proc is not None else None

    def peak_rss_mb(self) -> float | None:
        return proc_status_mb(self.proc.pid) if self.proc is not None else None

    def metrics(self, timeout: float = 30) -> str:
        """The text of the node's ``/metrics`` (Prometheus exposition format)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("GET", "/metrics", headers=self.headers())
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}: {text[:160]}")
        return text


@dataclass
class HttpRun:
    """One ``/score`` load: latencies of the successful requests, errors, wall time."""

    latencies: list[float]
    errors: list[str]
    wall_s: float

    @property
    def ips(self) -> float | None:
        return len(self.latencies) / self.wall_s if self.latencies and self.wall_s > 0 else None

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)


def http_load(port: int, bodies: Sequence[bytes], count: int, clients: int,
              timeout: float = 600) -> HttpRun:
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
                    conn.request("POST", "/score", body=body, headers=headers)
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
    return HttpRun(latencies, errors, time.perf_counter() - started)


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
