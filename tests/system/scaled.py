"""A scaled cxr-node deployment for system tests: receivers, workers and a sender as separate
``cxr-node serve --role ...`` processes over a real RabbitMQ cluster, a real PostgreSQL and a
shared store folder, sending to a real dcmtk ``storescp``."""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pydicom
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from node.broker import topology
from system.conftest import radiograph_copy
from system.peers import NodeProcess, Receiver, wait_until

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"

#: dcmtk encoder command per transfer syntax of the radiographs a modality sends.
ENCODINGS: dict[str, list[str]] = {
    "explicit": [], "jpeg-lossless": ["dcmcjpeg", "+e1"], "jpeg-ls": ["dcmcjpls"],
    "rle": ["dcmcrle"], "deflate": ["dcmconv", "+td"], "implicit": ["dcmconv", "+ti"],
}


def mixed_radiographs(cr: Path, j2k: Path, folder: Path, count: int) -> list[Path]:
    """``count`` instances of the NEMA CR chest (half size) in mixed transfer syntaxes, JPEG
    2000 among them: one file per syntax encoded by dcmtk, then copies with new UIDs (the
    encoded pixel data kept as is)."""
    bases = [j2k]
    for name, command in ENCODINGS.items():
        src = radiograph_copy(cr, folder / "bases" / f"{name}-src.dcm", name, downscale=2)
        if command:
            dest = folder / "bases" / f"{name}.dcm"
            subprocess.run([*command, str(src), str(dest)], check=True, capture_output=True)
            src = dest
        bases.append(src)
    out = []
    for i in range(count):
        ds = pydicom.dcmread(bases[i % len(bases)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(folder), str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"img{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dcmsend(port: int, files: list[Path], report: Path, timeout: float = 600
            ) -> tuple[int, set[str]]:
    """dcmtk ``dcmsend`` in each file's own transfer syntax; its exit status and the SOP
    Instance UIDs the node answered with success (from dcmsend's report)."""
    proc = subprocess.run(
        ["dcmsend", "--decompress-never", "--no-halt", "-aec", "CXRNODE", "-aet", "MODALITY",
         "+crf", str(report), "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, timeout=timeout)
    return proc.returncode, acknowledged(report)


def acknowledged(report: Path) -> set[str]:
    if not report.exists():
        return set()
    out = set()
    for block in report.read_text(errors="replace").split("\n\n"):
        uid = re.search(r"^SOP Instance\s*:\s*(\S+)", block, re.M)
        if uid and re.search(r"^DIMSE Status\s*:\s*0x0000", block, re.M):
            out.add(uid.group(1))
    return out


@dataclass
class Deployment:
    """The processes of one scaled node and what they share."""

    folder: Path
    model: Path
    broker_env: dict[str, str]
    records_url: str
    destination: Receiver
    rabbit: object
    processes: dict[str, NodeProcess] = field(default_factory=dict)

    def process(self, name: str, role: str, *extra: str) -> NodeProcess:
        p = NodeProcess(self.folder / name, self.model, [self.destination.address],
                        explain="none", env=self.broker_env,
                        extra=("--role", role, "--store", str(self.folder / "store"),
                               "--no-onnx-fast-path", "--workers", "1", "--batch-size", "4",
                               "--reconcile-grace-s", "2", "--max-queue-delay-ms", "50",
                               "--retry-max-attempts", "4", *extra))
        self.processes[name] = p
        return p

    def counts(self) -> dict[str, int]:
        with psycopg.connect(self.records_url) as db:
            out = {f"jobs_{s}": n for s, n in
                   db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
            out.update({f"deliveries_{s}": n for s, n in
                        db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")})
        return out

    def recorded(self) -> int:
        return sum(n for k, n in self.counts().items() if k.startswith("jobs_"))

    def queue_depths(self) -> dict[str, int]:
        names = [topology.JOBS, topology.SCORE, topology.DELIVER, topology.FAILED,
                 topology.DEAD]
        out = {}
        for name in names:
            info = self.rabbit.queue_info(name)
            out[name] = int(info.get("messages", 0) or 0)
        return out

    def settled(self) -> bool:
        """Nothing in hand anywhere: no job open, no delivery pending, every queue empty."""
        counts = self.counts()
        busy = sum(counts.get(k, 0) for k in ("jobs_queued", "jobs_processing",
                                              "deliveries_pending"))
        return busy == 0 and not any(self.queue_depths()[q] for q in
                                     (topology.JOBS, topology.DELIVER))

    def wait_settled(self, timeout: float = 240) -> None:
        try:
            wait_until(self.settled, timeout, 0.5, "the scaled node to settle")
        except TimeoutError:
            raise TimeoutError(f"not settled: {self.counts()} {self.queue_depths()}\n"
                               + self.logs()) from None

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(lines)}" for name, p in
                         self.processes.items())

    def metric(self, name: str, sample: str, **labels: str) -> float:
        p = self.processes[name]
        with urllib.request.urlopen(f"{p.url}/metrics", timeout=30) as r:
            text = r.read().decode()
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == sample
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def results(self) -> dict[str, list[pydicom.Dataset]]:
        """Result SOP Instance UID -> every copy the destination received."""
        out: dict[str, list[pydicom.Dataset]] = defaultdict(list)
        for f in self.destination.files():
            try:
                ds = pydicom.dcmread(f)
            except Exception:  # still being written
                continue
            out[str(ds.SOPInstanceUID)].append(ds)
        return out

    def sources_with_sr(self) -> set[str]:
        out = set()
        for copies in self.results().values():
            ds = copies[0]
            if str(ds.SOPClassUID) != SR_CLASS:
                continue
            for item in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
                for series in item.ReferencedSeriesSequence:
                    out.update(str(r.ReferencedSOPInstanceUID)
                               for r in series.ReferencedSOPSequence)
        return out

    def wait_srs(self, sources: set[str], timeout: float = 300) -> set[str]:
        """Wait until each of ``sources`` has its SR at the destination; those missing."""
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: sources <= self.sources_with_sr(), timeout, 0.5,
                       "every acknowledged image's SR at the destination")
        return sources - self.sources_with_sr()


def fingerprint(ds: pydicom.Dataset) -> str:
    """What must be equal between two copies of one result: its findings and pixels."""
    h = hashlib.sha256()
    if "PixelData" in ds:
        h.update(ds.PixelData)
    for item in ds.get("ContentSequence", []) or []:
        h.update(str(item).encode())
    h.update(str(ds.get("ContentDate", "")).encode() + str(ds.get("ContentTime", "")).encode())
    return h.hexdigest()
