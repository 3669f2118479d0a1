"""``cxr-node bench``: how fast is this node on this machine, on real radiographs, in one run.

Phases (each may be skipped with ``--skip``, except the model-only forward passes):

* model only, in this process, on the same preprocessed inputs: PyTorch eager and ONNX Runtime
  at batch 1 and at ``--batch-size``; Grad-CAM and SHAP per image; forward (PyTorch, batch)
  plus Grad-CAM of every image in the batch; building the SR/SC/PM results;
* the node as a subprocess (``cxr-node serve`` on free ports of 127.0.0.1, a temporary spool):
  time from launch to ready, HTTP ``/score`` with 1 and ``--clients`` concurrent clients, DIMSE
  C-STORE in and results out to a receiving SCP in this process (Grad-CAM: SR + capture), then
  a second node with ``--explain none`` (SR only) on the same spool (a warm restart); peak RSS;
* baseline (where azmlinfsrv is installed): a naive scoring script under the Azure ML inference
  server, then ``deploy/score.py`` under it, on the same images with 1 and ``--clients``
  clients: the node's and the deployment's speed against what a user would otherwise write
  (:mod:`node.bench.baseline`);
* scale (where RabbitMQ and PostgreSQL are installed): a scaled node's roles as processes with
  a model that sleeps per batch, one worker then two: the speed-up and each worker's share
  (:mod:`node.bench.scale`).

The images: ``--images``, else a mixed set in the encodings a PACS sends, made once into a
cache (:mod:`node.bench.image_set`); every end-to-end phase sends the same bodies in turn.

Prints a table, then, last, one JSON line with the ratios, raw figures and targets. Targets are
reported (pass/fail), never enforced: the exit status is 1 only when a phase could not run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from node.bench.baseline import measure_baseline
from node.bench.common import Options, Results, phase, progress
from node.bench.e2e import MeasuredNode, class_names, dimse_send, http_load
from node.bench.harness import ResultReceiver
from node.bench.images import BenchImage, bench_images
from node.bench.model_only import in_worker_thread, load, measure_model, onnx_of
from node.bench.overhead import measure_overhead
from node.bench.pipeline import batch_totals, mean_batch, measure_model_side
from node.bench.report import report
from node.bench.scale import measure_scale

__all__ = ["Options", "run"]


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


def _put_cpu(res: Results, key: str, before: float | None, after: float | None,
             images: int) -> None:
    """The node's CPU seconds per image over a phase (every thread of the process)."""
    if before is not None and after is not None and images:
        res.put(key, (after - before) / images)


def _http(opts: Options, node: MeasuredNode, images: list[BenchImage], res: Results) -> None:
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


def _dimse(opts: Options, node: MeasuredNode, receiver: ResultReceiver, datasets: list,
           explain: str, res: Results, key: str | None = None) -> None:
    from dicom_io.results import instance_uid

    sha = node.get("/readyz")[1]["model"]["sha256"]
    kinds = ("sr",) if explain == "none" else ("sr", "sc")  # the parametric map: opt-in
    key = key or ("dimse_none" if explain == "none" else "dimse_gradcam")

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
    cpu, batches = node.cpu_s(), batch_totals(node.metrics())
    run = dimse_send(node.dicom_port, node.ae_title, datasets, opts.count)
    got = receiver.wait_for(expected(run.sent), opts.timeout_s, idle)
    _put_cpu(res, f"{key}_node_cpu_s", cpu, node.cpu_s(), len(run.sent))
    res.put(f"{key}_mean_batch", mean_batch(batches, batch_totals(node.metrics())))
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


def _pipeline_score(opts: Options, node: MeasuredNode, overhead: BenchImage,
                    res: Results) -> None:
    """``/score`` on the overhead image alone: the node's CPU per image and its mean batch."""
    progress(f"pipeline: HTTP /score, {opts.count} x {overhead.name}, {opts.clients} clients")
    http_load(node.http_port, [overhead.data], opts.clients, opts.clients, opts.timeout_s)
    cpu, batches = node.cpu_s(), batch_totals(node.metrics())
    run = http_load(node.http_port, [overhead.data], opts.count, opts.clients, opts.timeout_s)
    _put_cpu(res, "pipeline_score_node_cpu_s", cpu, node.cpu_s(), len(run.latencies))
    res.put("pipeline_score_mean_batch", mean_batch(batches, batch_totals(node.metrics())))
    if run.errors:
        res.errors.append(f"pipeline /score: {len(run.errors)} failed, first: {run.errors[0]}")


