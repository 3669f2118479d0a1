"""The report of ``cxr-node bench``: ratios, targets (measured, pass/fail), the table and the
one-line JSON document."""

from __future__ import annotations

from typing import Any

from node.bench.common import BASELINE_RAW_KEYS, SCALE_RAW_KEYS, Options, Results
from node.bench.overhead import OVERHEAD_RAW_KEYS
from node.bench.pipeline import CASES as PIPELINE_CASES
from node.bench.pipeline import PIPELINE_RAW_KEYS, derive_pipeline, pipeline_rows

#: (ratio or figure, comparison, target, what it is).
#: Issue #7's throughput ratios (``http_vs_model``, ...) are withdrawn by issue #17 and shown
#: without a target; the pipeline overhead (:mod:`node.bench.pipeline`) replaces them.
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    *((f"pipeline_{case}_overhead_ms", "<=", target, f"{what}: node CPU - model CPU, ms/image")
      for case, what, target in PIPELINE_CASES),
    ("score_p50_vs_reference", "<=", 1.5, "/score p50, 1 client / (decode + forward)"),
    ("gradcam_over_predict", "<=", 3.0, "Grad-CAM / PyTorch forward, 1 image"),
    ("node_gradcam_peak_anon_mb", "<=", 1000.0, "node peak anonymous RSS, default set, MB"),
    ("node_none_peak_anon_mb", "<=", 800.0, "node peak anonymous RSS, --explain none, MB"),
    ("ready_s", "<=", 10.0, "node start to ready, s (cold)"),
    ("scale_speedup", ">=", 1.8, "scaled node, 2 workers / 1 worker (model sleeps per batch)"),
    ("scale_min_worker_share", ">=", 0.3, "scaled node, 2 workers: the smaller share of batches"),
    ("node_vs_baseline", ">=", 3.0, "node /score, N clients / naive script under azmlinfsrv"),
    ("deploy_vs_baseline", ">=", 2.0, "deploy/score.py, N clients / naive script, both azmlinfsrv"),
    ("p50_vs_baseline", "<=", 0.35, "node /score p50, 1 client / naive script's p50"),
)
#: Raw figures in the JSON ``raw`` object, in table order; units in the key (s, ips, mb).
RAW_KEYS = (
    "decode_s", "preprocess_s",
    "torch_single_latency_s", "torch_single_ips", "torch_batch_latency_s", "torch_batch_ips",
    "onnx_single_latency_s", "onnx_single_ips", "onnx_batch_latency_s", "onnx_batch_ips",
    "gradcam_s", "shap_s", "model_gradcam_batch_ips", "build_results_s", "result_set_mb",
    "ready_s", "fast_path_s", "ready_warm_s", "node_ready_rss_mb", "node_ready_peak_rss_mb",
    "node_gradcam_peak_rss_mb", "node_gradcam_peak_anon_mb",
    "node_none_peak_rss_mb", "node_none_peak_anon_mb", "node_peak_rss_mb",
    "http_single_ips", "http_single_p50_s", "http_single_p95_s",
    "http_concurrent_ips", "http_concurrent_p50_s", "http_concurrent_p95_s",
    "dimse_gradcam_ips", "dimse_gradcam_wall_s", "dimse_gradcam_send_s",
    "dimse_none_ips", "dimse_none_wall_s", "dimse_none_send_s",
    "score_reference_s",
    "onnx_batch_cpu_s", "model_gradcam_cpu_s", "http_concurrent_node_cpu_s",
    "dimse_gradcam_node_cpu_s", "dimse_none_node_cpu_s",
    *SCALE_RAW_KEYS, *BASELINE_RAW_KEYS, *OVERHEAD_RAW_KEYS, *PIPELINE_RAW_KEYS,
)


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def derive(res: Results) -> dict[str, float | None]:
    """Ratios (and the derived raw figures ``score_reference_s``, ``node_peak_rss_mb``)."""
    r = res.raw
    peaks = [v for v in (r.get("node_gradcam_peak_rss_mb"), r.get("node_none_peak_rss_mb"))
             if v is not None]
    res.put("node_peak_rss_mb", max(peaks) if peaks else None)
    # /score does: parse, decode + VOI, preprocess, one forward pass on the node's backend.
    onnx = "onnxruntime" in str(res.info.get("node_backend") or "onnxruntime")
    forward = r.get("onnx_single_latency_s" if onnx else "torch_single_latency_s")
    parts = (r.get("decode_s"), r.get("preprocess_s"), forward)
    res.put("score_reference_s",
            None if None in parts else sum(x for x in parts if x is not None))
    derive_pipeline(res)
    return {
        "http_vs_model": _div(r.get("http_concurrent_ips"), r.get("onnx_batch_ips")),
        "dimse_vs_model": _div(r.get("dimse_gradcam_ips"), r.get("model_gradcam_batch_ips")),
        "dimse_noexplain_vs_model": _div(r.get("dimse_none_ips"), r.get("onnx_batch_ips")),
        "gradcam_over_predict": _div(r.get("gradcam_s"), r.get("torch_single_latency_s")),
        "shap_over_predict": _div(r.get("shap_s"), r.get("torch_single_latency_s")),
        "score_p50_vs_reference": _div(r.get("http_single_p50_s"), r.get("score_reference_s")),
        "scale_speedup": _div(r.get("scale_2_workers_ips"), r.get("scale_1_worker_ips")),
        "node_vs_baseline": _div(r.get("http_concurrent_ips"), r.get("baseline_concurrent_ips")),
        "deploy_vs_baseline": _div(r.get("deploy_concurrent_ips"),
                                   r.get("baseline_concurrent_ips")),
        "p50_vs_baseline": _div(r.get("http_single_p50_s"), r.get("baseline_single_p50_s")),
    }


