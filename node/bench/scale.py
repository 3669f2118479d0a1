"""The scale phase of ``cxr-node bench``: how much a second worker adds to a scaled node.

A scaled node (``cxr-node serve --role ...``) on this machine: a 1-node RabbitMQ, a throwaway
PostgreSQL and a shared store folder, one receiver, one sender and first one worker, then two,
each a process; results go to a receiving SCP in this process. The model is
:mod:`node.bench.sleepy`'s, which sleeps a fixed time per batch: on a GPU host the model is
the limit and a second GPU worker should nearly double the throughput; with a real model on
a small CPU machine the workers would only share the cores. So the figure shows what the
broker, the records and the roles add or take away, not this machine's model speed (the
model-only phase's). Each run times first C-STORE to last result received.

Skipped, with a note, where RabbitMQ or PostgreSQL is not installed.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.bench.common import Options, Results, progress
from node.bench.e2e import dimse_send
from node.bench.harness import NodeProcess, ResultReceiver
from node.bench.images import BenchImage
from node.bench.postgres import PostgresServer, postgres_bindir, postgres_missing
from node.bench.rabbit import RabbitCluster, rabbitmq_missing
from node.bench.sleepy import save_sleepy_model

logger = logging.getLogger(__name__)

#: Seconds the model sleeps per forward pass (per batch), and the workers' batch size: a
#: worker then scores at most BATCH / SLEEP_S = 4 images/s. Besides the model, a worker
#: spends some 70 ms per image (about 50 ms of CPU: decode, preprocess, the SR, fsync,
#: confirms, records) one batch after another, and the other roles, the broker, PostgreSQL
#: and this process's DICOM sending and receiving as much again: with a shorter sleep two
#: workers on two shared cores are limited by the CPU, not by the (simulated) model.
SLEEP_S = 1.0
BATCH = 4
#: Each way, the bench's radiographs are sent this many times smaller (fewer CPU seconds per
#: image to decode and preprocess: two cores must not be the limit either).
DOWNSCALE = 4
#: Options of every role's process (as the system tests' scaled deployment, but a longer
#: queue delay: a worker's first batch of a run fills at the receiver's pace instead of
#: starting with 2 images, an extra round that would cost the 2-worker run twice as much).
QUEUE_DELAY_MS = 200
ROLE_ARGS = ("--no-onnx-fast-path", "--workers", "1", "--batch-size", str(BATCH),
             "--max-queue-delay-ms", str(QUEUE_DELAY_MS), "--reconcile-grace-s", "2")


def missing() -> str | None:
    """Why the scale phase cannot run here, else None."""
    return rabbitmq_missing() or postgres_missing()


def small_datasets(images: Sequence[BenchImage], downscale: int = DOWNSCALE) -> list[Any]:
    """The radiographs as datasets, ``downscale`` times smaller each way, uncompressed."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    out = []
    for image in images:
        ds = pydicom.dcmread(io.BytesIO(image.data))
        pixels = ds.pixel_array
        if pixels.ndim != 2:  # not a plain grey radiograph: sent as it is
            out.append(ds)
            continue
        small = pixels[::downscale, ::downscale].copy()
        ds.PixelData = small.tobytes()
        ds.Rows, ds.Columns = small.shape
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for spacing in ("PixelSpacing", "ImagerPixelSpacing"):
            if spacing in ds:
                setattr(ds, spacing, [float(v) * downscale for v in getattr(ds, spacing)])
        out.append(ds)
    return out


@dataclass
class ScaleRun:
    """One timed run: images sent, those whose SR arrived, wall time (first C-STORE to last
    SR), sending time (the receiver's pace), batches per worker."""

    sent: int
    with_results: int
    wall_s: float | None
    send_s: float
    batches: dict[str, float] = field(default_factory=dict)

    @property
    def ips(self) -> float | None:
        return self.with_results / self.wall_s if self.wall_s else None


