"""``cxr-node bench``: how fast is this node on this machine, on real radiographs, in one run.

Phases (each may be skipped with ``--skip``, except the model-only forward passes):

* model only, in this process, on the same preprocessed inputs: PyTorch eager and ONNX Runtime
  at batch 1 and at ``--batch-size``; Grad-CAM and SHAP per image; forward (PyTorch, batch)
  plus Grad-CAM of every image in the batch; building the SR/SC/PM results;
* the node as a subprocess (``cxr-node serve`` on free ports of 127.0.0.1, a temporary spool):
  time from launch to ready, HTTP ``/score`` with 1 and ``--clients`` concurrent clients, DIMSE
  C-STORE in and results out to a receiving SCP in this process (Grad-CAM: SR + SC + PM), then
  a second node with ``--explain none`` (SR only) on the same spool (a warm restart); peak RSS.

Prints a table, then, last, one JSON line with the ratios, raw figures and targets. Targets are
reported (pass/fail), never enforced: the exit status is 1 only when a phase could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SKIPPABLE = ("http", "dimse", "noexplain", "gradcam", "shap")
CR_TEST_FILE = "RG1_UNCR.dcm"

#: (ratio or figure, comparison, target, what it is).
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("http_vs_model", ">=", 0.8, "HTTP /score, N clients / ONNX model-only, batch"),
    ("dimse_vs_model", ">=", 0.7, "DIMSE Grad-CAM / PyTorch forward + Grad-CAM, batch"),
    ("dimse_noexplain_vs_model", ">=", 0.7, "DIMSE explain none / ONNX model-only, batch"),
    ("score_p50_vs_reference", "<=", 1.5, "/score p50, 1 client / (decode + forward)"),
    ("gradcam_over_predict", "<=", 3.0, "Grad-CAM / PyTorch forward, 1 image"),
    ("node_peak_rss_mb", "<=", 1500.0, "node peak RSS, MB"),
    ("ready_s", "<=", 10.0, "node start to ready, s (cold)"),
)
RATIO_KEYS = ("http_vs_model", "dimse_vs_model", "dimse_noexplain_vs_model",
              "gradcam_over_predict", "shap_over_predict", "score_p50_vs_reference")


@dataclass
class Options:
    """What ``cxr-node bench`` was asked to do."""

    model: str
    card: Path | None = None
    weights_cache: Path | None = None
    images: list[Path] = field(default_factory=list)
    count: int = 32
    clients: int = 4
    batch_size: int = 8
    threads: int | None = None
    skip: frozenset[str] = frozenset()
    repeat: int = 3
    min_time_s: float = 2.0
    shap_nsamples: int | None = None
    timeout_s: float = 900.0
    node_args: list[str] = field(default_factory=list)
    json_only: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        skip = frozenset(s.strip().lower() for item in (args.skip or [])
                         for s in item.split(",") if s.strip())
        unknown = sorted(skip - set(SKIPPABLE))
        if unknown:
            raise ValueError(f"--skip {','.join(unknown)}: use any of {','.join(SKIPPABLE)}")
        for name in ("count", "clients", "batch_size", "repeat"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= args.min_time <= 600:
            raise ValueError(f"--min-time {args.min_time}: use 0 to 600 seconds")
        node_args: list[str] = []
        for flag in ("workers", "max_queue_delay_ms", "config"):
            value = getattr(args, flag, None)
            if value is not None:
                node_args += [f"--{flag.replace('_', '-')}", str(value)]
        if getattr(args, "onnx_fast_path", None) is not None:
            node_args.append("--onnx-fast-path" if args.onnx_fast_path else "--no-onnx-fast-path")
        return cls(model=str(args.model), card=args.card, weights_cache=args.weights_cache,
                   images=list(args.images or []), count=args.count, clients=args.clients,
                   batch_size=args.batch_size, threads=args.threads, skip=skip,
                   repeat=args.repeat, min_time_s=args.min_time,
                   shap_nsamples=args.shap_nsamples,
                   timeout_s=args.timeout, node_args=node_args, json_only=args.json_only)


@dataclass
class BenchImage:
    """One distinct radiograph: its DICOM bytes (as sent) and where it came from."""

    name: str
    data: bytes


@dataclass
class Results:
    raw: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def put(self, key: str, value: float | None) -> None:
        self.raw[key] = None if value is None or not math.isfinite(value) else float(value)

    def get(self, key: str) -> float | None:
        return self.raw.get(key)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- images


def _png_dataset(path: Path) -> Any:
    """A DX (for presentation) object around a PNG radiograph, so the node can take it."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dicom_io import load_png
    from dicom_io.uids import DX_PRESENTATION_STORAGE

    image = load_png(path)
    pixels = np.ascontiguousarray(image.pixels)
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node bench", path.name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cxr-node bench study", path.name])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-node bench series", path.name])
    ds.PatientName, ds.PatientID = "BENCH^IMAGE", f"BENCH-{path.stem}"[:64]
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def _encode(ds: Any) -> bytes:
    import io

    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file()
                          and p.suffix.lower() in ("", ".dcm", ".dicom", ".png"))
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"--images {path}: no such file or folder")
    return out


