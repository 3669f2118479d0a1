"""Azure ML entry script: the node's ``POST /score`` behind the Azure ML inference server.

Run by ``azmlinfsrv --entry_script deploy/score.py`` (the Docker image, a local test) or by an
Azure ML deployment (``deploy/aci.py``). ``init()`` loads the weights and model card found in
``AZUREML_MODEL_DIR`` (rule: :mod:`deploy.modeldir`); ``run()`` answers

* ``POST``: one DICOM radiograph, as the raw body (``application/dicom`` or
  ``application/octet-stream``) or as multipart form field ``image``; the answer is the JSON
  of the node's ``POST /score`` (:func:`node.core.scoring.score_document`), built by the same core.
  ``?explain=gradcam|gradcampp|shap`` adds the explanation with its overlay, as ``/score``.
* ``GET``: the model card (JSON).

Errors are JSON ``{"error", "reason", "code"}`` with a 4xx status, never a 200: 400 not a
readable image, 413 body over ``CXR_NODE_HTTP_MAX_BODY_MB`` (default 64), 415 other media
types, 422 declined by the input gate (lateral view, not a chest radiograph...) or an invalid
request (unknown ``explain``, no ``image`` field); 500 only for a fault of the service.

Concurrent requests (gunicorn threads, ``GUNICORN_CMD_ARGS="--threads N"``; the image runs
2 workers of 2 threads, README's Azure section says why) each read, decode and preprocess in
their own thread; the model inputs ready at the same time then go through one forward
together (:class:`deploy.batching.Batcher`), and each request builds its own answer. A
request is never held back to fill a batch unless ``CXR_NODE_MAX_QUEUE_DELAY_MS`` says so.

Environment: ``AZUREML_MODEL_DIR`` (set by Azure and azmlinfsrv), ``CXR_NODE_MODEL_FILE`` and
``CXR_NODE_MODEL_CARD`` (see :mod:`deploy.modeldir`), ``CXR_NODE_HTTP_MAX_BODY_MB``,
``CXR_NODE_DEVICE`` (``cpu``, ``cuda``; default ``cuda`` when available), ``CXR_NODE_THREADS``
(PyTorch and ONNX Runtime threads per worker; default the cores divided by ``WORKER_COUNT``),
``CXR_NODE_ONNX_FAST_PATH`` and ``CXR_NODE_ONNX_CACHE`` (CPU only), ``CXR_NODE_BATCH_SIZE``
(most images per forward, default 8),
``CXR_NODE_MAX_QUEUE_DELAY_MS`` (wait for requests still decoding before a forward; default 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from werkzeug.wrappers import Request

from deploy.batching import Batcher
from deploy.modeldir import find_card, find_weights
from domain import check_explain
from inference import LoadedModel, Scored, configure_threads, load_model, post_process, pre_process
from node.core.errors import Problem, problem_for
from node.core.memory import trim
from node.core.pipeline import Pipeline
from node.core.scoring import read_upload, score_document

# azmlinfsrv imports this file as module "entry_module": log under the project's name.
logger = logging.getLogger("deploy.score" if __name__ == "entry_module" else __name__)

DICOM_TYPES = ("application/dicom", "application/octet-stream")
MAX_BODY_ENV = "CXR_NODE_HTTP_MAX_BODY_MB"
DEFAULT_MAX_BODY_MB = 64.0
BATCH_SIZE_ENV = "CXR_NODE_BATCH_SIZE"
DEFAULT_BATCH_SIZE = 8
QUEUE_DELAY_ENV = "CXR_NODE_MAX_QUEUE_DELAY_MS"
#: On a refusal, read and drop at most this much of the unread body so that the client gets
#: the answer instead of a connection reset; a larger body is cut off.
DRAIN_MAX_BYTES = 256 * 2**20
CHUNK = 1 << 16

model: LoadedModel | None = None
pipeline: Pipeline | None = None
batcher: Batcher | None = None
max_body = int(DEFAULT_MAX_BODY_MB * 2**20)
#: POST requests being answered now: the last one out gives freed memory back (:func:`trim`);
#: under load, trimming after every request would only make the next one fault its pages in.
_busy = 0
_busy_lock = threading.Lock()


class HttpError(Exception):
    """A request the service refuses: its :class:`~node.core.errors.Problem`."""

    def __init__(self, status: int, error: str, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.problem = Problem(status, error, reason, code or error)


def body_limit() -> int:
    """The largest request body in bytes, from ``CXR_NODE_HTTP_MAX_BODY_MB``."""
    value = os.environ.get(MAX_BODY_ENV, "").strip()
    try:
        mb = float(value) if value else DEFAULT_MAX_BODY_MB
    except ValueError:
        raise ValueError(f"{MAX_BODY_ENV}={value!r} is not a number of MiB") from None
    if mb <= 0:
        raise ValueError(f"{MAX_BODY_ENV}={value!r} must be > 0")
    return int(mb * 2**20)


def batch_settings() -> tuple[int, float]:
    """Most images per forward and the wait for requests still decoding (seconds), from
    ``CXR_NODE_BATCH_SIZE`` and ``CXR_NODE_MAX_QUEUE_DELAY_MS``."""
    size = os.environ.get(BATCH_SIZE_ENV, "").strip()
    delay = os.environ.get(QUEUE_DELAY_ENV, "").strip()
    try:
        batch_size = int(size) if size else DEFAULT_BATCH_SIZE
    except ValueError:
        raise ValueError(f"{BATCH_SIZE_ENV}={size!r} is not a whole number") from None
    try:
        delay_ms = float(delay) if delay else 0.0
    except ValueError:
        raise ValueError(f"{QUEUE_DELAY_ENV}={delay!r} is not a number of milliseconds") from None
    if batch_size < 1:
        raise ValueError(f"{BATCH_SIZE_ENV}={size!r} must be >= 1")
    if not 0 <= delay_ms <= 10_000:
        raise ValueError(f"{QUEUE_DELAY_ENV}={delay!r} must be between 0 and 10000")
    return batch_size, delay_ms / 1000


def _device() -> str:
    device = os.environ.get("CXR_NODE_DEVICE", "").strip().lower()
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _configure_logging() -> None:
    """Send this script's and the core's log records to the server's log stream.

    azmlinfsrv configures only its own loggers (the root logger gets a WARNING-level default),
    so the core's INFO records (model loaded, refusals) would be dropped. Loggers that
    already have handlers of their own are left alone.
    """
    handlers = logging.getLogger("azmlinfsrv").handlers or [logging.StreamHandler()]
    level = os.environ.get("AZUREML_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        level = "INFO"
    for name in (logger.name, "deploy", "dicom_io", "explain", "inference", "node"):
        named = logging.getLogger(name)
        if not named.handlers:
            named.handlers = list(handlers)
            named.setLevel(level)
            named.propagate = False


def init() -> None:
    """Load the model in ``AZUREML_MODEL_DIR`` and build the pipeline (once per worker)."""
    global model, pipeline, batcher, max_body
    _configure_logging()
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: no model folder to load")
    max_body = body_limit()
    batch_size, delay_s = batch_settings()
    weights = find_weights(model_dir)
    card = find_card(model_dir, weights)
    threads = os.environ.get("CXR_NODE_THREADS")
    threads_used = configure_threads(int(threads) if threads else threads_per_worker())
    device = _device()
    model = load_model(weights, card=card, device=device)
    fast_path = os.environ.get("CXR_NODE_ONNX_FAST_PATH", "true").lower() not in ("0", "false",
                                                                             "no")
    if fast_path and device == "cpu":
        # as the node does: ONNX Runtime predicts when it matches PyTorch within 1e-4 (on CPU
        # only: the session runs on ONNX Runtime's CPU provider, slower than PyTorch on a GPU)
        _enable_fast_path(model)
    pipeline = Pipeline(model, method="none", build_dicom=False)
    batcher = Batcher(model.probabilities, batch_size, delay_s, name="cxr-node-forward")
    logger.info("serving %s %s (sha256 %s, %s on %s) from %s; card %s; body limit %d bytes; "
                "up to %d images per forward, %d threads", model.card.name,
                model.card.version, model.sha256[:12], model.backend, device, weights.name,
                card.name if card else "built from the checkpoint", max_body, batch_size,
                threads_used)


def threads_per_worker() -> int:
    """Intra-op threads of each worker when ``CXR_NODE_THREADS`` is unset: the cores shared
    among azmlinfsrv's worker processes (``WORKER_COUNT``, which azmlinfsrv always sets), so
    that two workers on two cores do not run four threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    try:
        workers = int(os.environ.get("WORKER_COUNT", "1"))
    except ValueError:
        workers = 1
    return max(1, cores // max(1, workers))


def _enable_fast_path(model: LoadedModel) -> None:
    """Switch ``model`` to ONNX Runtime, exporting it once into ``CXR_NODE_ONNX_CACHE``.

    Workers start together: the first to take the cache's lock exports, the others wait and
    then read its file, instead of each spending the export's CPU and memory at once.
    """
    import tempfile

    from inference.export import enable_onnx_fast_path

    cache = os.environ.get("CXR_NODE_ONNX_CACHE") or os.path.join(tempfile.gettempdir(),
                                                                   "cxr-node-onnx")
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".export.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        enable_onnx_fast_path(model, cache)


def _error(problem: Problem) -> AMLResponse:
    return AMLResponse(problem.body(), problem.status, problem.headers, json_str=True)


def _drain(stream: Any, budget: int) -> None:
    """Read and drop what is left of a refused body, up to ``budget`` bytes."""
    try:
        while budget > 0 and (chunk := stream.read(min(CHUNK, budget))):
            budget -= len(chunk)
    except Exception:  # the client went away: nothing left to answer
        return


def read_body(request: AMLRequest, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes without keeping it."""
    length = request.content_length
    if length is not None and length > limit:
        raise HttpError(413, "too-large", f"body of {length} bytes exceeds {limit}")
    stream = request.stream
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too-large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def upload_bytes(request: AMLRequest, limit: int) -> bytes:
    """The DICOM file of a request: the raw body, or multipart form field ``image``."""
    content_type = request.mimetype
    if content_type == "multipart/form-data":
        body = read_body(request, limit)
        form = Request.from_values(input_stream=io.BytesIO(body), content_length=len(body),
                                   content_type=request.content_type, method="POST")
        image = form.files.get("image")
        if image is None:
            raise HttpError(422, "invalid-request", "multipart form field 'image' is missing")
        return image.read()
    if content_type not in DICOM_TYPES:
        raise HttpError(415, "unsupported-media-type",
                        f"Content-Type {request.content_type or 'absent'}: send "
                        "application/dicom or multipart/form-data with field 'image'")
    return read_body(request, limit)


def explain_method(request: AMLRequest) -> str:
    """The ``explain`` query parameter, checked."""
    try:
        return check_explain(request.args.get("explain", "none"))
    except ValueError as e:
        raise HttpError(422, "invalid-request", str(e)) from None


def score_image(data: bytes, explain: str,
                submit: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Parse, gate, decode and score one upload through the core; the ``/score`` document.

    Decoding and preprocessing run in the calling (request) thread; the forward goes with
    those of the requests waiting at the same time, through ``submit`` (an announced slot of
    :meth:`deploy.batching.Batcher.expect`) or the batcher itself; the explanation and the
    document are this request's own.
    """
    assert model is not None and pipeline is not None and batcher is not None, \
        "init() has not run"
    image = read_upload(data)
    x, geometry = pre_process(image.pixels, image.maxval, model.card.preprocessing)
    probabilities = (submit or batcher)(x)
    scored = Scored(image, post_process(probabilities, model.card), geometry, x)
    outcome = pipeline.complete(scored, method=explain, build_dicom=False)
    return score_document(model, outcome, explain != "none")


@contextlib.contextmanager
def _busy_request() -> Iterator[None]:
    """Count a POST while it is answered; the last one out trims the heap."""
    global _busy
    with _busy_lock:
        _busy += 1
    try:
        yield
    finally:
        with _busy_lock:
            _busy -= 1
            last = _busy == 0
        if last:
            trim()  # no image in flight: give the freed pages back


@rawhttp
def run(request: AMLRequest) -> AMLResponse:
    """Answer one request: POST scores an image, GET returns the model card."""
    assert model is not None, "init() has not run"
    if request.method == "GET":
        return AMLResponse(model.card.to_dict(), 200, json_str=True)
    if request.method == "OPTIONS":
        return AMLResponse("", 204, {"Allow": "GET, POST, OPTIONS"})
    if request.method != "POST":
        return _error(Problem(405, "method-not-allowed",
                              f"{request.method}: use POST (score) or GET (model card)",
                              "method-not-allowed"))
    assert batcher is not None, "init() has not run"
    start = time.perf_counter()
    with _busy_request():
        try:
            explain = explain_method(request)
            with batcher.expect() as submit:  # a forward with room may wait for this one
                document = score_image(upload_bytes(request, max_body), explain, submit)
        except Exception as e:
            problem = e.problem if isinstance(e, HttpError) else problem_for(e)
            if problem.status >= 500:
                logger.exception("scoring failed")
            else:
                logger.info("refused %d %s", problem.status, problem.code)
                if (request.content_length or 0) <= DRAIN_MAX_BYTES:
                    _drain(request.stream, DRAIN_MAX_BYTES)
            return _error(problem)
    logger.info("scored in %.0f ms", (time.perf_counter() - start) * 1000)
    return AMLResponse(document, 200, json_str=True)