class ScaledNode:
    """The role processes of one scaled node, over a broker, records and a shared store."""

    def __init__(self, folder: Path, model: Path, env: dict[str, str],
                 destination: ResultReceiver) -> None:
        self.folder = folder
        self.model = model
        self.env = env
        self.destination = destination
        self.processes: dict[str, NodeProcess] = {}

    def start(self, roles: dict[str, str], timeout: float) -> None:
        """Start ``name -> role`` processes at once (each loads the model) and wait for all."""
        started = []
        for name, role in roles.items():
            self.processes[name] = p = NodeProcess(
                self.folder / name, self.model, [self.destination.address], explain="none",
                env=self.env, extra=("--role", role, "--store", str(self.folder / "store"),
                                     *ROLE_ARGS))
            started.append(p)
        errors: list[str] = []

        def start(p: NodeProcess) -> None:
            try:
                p.start(timeout)
            except Exception as e:
                errors.append(f"{p.spool.name}: {e}")

        threads = [threading.Thread(target=start, args=(p,), name=f"bench-start-{p.spool.name}")
                   for p in started]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError("a role did not start: " + "\n".join(errors))

    def stop(self) -> None:
        for p in self.processes.values():
            with contextlib.suppress(Exception):
                p.stop()

    def batches(self, name: str) -> float:
        """The batches worker ``name`` has scored (``cxr_inference_batch_size_count``)."""
        from prometheus_client.parser import text_string_to_metric_families

        p = self.processes[name]
        conn = http.client.HTTPConnection("127.0.0.1", p.http_port, timeout=30)
        try:
            conn.request("GET", "/metrics", headers=p.headers())
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples if s.name == "cxr_inference_batch_size_count")

    def workers(self) -> list[str]:
        return [n for n in self.processes if n.startswith("worker")]

    def send(self, datasets: list[Any], count: int, timeout: float) -> ScaleRun:
        """C-STORE ``count`` new instances to the receiver; wait for each one's SR."""
        from dicom_io.results import instance_uid

        receiver = self.processes["receiver"]
        sha = receiver.get("/readyz")[1]["model"]["sha256"]

        def idle() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return receiver.idle()
            return False

        before = {n: self.batches(n) for n in self.workers()}
        run = dimse_send(receiver.dicom_port, receiver.ae_title, datasets, count)
        if run.errors:
            raise RuntimeError(f"{len(run.errors)} C-STORE(s) failed, first: {run.errors[0]}")
        expected = {instance_uid("sr", uid, sha): uid for uid in run.sent}
        got = self.destination.wait_for(set(expected), timeout, idle)
        wall = max(a.at for a in got.values()) - run.first_send if got else None
        return ScaleRun(len(run.sent), len(got), wall, run.send_done - run.first_send,
                        {n: self.batches(n) - before[n] for n in self.workers()})

    def logs(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}\n{p.log_tail(lines)}" for name, p in
                         self.processes.items())


def _timed(node: ScaledNode, datasets: list[Any], count: int, timeout: float,
           label: str) -> ScaleRun:
    progress(f"scale ({label}): warm-up, {2 * BATCH} images")
    node.send(datasets, 2 * BATCH, timeout)
    progress(f"scale ({label}): {count} images by C-STORE, waiting for their SRs")
    run = node.send(datasets, count, timeout)
    if run.with_results < run.sent:
        raise RuntimeError(f"{label}: the SRs of {run.sent - run.with_results} of {run.sent} "
                           f"image(s) did not arrive\n{node.logs()}")
    return run


def measure_scale(opts: Options, images: Sequence[BenchImage], res: Results,
                  work: Path) -> None:
    """One worker, then two: images/s of each run and the workers' shares of the batches."""
    why = missing()
    if why is not None:
        res.info["scale"] = {"skipped": why}
        progress(f"scale: skipped: {why}")
        return
    folder = work / "scale"
    folder.mkdir(parents=True, exist_ok=True)
    datasets = small_datasets(images)
    model = save_sleepy_model(folder / "sleepy.pt", SLEEP_S)
    info: dict[str, Any] = {"sleep_s": SLEEP_S, "batch_size": BATCH, "count": opts.scale_count,
                            "max_queue_delay_ms": QUEUE_DELAY_MS, "downscale": DOWNSCALE,
                            "rows": int(datasets[0].Rows), "columns": int(datasets[0].Columns)}
    res.info["scale"] = info
    with contextlib.ExitStack() as stack:
        progress("scale: starting RabbitMQ (1 node) and PostgreSQL")
        rabbit = RabbitCluster(folder / "rabbit", size=1)
        stack.callback(rabbit.stop)
        rabbit.start()
        bindir = postgres_bindir()
        assert bindir is not None  # missing() said so
        postgres = PostgresServer(bindir)
        stack.callback(postgres.remove)
        destination = ResultReceiver().start()
        stack.callback(destination.stop)
        env = {"CXR_NODE_BROKER": rabbit.urls[0], "CXR_NODE_RECORDS": postgres.url}
        node = ScaledNode(folder, model, env, destination)
        stack.callback(node.stop)
        progress("scale: starting a receiver, a sender and one worker")
        node.start({"receiver": "receive", "sender": "send", "worker0": "work"}, opts.timeout_s)
        one = _timed(node, datasets, opts.scale_count, opts.timeout_s, "1 worker")
        res.put("scale_1_worker_ips", one.ips)
        res.put("scale_1_worker_wall_s", one.wall_s)
        info["send_s_1_worker"] = round(one.send_s, 3)
        progress("scale: starting a second worker")
        node.start({"worker1": "work"}, opts.timeout_s)
        two = _timed(node, datasets, opts.scale_count, opts.timeout_s, "2 workers")
        res.put("scale_2_workers_ips", two.ips)
        res.put("scale_2_workers_wall_s", two.wall_s)
        info["send_s_2_workers"] = round(two.send_s, 3)
        total = sum(two.batches.values())
        shares = {n: b / total for n, b in two.batches.items()} if total else {}
        info["batches_2_workers"] = two.batches
        info["shares_2_workers"] = {n: round(s, 4) for n, s in shares.items()}
        res.put("scale_min_worker_share", min(shares.values()) if shares else None)