def default_image() -> Path:
    """pydicom-data's NEMA CR chest (1955 x 1841, MONOCHROME1)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(CR_TEST_FILE, download=False)
    if not found:
        raise ValueError(f"no --images given and {CR_TEST_FILE} is not available: "
                         "install pydicom-data or pass --images")
    return Path(str(found))


def collect_images(paths: Sequence[Path]) -> list[BenchImage]:
    """The radiographs to use: DICOM files as they are, PNGs wrapped as DX; each must pass
    the node's input gate and decode (others are skipped with a warning)."""
    from dicom_io import DicomIOError, from_dataset, read_dataset

    files = _files(paths) if paths else [default_image()]
    out: list[BenchImage] = []
    for path in files:
        try:
            with path.open("rb") as f:
                head = f.read(8)
            if head == b"\x89PNG\r\n\x1a\n":
                data = _encode(_png_dataset(path))
            else:
                data = path.read_bytes()
            from_dataset(read_dataset(data), path.name)
        except (DicomIOError, OSError) as e:
            logger.warning("%s skipped: %s", path, e)
            continue
        out.append(BenchImage(path.name, data))
    if not out:
        raise ValueError("no usable radiograph among --images (DICOM CR/DX or PNG)")
    return out


# ---------------------------------------------------------------- model only


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1,
          min_s: float = 0.0) -> list[float]:
    """Seconds of each timed call of ``fn`` after ``warmup`` untimed ones: ``repeat`` calls,
    more until they add up to ``min_s`` (at most 100), so that a figure taken on a shared
    machine spans more than a moment of its load."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeat or (sum(times) < min_s and len(times) < 100):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _forward(res: Results, prefix: str, model: Any, inputs: Any, opts: Options) -> None:
    import numpy as np

    for key, n in (("single", 1), ("batch", opts.batch_size)):
        x = np.ascontiguousarray(inputs[:n])
        cpu = time.process_time()
        times = timed(lambda x=x: model.probabilities(x), opts.repeat, min_s=opts.min_time_s)
        latency = statistics.median(times)
        res.put(f"{prefix}_{key}_latency_s", latency)
        res.put(f"{prefix}_{key}_ips", n / latency)
        if key == "batch":  # CPU of every thread per image (the warm-up run included)
            res.put(f"{prefix}_batch_cpu_s",
                    (time.process_time() - cpu) / (n * (len(times) + 1)))


def load(opts: Options) -> Any:
    """The model under test, loaded in this process (errors are the user's: bad --model)."""
    from inference import configure_threads, load_model

    configure_threads(opts.threads)
    return load_model(opts.model, card=opts.card, cache_dir=opts.weights_cache)


def measure_model(opts: Options, model: Any, images: list[BenchImage], res: Results,
                  work: Path) -> None:
    """Model-only figures, in this process, on the same preprocessed inputs."""
    import numpy as np

    from dicom_io import from_dataset, read_dataset
    from inference import configure_threads, load_model, pre_process

    res.info["model"] = model.info
    pre = model.card.preprocessing
    progress(f"model {model.card.name} {model.card.version} ({model.backend}); "
             "decode and preprocess")
    decode, preprocess, decoded = [], [], []
    for i in range(max(3, min(len(images), opts.batch_size))):
        image = images[i % len(images)]
        started = time.perf_counter()
        source = from_dataset(read_dataset(image.data), image.name)
        middle = time.perf_counter()
        x, geometry = pre_process(source.pixels, source.maxval, pre)
        decode.append(middle - started)
        preprocess.append(time.perf_counter() - middle)
        decoded.append((source, x, geometry))
    res.put("decode_s", statistics.median(decode))
    res.put("preprocess_s", statistics.median(preprocess))
    first = decoded[0][0]
    res.info["images"] = {"distinct": len(images), "first": first.name,
                          "rows": first.rows, "columns": first.columns}
    picks = [decoded[i % len(decoded)] for i in range(opts.batch_size)]
    inputs = np.stack([x for _, x, _ in picks]).astype(np.float32)

    if model.module is not None and model.session is None:
        progress(f"PyTorch eager, batch 1 and {opts.batch_size}")
        _forward(res, "torch", model, inputs, opts)
        if "gradcam" not in opts.skip:
            _phase(res, "Grad-CAM", lambda: _gradcam(opts, model, picks, inputs, res))
        if "shap" not in opts.skip:
            _phase(res, "SHAP", lambda: _shap(opts, model, picks, inputs, res))
    else:
        res.errors.append(f"model backend {model.backend}: no PyTorch module, so no eager, "
                          "Grad-CAM or SHAP figures")

    progress(f"ONNX Runtime, batch 1 and {opts.batch_size}")

    def onnx() -> None:
        onnx_model = model
        if model.session is None:
            from inference.export import export_onnx

            path = export_onnx(model, work / "bench-model.onnx")
            onnx_model = load_model(path)
            configure_threads(opts.threads)  # opening the session set the cores present
        _forward(res, "onnx", onnx_model, inputs, opts)

    _phase(res, "ONNX Runtime", onnx)


def _scored(model: Any, picks: list, probabilities: Any) -> list:
    from inference import post_process
    from inference.predict import Scored

    return [Scored(source, post_process(probabilities[i], model.card), geometry, x)
            for i, (source, x, geometry) in enumerate(picks)]


def _gradcam(opts: Options, model: Any, picks: list, inputs: Any, res: Results) -> None:
    """Grad-CAM per image, forward + Grad-CAM of a whole batch, result objects build time."""
    from explain import explain

    progress(f"Grad-CAM: forward (PyTorch, batch {opts.batch_size}) + one map per image")
    warm = _scored(model, picks[:1], model.probabilities(inputs[:1]))
    heatmap = explain(model, warm[0], method="gradcam")  # medcam injection, first run
    started, cpu = time.perf_counter(), time.process_time()
    scored = _scored(model, picks, model.probabilities(inputs))
    maps = []
    for one in scored:
        t = time.perf_counter()
        explain(model, one, method="gradcam")
        maps.append(time.perf_counter() - t)
    total = time.perf_counter() - started
    res.put("gradcam_s", statistics.median(maps))
    res.put("model_gradcam_batch_ips", len(picks) / total)
    res.put("model_gradcam_cpu_s", (time.process_time() - cpu) / len(picks))
    try:
        from dicom_io.results import builder_for

        builder = builder_for(model)

        def build() -> None:  # as the worker does: build, then the Part 10 bytes of each
            results = builder.build(warm[0].image, warm[0].prediction, heatmap)
            for kind, _ in results.items():
                results.part10(kind)

        res.put("build_results_s", statistics.median(timed(build, 2)))
    except Exception as e:
        logger.debug("result build failed", exc_info=True)
        res.errors.append(f"building results: {type(e).__name__}: {e}")


def _shap(opts: Options, model: Any, picks: list, inputs: Any, res: Results) -> None:
    from explain import explain

    params = {} if opts.shap_nsamples is None else {"nsamples": opts.shap_nsamples}
    progress(f"SHAP (nsamples {opts.shap_nsamples or 'default'}), one image")
    scored = _scored(model, picks[:1], model.probabilities(inputs[:1]))
    times = timed(lambda: explain(model, scored[0], method="shap", **params), 1)
    res.put("shap_s", statistics.median(times))


# ---------------------------------------------------------------- the node, end to end


def _node_args(opts: Options) -> list[str]:
    args = ["--batch-size", str(opts.batch_size)]
    if opts.threads is not None:
        args += ["--threads", str(opts.threads)]
    if opts.card is not None:
        args += ["--card", str(opts.card)]
    if opts.weights_cache is not None:
        args += ["--weights-cache", str(opts.weights_cache)]
    return args + opts.node_args


def in_worker_thread(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a worker thread, as the node runs its model, and return its result.

    PyTorch (OpenMP, active wait) can be many times slower in the main thread of a process on
    a busy machine than in any other thread (see docs/tuning.md); the model-only reference
    must not be penalised for where the bench happens to call it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=target, name="bench-model")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _phase(res: Results, name: str, fn: Callable[[], object]) -> bool:
    """Run one phase; a failure is recorded (and logged), never raised."""
    try:
        fn()
        return True
    except Exception as e:
        logger.debug("phase %s failed", name, exc_info=True)
        first, _, rest = str(e).partition("\n")
        res.errors.append(f"{name}: {type(e).__name__}: {first}")
        if rest:
            print(f"bench: {name} failed: {e}", file=sys.stderr)
        return False


def _put_cpu(res: Results, key: str, before: float | None, after: float | None,
             images: int) -> None:
    """The node's CPU seconds per image over a phase (every thread of the process)."""
    if before is not None and after is not None and images:
        res.put(key, (after - before) / images)


def _http(opts: Options, node: Any, images: list[BenchImage], res: Results) -> None:
    from node.bench.e2e import http_load

    bodies = [image.data for image in images]
    progress("HTTP /score warm-up")
    for clients in (1, opts.clients):
        warm = http_load(node.http_port, bodies, max(2, clients), clients, timeout=opts.timeout_s)
        if warm.errors:
            raise RuntimeError(f"/score failed during warm-up: {warm.errors[0]}")
    for key, clients in (("single", 1), ("concurrent", opts.clients)):
        progress(f"HTTP /score: {opts.count} requests from {clients} client(s)")
        cpu = node.cpu_s()
        run = http_load(node.http_port, bodies, opts.count, clients, timeout=opts.timeout_s)
        if key == "concurrent":
            _put_cpu(res, "http_concurrent_node_cpu_s", cpu, node.cpu_s(), len(run.latencies))
        res.put(f"http_{key}_ips", run.ips)
        res.put(f"http_{key}_p50_s", run.p(50))
        res.put(f"http_{key}_p95_s", run.p(95))
        if run.errors:
            res.errors.append(f"HTTP /score with {clients} client(s): {len(run.errors)} of "
                              f"{opts.count} failed, first: {run.errors[0]}")


def _dimse(opts: Options, node: Any, receiver: Any, datasets: list, explain: str,
           res: Results) -> None:
    from dicom_io.results import instance_uid
    from node.bench.e2e import class_names, dimse_send

    sha = node.get("/readyz")[1]["model"]["sha256"]
    kinds = ("sr",) if explain == "none" else ("sr", "sc", "pm")
    key = "dimse_none" if explain == "none" else "dimse_gradcam"

    def idle() -> bool:
        if node.proc is None or node.proc.poll() is not None:
            return True  # the node is gone: nothing more will come
        with contextlib.suppress(OSError, ValueError):
            return bool(node.idle())
        return False

    def expected(sent: list[str]) -> set[str]:
        return {instance_uid(k, uid, sha) for uid in sent for k in kinds}

    progress(f"DIMSE ({explain}) warm-up: one image")
    warm = dimse_send(node.dicom_port, node.ae_title, datasets, 1)
    receiver.wait_for(expected(warm.sent), opts.timeout_s, idle)
    progress(f"DIMSE ({explain}): {opts.count} images by C-STORE, waiting for their results")
    cpu = node.cpu_s()
    run = dimse_send(node.dicom_port, node.ae_title, datasets, opts.count)
    got = receiver.wait_for(expected(run.sent), opts.timeout_s, idle)
    _put_cpu(res, f"{key}_node_cpu_s", cpu, node.cpu_s(), len(run.sent))
    with_sr = {u for u in run.sent if instance_uid("sr", u, sha) in got}
    res.info[key] = {"sent": len(run.sent), "with_results": len(with_sr),
                     "objects": len(got), "received": class_names(got)}
    if run.errors:
        res.errors.append(f"DIMSE ({explain}): {len(run.errors)} C-STORE(s) failed, first: "
                          f"{run.errors[0]}")
    if len(with_sr) < len(run.sent):
        res.errors.append(f"DIMSE ({explain}): results of {len(run.sent) - len(with_sr)} of "
                          f"{len(run.sent)} image(s) did not arrive")
    if got:
        wall = max(a.at for a in got.values()) - run.first_send
        res.put(f"{key}_wall_s", wall)
        res.put(f"{key}_ips", len(with_sr) / wall)
        res.put(f"{key}_send_s", run.send_done - run.first_send)


def measure_node(opts: Options, images: list[BenchImage], res: Results, work: Path) -> None:
    """The node as a subprocess: ready time, HTTP, DIMSE with Grad-CAM, then explain none."""
    import io

    import pydicom

    from node.bench.e2e import NodeUnderTest, ResultReceiver

    datasets = [pydicom.dcmread(io.BytesIO(image.data)) for image in images]
    run_gradcam = not {"dimse", "gradcam"} & opts.skip
    run_none = not {"dimse", "noexplain"} & opts.skip
    receiver = ResultReceiver().start()
    try:
        node = NodeUnderTest(opts.model, work / "spool", "gradcam", [receiver.address],
                             work / "node-gradcam.log", _node_args(opts))
        progress("starting the node (--explain gradcam, empty spool)")
        if not _phase(res, "node start", lambda: node.start(opts.timeout_s)):
            return
        res.put("ready_s", node.ready_s)
        res.put("node_ready_rss_mb", node.ready_rss_mb)
        res.put("node_ready_peak_rss_mb", node.ready_peak_rss_mb)
        # Cold, the ONNX export runs after ready: measure the node as it then runs.
        _phase(res, "ONNX fast path",
               lambda: res.put("fast_path_s", node.wait_fast_path(opts.timeout_s)))
        res.info["node_backend"] = node.get("/readyz")[1].get("model", {}).get("backend")
        try:
            if "http" not in opts.skip:
                _phase(res, "HTTP", lambda: _http(opts, node, images, res))
            if run_gradcam:
                _phase(res, "DIMSE Grad-CAM",
                       lambda: _dimse(opts, node, receiver, datasets, "gradcam", res))
            with contextlib.suppress(OSError, ValueError):
                res.info["node_gradcam_jobs"] = node.counts()
        finally:
            res.put("node_gradcam_peak_rss_mb", node.peak_rss_mb())
            res.put("node_gradcam_peak_anon_mb", node.peak_anon_mb)
            node.stop()
        if not run_none:
            return
        node = NodeUnderTest(opts.model, work / "spool", "none", [receiver.address],
                             work / "node-none.log", _node_args(opts))
        progress("restarting the node (--explain none, same spool)")
        if not _phase(res, "node restart", lambda: node.start(opts.timeout_s)):
            return
        res.put("ready_warm_s", node.ready_s)
        try:
            _phase(res, "DIMSE explain none",
                   lambda: _dimse(opts, node, receiver, datasets, "none", res))
        finally:
            res.put("node_none_peak_rss_mb", node.peak_rss_mb())
            res.put("node_none_peak_anon_mb", node.peak_anon_mb)
            node.stop()
    finally:
        receiver.stop()


# ---------------------------------------------------------------- the command


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``: user .. steal), or None."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Of the CPU time that passed, the share the hypervisor gave to other guests (steal):
    on a shared VM every figure of a run with much of it is low."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    return round(spent[7] / total, 4) if total > 0 else None


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__}


def run(opts: Options) -> int:
    """Run every phase not skipped; print the table (unless ``json_only``) and the JSON line."""
    from node.bench.report import report

    res = Results()
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    cpu_start = cpu_times()
    images = collect_images(opts.images)
    model = load(opts)
    with tempfile.TemporaryDirectory(prefix="cxr-node-bench-") as tmp:
        work = Path(tmp)
        if _phase(res, "model only", lambda: in_worker_thread(
                lambda: measure_model(opts, model, images, res, work))):
            del model  # the node's figures should not share the machine with it
            gc.collect()
            if not {"http", "dimse"} <= opts.skip:
                measure_node(opts, images, res, work)
    res.info["machine"] = {**machine(), "loadavg_start": load_start,
                           "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                           "steal": steal_share(cpu_start, cpu_times())}
    res.info["bench_s"] = round(time.perf_counter() - started, 1)
    table, line = report(opts, res)
    if not opts.json_only:
        print(table)
    print(json.dumps(line, separators=(",", ":")), flush=True)
    for error in res.errors:
        print(f"bench: {error}", file=sys.stderr)
    return 1 if res.errors else 0