def targets(ratios: dict[str, float | None], raw: dict[str, float | None]) -> dict[str, dict]:
    out = {}
    for name, op, target, what in TARGETS:
        value = ratios.get(name, raw.get(name))
        ok = None if value is None else value >= target if op == ">=" else value <= target
        out[name] = {"target": f"{op} {target:g}", "measured": _round(value), "pass": ok,
                     "what": what}
    return out


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else float(f"{v:.{digits}g}")


def fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 0.1:
        return f"{v * 1000:.1f} ms"
    return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"


def fmt_ips(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} img/s"


def fmt_mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MB"


def _row(label: str, *cells: str) -> str:
    return f"  {label:<46}" + "".join(f"{c:>14}" for c in cells)


def table(opts: Options, res: Results, ratios: dict[str, float | None],
          checks: dict[str, dict]) -> str:
    r, info = res.raw, res.info
    model = info.get("model", {})
    images = info.get("images", {})
    image_set = info.get("image_set", {})
    m = info.get("machine", {})
    b = opts.batch_size
    lines = [
        f"cxr-node bench: model {model.get('name', '?')} {model.get('version', '')} "
        f"(sha256 {str(model.get('sha256', ''))[:12]}), node backend "
        f"{info.get('node_backend') or '-'}",
        f"images: {images.get('distinct', '?')} distinct (first {images.get('first', '?')}, "
        f"{images.get('rows', '?')}x{images.get('columns', '?')}); {opts.count} per end-to-end "
        f"phase; {opts.clients} clients; batch {b}; {m.get('cpus', '?')} CPU(s), "
        f"{m.get('torch_threads', '?')} thread(s); load average {m.get('loadavg_start', ['?'])[0]}"
        f" -> {m.get('loadavg_end', ['?'])[0]}"
        + ("" if m.get("steal") is None else f"; CPU stolen by the host {m['steal']:.0%}"),
        f"image set ({image_set.get('source', '?')}): " + "; ".join(
            ", ".join(f"{n} {k}{unit}" for k, n in image_set.get(part, {}).items())
            for part, unit in (("transfer_syntaxes", ""), ("photometric", ""),
                               ("modality", ""), ("bits_allocated", "-bit"))),
        "",
        _row("Model only (bench process, same inputs)", "latency", "throughput"),
        _row("decode (parse + VOI), 1 image", fmt_s(r.get("decode_s")), ""),
        _row("preprocess (scale, crop, resize), 1 image", fmt_s(r.get("preprocess_s")), ""),
    ]
    for name, prefix in (("PyTorch eager", "torch"), ("ONNX Runtime", "onnx")):
        for key, n in (("single", 1), ("batch", b)):
            lines.append(_row(f"{name}, batch {n}", fmt_s(r.get(f"{prefix}_{key}_latency_s")),
                              fmt_ips(r.get(f"{prefix}_{key}_ips"))))
    lines += [
        _row("Grad-CAM, 1 image", fmt_s(r.get("gradcam_s")), ""),
        _row(f"SHAP (nsamples {opts.shap_nsamples or 'default'}), 1 image",
             fmt_s(r.get("shap_s")), ""),
        _row(f"forward (PyTorch, batch {b}) + Grad-CAM of each", "",
             fmt_ips(r.get("model_gradcam_batch_ips"))),
        _row("build + encode the default result set (SR + capture), 1 image",
             fmt_s(r.get("build_results_s")), fmt_mb(r.get("result_set_mb"))),
        "",
        _row("Node (cxr-node serve, subprocess)", "p50 / wall", "throughput", "p95 / send"),
        _row("start to ready, cold (empty spool)", fmt_s(r.get("ready_s"))),
        _row("start to ONNX fast path, cold (exported after ready)",
             fmt_s(r.get("fast_path_s"))),
        _row("start to ready, warm (restart, same spool)", fmt_s(r.get("ready_warm_s"))),
        _row("RSS at ready / peak until ready (cold start)", fmt_mb(r.get("node_ready_rss_mb")),
             fmt_mb(r.get("node_ready_peak_rss_mb"))),
        _row("peak RSS / anon (Grad-CAM node, HTTP+DIMSE)",
             fmt_mb(r.get("node_gradcam_peak_rss_mb")), fmt_mb(r.get("node_gradcam_peak_anon_mb"))),
        _row("peak RSS / anon (explain none node)", fmt_mb(r.get("node_none_peak_rss_mb")),
             fmt_mb(r.get("node_none_peak_anon_mb"))),
    ]
    for key, clients in (("single", 1), ("concurrent", opts.clients)):
        lines.append(_row(f"HTTP /score, no explanation, {clients} client(s)",
                          fmt_s(r.get(f"http_{key}_p50_s")), fmt_ips(r.get(f"http_{key}_ips")),
                          fmt_s(r.get(f"http_{key}_p95_s"))))
    for key, label in (("dimse_gradcam", "DIMSE in/out, Grad-CAM (SR+SC)"),
                       ("dimse_none", "DIMSE in/out, explain none (SR)")):
        lines.append(_row(label, fmt_s(r.get(f"{key}_wall_s")), fmt_ips(r.get(f"{key}_ips")),
                          fmt_s(r.get(f"{key}_send_s"))))
        got = info.get(key, {}).get("received")
        if got:
            lines.append("    received: " + ", ".join(
                f"{v['count']} {name} ({v['mean_mb']:.2f} MB each)" for name, v in got.items()))
    lines += ["", _row("CPU per image (every thread of the process)", "CPU",
                       "model's share")]
    for label, key, model_key in (
        (f"model: ONNX Runtime, batch {b}", "onnx_batch_cpu_s", None),
        (f"model: PyTorch batch {b} + Grad-CAM of each", "model_gradcam_cpu_s", None),
        (f"node: HTTP /score, {opts.clients} client(s)", "http_concurrent_node_cpu_s",
         "onnx_batch_cpu_s"),
        ("node: DIMSE, Grad-CAM (SR+SC)", "dimse_gradcam_node_cpu_s", "model_gradcam_cpu_s"),
        ("node: DIMSE, explain none (SR)", "dimse_none_node_cpu_s", "onnx_batch_cpu_s"),
    ):
        share = _div(r.get(model_key), r.get(key)) if model_key else None
        lines.append(_row(label, fmt_s(r.get(key)), "" if share is None else f"{share:.0%}"))
    lines += baseline_rows(opts, res)
    lines += scale_rows(res)
    lines += pipeline_rows(res, _row)
    lines += overhead_rows(res)
    lines += ["", _row("Targets (reported, never enforced)", "target", "measured", "result")]
    for name, c in checks.items():
        verdict = "-" if c["pass"] is None else "pass" if c["pass"] else "FAIL"
        measured = "-" if c["measured"] is None else f"{c['measured']:.3g}"
        lines.append(_row(name, c["target"], measured, verdict))
    for name in ratios:
        if name not in checks:
            v = ratios[name]
            lines.append(_row(name, "(none)", "-" if v is None else f"{v:.3g}", ""))
    if res.errors:
        lines += ["", "Problems:"] + [f"  {e}" for e in res.errors]
    return "\n".join(lines)


