"""The model-only figures of ``cxr-node bench``, in the bench process, on the same preprocessed
inputs the node would use: PyTorch eager and ONNX Runtime at batch 1 and at ``--batch-size``;
Grad-CAM and SHAP per image; forward plus Grad-CAM of a whole batch; building the results."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.bench.common import Options, Results, phase, progress
from node.bench.images import BenchImage

logger = logging.getLogger(__name__)


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
    from inference import pre_process

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
            phase(res, "Grad-CAM", lambda: _gradcam(opts, model, picks, inputs, res))
        if "shap" not in opts.skip:
            phase(res, "SHAP", lambda: _shap(opts, model, picks, inputs, res))
    else:
        res.errors.append(f"model backend {model.backend}: no PyTorch module, so no eager, "
                          "Grad-CAM or SHAP figures")

    progress(f"ONNX Runtime, batch 1 and {opts.batch_size}")

    phase(res, "ONNX Runtime",
          lambda: _forward(res, "onnx", onnx_of(opts, model, work), inputs, opts))


def onnx_of(opts: Options, model: Any, work: Path) -> Any:
    """``model`` on ONNX Runtime: itself when it is one, else its export (made once into
    ``work``), as the node's fast path runs it."""
    from inference import configure_threads, load_model

    if model.session is not None:
        return model
    path = work / "bench-model.onnx"
    if not path.exists():
        from inference.export import export_onnx

        export_onnx(model, path)
    onnx_model = load_model(path)
    configure_threads(opts.threads)  # opening the session set the cores present
    return onnx_model


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
    heatmap = explain(model, warm[0], method="gradcam")  # first run: hooks, explanation copy
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
        from explain.regions import region_of

        builder = builder_for(model)
        prediction = warm[0].prediction
        finding = next(f for f in prediction.findings if f.label == heatmap.label)
        regions = [region_of(heatmap, finding.probability, finding.threshold)]
        sizes: dict[str, int] = {}

        def build() -> None:  # as the worker does: build (the map's finding outlined), then
            results = builder.build(warm[0].image, prediction, heatmap,  # the Part 10 bytes
                                    regions=[r for r in regions if r is not None])
            for kind, _ in results.items():
                sizes[kind] = len(results.part10(kind))

        res.put("build_results_s", statistics.median(timed(build, 2)))
        res.put("result_set_mb", sum(sizes.values()) / 1e6)
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
