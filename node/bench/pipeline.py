"""The pipeline overhead of issue #17 (target 1): the node's own CPU per image, end to end.

On the uncompressed NEMA CR (the overhead image), three end-to-end runs of the node under test:

* ``score``: ``POST /score`` without explanation, ``--clients`` clients;
* ``dimse_sr``: C-STORE in, the SR out (the ``--explain none`` node);
* ``dimse_default``: C-STORE in, the default result set out (Grad-CAM of the explained
  findings, SR with regions, compact capture).

For each, the node's CPU per image (``/proc``, every thread) and the mean batch size it ran
(the ``cxr_inference_batch_size`` histogram of its ``/metrics``, before and after). The
overhead is that CPU minus the model's CPU per image **at the node's engine and that mean batch
size**, measured in the bench process on the same preprocessed image (:func:`measure_model_side`:
ONNX Runtime and PyTorch at batch 1, 2, 4, ... ``--batch-size``, interpolated), plus, for the
default set, the model-only cost of the same explanations (``explain_labels`` on the labels the
node explains). The overhead phase (:mod:`node.bench.overhead`) breaks it down by step.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from node.bench.common import Options, Results, progress
from node.bench.overhead import cpu_ms

#: (case, what it is, target in ms per image).
CASES: tuple[tuple[str, str, float], ...] = (
    ("score", "HTTP /score, no explanation", 15.0),
    ("dimse_sr", "DIMSE in and out, SR only", 25.0),
    ("dimse_default", "DIMSE in and out, default result set", 40.0),
)
#: Per case: the node's CPU per image, its mean batch size, and the overhead (JSON ``raw``).
PIPELINE_RAW_KEYS = tuple(f"pipeline_{case}_{key}" for case, _, _ in CASES
                          for key in ("node_cpu_ms", "mean_batch", "model_cpu_ms", "overhead_ms"))
_BATCH = re.compile(r"^cxr_inference_batch_size_(sum|count)\s+([0-9.eE+-]+)$", re.M)


def batch_totals(metrics: str) -> tuple[float, float]:
    """(images, batches) so far, from the text of the node's ``/metrics``."""
    found = {name: float(value) for name, value in _BATCH.findall(metrics)}
    return found.get("sum", 0.0), found.get("count", 0.0)


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Images per forward pass between two :func:`batch_totals`."""
    batches = after[1] - before[1]
    return (after[0] - before[0]) / batches if batches > 0 else None


def batch_sizes(largest: int) -> list[int]:
    """1, 2, 4, ... up to ``largest`` (which is always included)."""
    sizes, b = [], 1
    while b < largest:
        sizes.append(b)
        b *= 2
    return [*sizes, largest]


def interpolate(curve: dict[int, float], batch: float) -> float:
    """CPU per image at a (mean, fractional) batch size, linear between measured sizes."""
    sizes = sorted(curve)
    if batch <= sizes[0]:
        return curve[sizes[0]]
    for low, high in itertools.pairwise(sizes):
        if batch <= high:
            t = (batch - low) / (high - low)
            return curve[low] + t * (curve[high] - curve[low])
    return curve[sizes[-1]]


def measure_model_side(opts: Options, model: Any, onnx_model: Any | None, data: bytes,
                       res: Results) -> None:
    """The model's CPU per image on the overhead image, in this process: forward on each
    engine at each batch size, and the default explanations of that image."""
    import numpy as np

    from dicom_io import from_dataset, read_dataset
    from inference import post_process, pre_process
    from inference.predict import Scored

    progress("pipeline: the model's own CPU per image on the NEMA CR, by engine and batch")
    source = from_dataset(read_dataset(data), "overhead")
    x, geometry = pre_process(source.pixels, source.maxval, model.card.preprocessing)
    curves: dict[str, dict[int, float]] = {}
    for engine, m in (("torch", model if model.module is not None else None),
                      ("onnxruntime", onnx_model)):
        if m is None:
            continue
        curves[engine] = {}
        for b in batch_sizes(opts.batch_size):
            batch = np.ascontiguousarray(np.stack([x] * b).astype(np.float32))
            curves[engine][b] = cpu_ms(lambda m=m, batch=batch: m.probabilities(batch),
                                       max(1, opts.repeat)) / 1000 / b
    info: dict[str, Any] = {"forward_cpu_s": curves}
    if model.module is not None:
        from explain import explain_labels
        from node.core.pipeline import EXPLAINED_FINDINGS

        probabilities = model.probabilities(np.ascontiguousarray(x[None], dtype=np.float32))
        scored = Scored(source, post_process(probabilities[0], model.card), geometry, x)
        labels = scored.prediction.labels_to_explain(EXPLAINED_FINDINGS)
        info["explained_labels"] = len(labels)
        info["explain_cpu_s"] = cpu_ms(
            lambda: explain_labels(model, scored, labels, "gradcam"), max(1, opts.repeat)) / 1000
    res.info["pipeline_model"] = info


def model_cpu_s(res: Results, case: str, engine: str | None) -> float | None:
    """The model-only CPU per image for ``case`` at the node's engine and mean batch."""
    info = res.info.get("pipeline_model") or {}
    batch = res.raw.get(f"pipeline_{case}_mean_batch")
    curve = (info.get("forward_cpu_s") or {}).get(engine or "")
    if not curve or batch is None:
        return None
    forward = interpolate({int(k): v for k, v in curve.items()}, batch)
    if case != "dimse_default":
        return forward
    explain = info.get("explain_cpu_s")
    return None if explain is None else forward + explain


def derive_pipeline(res: Results) -> None:
    """Each case's model-only CPU and overhead (ms per image) into ``res.raw``."""
    backend = str(res.info.get("node_backend") or "")
    engine = "onnxruntime" if "onnx" in backend else "torch" if backend else None
    for case, _, _ in CASES:
        node_s = res.raw.get(f"pipeline_{case}_node_cpu_s")
        node_ms = None if node_s is None else node_s * 1000
        res.put(f"pipeline_{case}_node_cpu_ms", node_ms)
        model_s = model_cpu_s(res, case, engine)
        res.put(f"pipeline_{case}_model_cpu_ms", None if model_s is None else model_s * 1000)
        res.put(f"pipeline_{case}_overhead_ms",
                None if node_ms is None or model_s is None else node_ms - model_s * 1000)


def pipeline_rows(res: Results, row) -> list[str]:
    """The table's lines: per case, node CPU, mean batch, model-only CPU, overhead."""
    r = res.raw
    if all(r.get(f"pipeline_{case}_node_cpu_ms") is None for case, _, _ in CASES):
        return []
    info = res.info.get("pipeline_model") or {}
    lines = ["", row("Pipeline overhead (NEMA CR alone), CPU/image", "node", "mean batch",
                     "model only", "overhead")]
    for case, what, _ in CASES:
        cells = [r.get(f"pipeline_{case}_{k}") for k in
                 ("node_cpu_ms", "mean_batch", "model_cpu_ms", "overhead_ms")]
        lines.append(row(what, *("-" if v is None else f"{v:.1f}" + (" ms" if i != 1 else "")
                                 for i, v in enumerate(cells))))
    if "explained_labels" in info:
        lines.append(f"    model only, default set: forward at the mean batch + Grad-CAM of "
                     f"{info['explained_labels']} label(s) "
                     f"({info['explain_cpu_s'] * 1000:.0f} ms)")
    return lines