def baseline_rows(opts: Options, res: Results) -> list[str]:
    """The baseline phase's lines (a note when it was skipped, none when left out)."""
    r, info = res.raw, res.info.get("baseline")
    if info is None:
        return []
    if "skipped" in info:
        return ["", f"  Naive service under azmlinfsrv: skipped: {info['skipped']}"]
    settings = " ".join(f"{k}={v}" for k, v in info.get("deploy_settings", {}).items()
                        if k in ("WORKER_COUNT", "GUNICORN_CMD_ARGS"))
    lines = ["", _row("Against a naive service (azmlinfsrv, same images)", "p50",
                      "throughput", "p95")]
    for name, label in (("baseline", "naive script, WORKER_COUNT=1"),
                        ("deploy", f"deploy/score.py, {settings or 'Dockerfile settings'}")):
        for key, clients in (("single", 1), ("concurrent", opts.clients)):
            lines.append(_row(f"{label}, {clients} client(s)",
                              fmt_s(r.get(f"{name}_{key}_p50_s")),
                              fmt_ips(r.get(f"{name}_{key}_ips")),
                              fmt_s(r.get(f"{name}_{key}_p95_s"))))
    return lines


def scale_rows(res: Results) -> list[str]:
    """The scale phase's lines of the table (a note when it was skipped, none when left out)."""
    r, info = res.raw, res.info.get("scale")
    if info is None:
        return []
    if "skipped" in info:
        return ["", f"  Scaled node (1 receiver, 1 sender, workers): skipped: {info['skipped']}"]
    shares = ", ".join(f"{n} {v:.0%}" for n, v in info.get("shares_2_workers", {}).items())
    return [
        "",
        _row(f"Scaled node: model sleeping {info['sleep_s']:g} s per batch of "
             f"{info['batch_size']}", "wall", "throughput"),
        _row(f"1 worker, {info['count']} images ({info['rows']}x{info['columns']})",
             fmt_s(r.get("scale_1_worker_wall_s")), fmt_ips(r.get("scale_1_worker_ips"))),
        _row(f"2 workers, {info['count']} images", fmt_s(r.get("scale_2_workers_wall_s")),
             fmt_ips(r.get("scale_2_workers_ips"))),
    ] + ([f"    batches of the 2-worker run: {shares}"] if shares else [])