def measure_node(opts: Options, images: list[BenchImage], res: Results, work: Path,
                 overhead: BenchImage | None = None) -> None:
    """The node as a subprocess: ready time, HTTP, DIMSE with Grad-CAM, then explain none;
    with ``overhead``, each also on that image alone (:mod:`node.bench.pipeline`)."""
    import io

    import pydicom

    datasets = [pydicom.dcmread(io.BytesIO(image.data)) for image in images]
    alone = None if overhead is None else [pydicom.dcmread(io.BytesIO(overhead.data))]
    run_gradcam = not {"dimse", "gradcam"} & opts.skip
    run_none = not {"dimse", "noexplain"} & opts.skip
    receiver = ResultReceiver().start()
    try:
        node = MeasuredNode(work / "spool", opts.model, [receiver.address], "gradcam",
                            extra=_node_args(opts), log=work / "node-gradcam.log")
        progress("starting the node (--explain gradcam, empty spool)")
        if not phase(res, "node start", lambda: node.start(opts.timeout_s)):
            return
        res.put("ready_s", node.ready_s)
        res.put("node_ready_rss_mb", node.ready_rss_mb)
        res.put("node_ready_peak_rss_mb", node.ready_peak_rss_mb)
        # Cold, the ONNX export runs after ready: measure the node as it then runs.
        phase(res, "ONNX fast path",
              lambda: res.put("fast_path_s", node.wait_fast_path(opts.timeout_s)))
        res.info["node_backend"] = node.get("/readyz")[1].get("model", {}).get("backend")
        try:
            if "http" not in opts.skip:
                phase(res, "HTTP", lambda: _http(opts, node, images, res))
            if run_gradcam:
                phase(res, "DIMSE Grad-CAM",
                      lambda: _dimse(opts, node, receiver, datasets, "gradcam", res))
            if alone is not None and overhead is not None:
                if "http" not in opts.skip:
                    phase(res, "pipeline /score",
                          lambda: _pipeline_score(opts, node, overhead, res))
                if run_gradcam:
                    phase(res, "pipeline DIMSE default", lambda: _dimse(
                        opts, node, receiver, alone, "gradcam", res, "pipeline_dimse_default"))
            with contextlib.suppress(OSError, ValueError):
                res.info["node_gradcam_jobs"] = node.counts()
        finally:
            res.put("node_gradcam_peak_rss_mb", node.peak_rss_mb())
            res.put("node_gradcam_peak_anon_mb", node.peak_anon_mb)
            node.stop()
        if not run_none:
            return
        node = MeasuredNode(work / "spool", opts.model, [receiver.address], "none",
                            extra=_node_args(opts), log=work / "node-none.log")
        progress("restarting the node (--explain none, same spool)")
        if not phase(res, "node restart", lambda: node.start(opts.timeout_s)):
            return
        res.put("ready_warm_s", node.ready_s)
        try:
            phase(res, "DIMSE explain none",
                  lambda: _dimse(opts, node, receiver, datasets, "none", res))
            if alone is not None:
                phase(res, "pipeline DIMSE SR", lambda: _dimse(
                    opts, node, receiver, alone, "none", res, "pipeline_dimse_sr"))
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
    res = Results()
    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    cpu_start = cpu_times()
    image_set = bench_images(opts.images, opts.image_cache, progress)
    images = image_set.images
    res.info["image_set"] = image_set.info
    opts = opts.for_images(len(images))
    model = load(opts)
    with tempfile.TemporaryDirectory(prefix="cxr-node-bench-") as tmp:
        work = Path(tmp)
        if phase(res, "model only", lambda: in_worker_thread(
                lambda: measure_model(opts, model, images, res, work))):
            overhead = image_set.overhead if "overhead" not in opts.skip else None
            if overhead is not None:
                phase(res, "overhead", lambda: in_worker_thread(
                    lambda: measure_overhead(model, overhead.data, res)))
                phase(res, "pipeline model", lambda: in_worker_thread(
                    lambda: measure_model_side(opts, model, onnx_of(opts, model, work),
                                               overhead.data, res)))
            del model  # the node's figures should not share the machine with it
            gc.collect()
            if not {"http", "dimse"} <= opts.skip:
                measure_node(opts, images, res, work, overhead)
            if "baseline" not in opts.skip:  # after the node: neither shares the machine
                phase(res, "baseline", lambda: measure_baseline(opts, images, res, work))
        if "scale" not in opts.skip:  # its own model (sleepy): needs nothing above
            phase(res, "scale", lambda: measure_scale(opts, images, res, work))
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