def overhead_rows(res: Results) -> list[str]:
    """The node's own steps, each alone on the uncompressed NEMA CR (none when left out)."""
    steps = [(k, res.raw.get(k)) for k in OVERHEAD_RAW_KEYS if res.raw.get(k) is not None]
    if not steps:
        return []
    return ["", _row("Node's own steps, each alone (NEMA CR)", "CPU/image")] + [
        _row(k.removeprefix("overhead_").removesuffix("_ms").replace("_", " "), f"{v:.1f} ms")
        for k, v in steps]


def report(opts: Options, res: Results) -> tuple[str, dict[str, Any]]:
    """The table and the JSON document."""
    ratios = derive(res)
    checks = targets(ratios, res.raw)
    document = {
        "cxr_node_bench": 1,
        "ratios": {k: _round(v) for k, v in ratios.items()},
        "raw": {k: _round(res.raw.get(k), 6) for k in RAW_KEYS},
        "targets": checks,
        "model": res.info.get("model"),
        "node_backend": res.info.get("node_backend"),
        "images": res.info.get("images"),
        "image_set": res.info.get("image_set"),
        "baseline": res.info.get("baseline"),
        "dimse": {k: res.info[k] for k in ("dimse_gradcam", "dimse_none") if k in res.info},
        "node_jobs": res.info.get("node_gradcam_jobs"),
        "scale": res.info.get("scale"),
        "settings": {"count": opts.count, "scale_count": opts.scale_count,
                     "clients": opts.clients, "batch_size": opts.batch_size,
                     "threads": opts.threads, "repeat": opts.repeat,
                     "shap_nsamples": opts.shap_nsamples, "node_args": opts.node_args,
                     "skipped": sorted(opts.skip)},
        "machine": res.info.get("machine"),
        "bench_s": res.info.get("bench_s"),
        "errors": res.errors,
    }
    return table(opts, res, ratios, checks), document
