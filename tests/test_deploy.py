"""deploy/: score.py under the real Azure ML inference server, the model-folder rule, aci.py.

The server (``azmlinfsrv``) is started once for the module with a model folder laid out as
Azure ML lays out a model registered from a folder; its answers are compared with
``score_document`` computed in this process through the same core.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest
import requests

from deploy import aci
from deploy.modeldir import ModelDirError, card_candidates, find_card, find_weights
from inference import PADCHEST_LABELS, configure_threads, load_model
from inference.card import card_candidates as loader_card_candidates
from node.bench.harness import wait_until
from node.core.pipeline import Pipeline
from node.core.scoring import read_upload, score_document

ROOT = Path(__file__).resolve().parents[1]
SCORE_PY = ROOT / "deploy" / "score.py"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
START_TIMEOUT_S = 90
CARD = {
    "name": "cxr-deploy-test",
    "version": "0.0.1",
    "labels": list(PADCHEST_LABELS),
    "thresholds": {"Cardiomegaly": 0.42, "Effusion": 0.35},
}


def azmlinfsrv() -> str:
    path = Path(sys.executable).with_name("azmlinfsrv")
    if path.is_file():
        return str(path)
    found = shutil.which("azmlinfsrv")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("azmlinfsrv is not installed although the test extra installs it")
    pytest.skip("azmlinfsrv (azureml-inference-server-http) is not installed")


def dockerfile_env() -> dict[str, str]:
    """The ``ENV`` settings of ``deploy/Dockerfile`` (``KEY=VALUE`` forms, continued lines)."""
    import re
    import shlex

    out: dict[str, str] = {}
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        if line.startswith("ENV "):
            out.update(t.split("=", 1) for t in shlex.split(line[4:], comments=True))
    return out


def test_dockerfile_spreads_requests_over_workers_with_threads():
    """The image's service settings, as README's Azure section recommends them: workers,
    request threads in each, and a connection taken only by a worker with a free thread."""
    env = dockerfile_env()
    assert int(env["WORKER_COUNT"]) >= 1
    args = env["GUNICORN_CMD_ARGS"].split()
    threads = int(args[args.index("--threads") + 1])
    assert threads >= 2  # one request decodes while another's forward runs
    assert int(args[args.index("--worker-connections") + 1]) == threads
    assert args[args.index("--keep-alive") + 1] == "0"
    readme = (ROOT / "README.md").read_text()
    assert f"WORKER_COUNT={env['WORKER_COUNT']}" in readme
    assert env["GUNICORN_CMD_ARGS"] in readme


class ServerProcess(NamedTuple):
    proc: subprocess.Popen
    base: str
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def azure_model_dir(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path) -> Path:
    """``AZUREML_MODEL_DIR`` of a model registered from folder ``cxr-model``."""
    root = tmp_path_factory.mktemp("azureml-models")
    folder = root / "cxr-model"
    folder.mkdir()
    shutil.copy(whole_model_path, folder / whole_model_path.name)
    (folder / "model_card.json").write_text(json.dumps(CARD))
    return root


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``CXR_NODE_ONNX_CACHE`` of the in-process scorer; the expected answers' export."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def model(azure_model_dir: Path, onnx_cache: Path):
    from inference.export import enable_onnx_fast_path

    configure_threads()  # as score.py's init(): same threads, same float sums
    loaded = load_model(azure_model_dir / "cxr-model" / "pc-densenet-densenet-best.pt")
    enable_onnx_fast_path(loaded, onnx_cache)  # as score.py does
    return loaded


@pytest.fixture(scope="module")
def limit_bytes(cr_path: Path) -> int:
    """The server's body limit: the radiograph fits, 64 KiB more does not."""
    return cr_path.stat().st_size + 32 * 1024


@pytest.fixture(scope="module")
def server_process(azure_model_dir: Path, limit_bytes: int,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``azmlinfsrv --entry_script deploy/score.py`` on a free port, started, not waited for."""
    exe = azmlinfsrv()
    port = free_port()
    work = tmp_path_factory.mktemp("azmlinfsrv")
    log = work / "server.log"
    # gunicorn's threads as in the image; one worker, so that its threads (all cores) sum
    # the floats as ``expected`` does
    env = {**os.environ, "AZUREML_MODEL_DIR": str(azure_model_dir),
           "CXR_NODE_HTTP_MAX_BODY_MB": repr(limit_bytes / 2**20), "CXR_NODE_DEVICE": "cpu",
           "GUNICORN_CMD_ARGS": dockerfile_env()["GUNICORN_CMD_ARGS"], "WORKER_COUNT": "1"}
    env.pop("CXR_NODE_MODEL_FILE", None)
    env.pop("CXR_NODE_MODEL_CARD", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "--entry_script", str(SCORE_PY), "--port", str(port)],
                                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # gunicorn: quick shutdown
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def expected(server_process: ServerProcess, model, cr_path: Path) -> dict[str, dict]:
    """``/score``'s documents for the radiograph, by explain method, through Pipeline here.

    Computed while the server starts (it depends on ``server_process`` for that reason only).
    """
    data = cr_path.read_bytes()
    pipeline = Pipeline(model, method="none", build_dicom=False)
    scored = pipeline.score([read_upload(data)])[0]
    docs = {}
    for explain in ("none", "gradcam"):
        outcome = pipeline.complete(scored, method=explain, build_dicom=False)
        docs[explain] = json.loads(json.dumps(score_document(model, outcome, explain != "none")))
    return docs


@pytest.fixture(scope="module")
def server(server_process: ServerProcess, expected: dict) -> tuple[str, Path]:
    """The server once its liveness route answers: (score URL, log file)."""
    proc, base, log = server_process
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"azmlinfsrv exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if requests.get(base + "/", timeout=5).status_code == 200:
                return base + "/score", log
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or accepted while the worker is still in init()
        if time.monotonic() > deadline:
            pytest.fail(f"azmlinfsrv not up in {START_TIMEOUT_S} s:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.3)


def assert_error(response: requests.Response, status: int, error: str,
                 code: str | None = None) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "reason", "code"}
    assert body["error"] == error and body["reason"]
    if code is not None:
        assert body["code"] == code


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- scoring under the real server -------------------------------------------------------


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
@pytest.mark.parametrize("content_type", ["application/dicom", "application/octet-stream"])
def test_raw_body_gives_the_score_document(server, expected, model, cr_path: Path,
                                           content_type: str):
    url, _ = server
    r = requests.post(url, data=cr_path.read_bytes(), headers={"Content-Type": content_type},
                      timeout=60)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    want = expected["none"]
    assert doc == want
    assert [f["probability"] for f in doc["findings"]] == \
        [f["probability"] for f in want["findings"]]
    assert doc["result_uids"] == want["result_uids"] and set(doc["result_uids"]) == \
        {"sr", "sc"}  # the node's default result set (no parametric map)
    assert doc["model"]["name"] == CARD["name"] and doc["model"]["sha256"] == model.sha256
    assert "explanation" not in doc


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_multipart_image_with_gradcam(server, expected, cr_path: Path):
    url, _ = server
    r = requests.post(url, params={"explain": "gradcam"}, timeout=120,
                      files={"image": ("RG1_UNCR.dcm", cr_path.read_bytes(), "application/dicom")})
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    want = expected["gradcam"]
    assert doc["explanation"].get("overlay_png_base64"), doc["explanation"]
    assert doc == want


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_get_returns_the_model_card(server, model):
    url, _ = server
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    assert r.json() == model.card.to_dict()
    assert r.json()["thresholds"][PADCHEST_LABELS.index("Cardiomegaly")] == 0.42


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_lateral_view_is_declined_422(server, cr_path: Path):
    url, _ = server
    ds = pydicom.dcmread(cr_path)
    ds.ViewPosition = "LL"
    r = requests.post(url, data=dicom_bytes(ds), headers={"Content-Type": "application/dicom"},
                      timeout=30)
    assert_error(r, 422, "declined", "view")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
@pytest.mark.parametrize("data", [b"this is not DICOM" * 100, b""], ids=["garbage", "empty"])
def test_broken_input_is_400(server, data: bytes):
    url, _ = server
    r = requests.post(url, data=data, headers={"Content-Type": "application/dicom"}, timeout=30)
    assert_error(r, 400, "invalid-input")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_truncated_dicom_is_400(server, cr_path: Path):
    url, _ = server
    r = requests.post(url, data=cr_path.read_bytes()[:4000], timeout=30,
                      headers={"Content-Type": "application/octet-stream"})
    assert_error(r, 400, "invalid-input")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_wrong_media_type_is_415(server, cr_path: Path, content_type: str | None):
    url, _ = server
    headers = {"Content-Type": content_type} if content_type else {}
    r = requests.post(url, data=cr_path.read_bytes() if content_type else None,
                      headers=headers, timeout=30)
    assert_error(r, 415, "unsupported-media-type")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_body_over_the_limit_is_413(server, cr_path: Path, limit_bytes: int):
    url, _ = server
    data = cr_path.read_bytes() + b"\0" * (limit_bytes - cr_path.stat().st_size + 1)
    r = requests.post(url, data=data, headers={"Content-Type": "application/dicom"}, timeout=60)
    assert_error(r, 413, "too-large")
    r = requests.post(url, files={"image": ("big.dcm", data)}, timeout=60)
    assert_error(r, 413, "too-large")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_chunked_body_over_the_limit_is_413(server, limit_bytes: int):
    url, _ = server
    chunks = (b"\0" * 65536 for _ in range(limit_bytes // 65536 + 2))  # no Content-Length
    r = requests.post(url, data=chunks, headers={"Content-Type": "application/dicom"},
                      timeout=60)
    assert_error(r, 413, "too-large")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_invalid_requests_are_422(server, cr_path: Path):
    url, _ = server
    r = requests.post(url, files={"file": ("x.dcm", b"DICM")}, timeout=30)
    assert_error(r, 422, "invalid-request")
    r = requests.post(url, params={"explain": "magic"}, data=cr_path.read_bytes(),
                      headers={"Content-Type": "application/dicom"}, timeout=30)
    assert_error(r, 422, "invalid-request")


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_concurrent_requests_through_the_server(server, distinct_images: list[bytes],
                                                alone: list[dict]):
    """gunicorn's threads call run() at once: each client gets its own image's answer."""
    url, _ = server
    barrier = threading.Barrier(4)

    def one(i: int) -> requests.Response:
        barrier.wait()
        return requests.post(url, data=distinct_images[i], timeout=120,
                             headers={"Content-Type": "application/dicom"})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    for response, want in zip(responses, alone[:4], strict=True):
        assert response.status_code == 200, response.text[:500]
        assert_same_answer(response.json(), want)


@pytest.mark.system  # azmlinfsrv, the Azure scorer, as a process
def test_server_log_has_no_patient_data(server, cr_path: Path):
    """Runs after the scoring tests (file order): nothing of the patient in the log."""
    _, log = server
    text = log.read_text(errors="replace")
    assert "init has completed successfully" in text
    assert "serving cxr-deploy-test 0.0.1" in text  # score.py's own records reach the log
    assert "Using worker: gthread" in text  # the image's request threads were in use
    ds = pydicom.dcmread(cr_path, stop_before_pixels=True)
    for value in (str(ds.PatientName), str(ds.PatientID)):
        assert value and value not in text


# --- the model-folder rule (no server) ---------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_weights_found_at_top_or_one_level_down(tmp_path: Path):
    top = touch(tmp_path / "a" / "model.pt")
    assert find_weights(tmp_path / "a", env={}) == top
    nested = touch(tmp_path / "b" / "registered-folder" / "model.onnx")
    touch(tmp_path / "b" / "registered-folder" / "model.pt.card.json")
    assert find_weights(tmp_path / "b", env={}) == nested


def test_ambiguous_or_missing_weights_are_clear_errors(tmp_path: Path):
    touch(tmp_path / "one.pt")
    touch(tmp_path / "sub" / "two.pth")
    with pytest.raises(ModelDirError, match=r"2 weights files.*one\.pt.*sub/two\.pth.*"
                                            r"CXR_NODE_MODEL_FILE"):
        find_weights(tmp_path, env={})
    chosen = find_weights(tmp_path, env={"CXR_NODE_MODEL_FILE": "sub/two.pth"})
    assert chosen == tmp_path / "sub" / "two.pth"
    with pytest.raises(ModelDirError, match="does not exist"):
        find_weights(tmp_path, env={"CXR_NODE_MODEL_FILE": "three.pt"})
    touch(tmp_path / "deep" / "x" / "y" / "model.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="no weights file"):
        find_weights(tmp_path / "empty", env={})
    with pytest.raises(ModelDirError, match="no weights file"):
        find_weights(tmp_path / "deep", env={})  # two levels down is not searched


def test_card_rule(tmp_path: Path):
    weights = touch(tmp_path / "folder" / "w.pt")
    assert find_card(tmp_path, weights, env={}) is None
    root_card = touch(tmp_path / "model_card.json")
    assert find_card(tmp_path, weights, env={}) == root_card
    beside = touch(tmp_path / "folder" / "w.pt.card.json")
    assert find_card(tmp_path, weights, env={}) == beside
    assert find_card(tmp_path, weights, env={"CXR_NODE_MODEL_CARD": "model_card.json"}) == \
        root_card
    # the same list, in the same order, as the loader's
    assert card_candidates(weights) == loader_card_candidates(weights)


def test_score_module_limits(monkeypatch: pytest.MonkeyPatch):
    module = load_score_module("cxr_score_entry")
    monkeypatch.delenv("CXR_NODE_HTTP_MAX_BODY_MB", raising=False)
    assert module.body_limit() == 64 * 2**20
    monkeypatch.setenv("CXR_NODE_HTTP_MAX_BODY_MB", "0.5")
    assert module.body_limit() == 2**19
    monkeypatch.setenv("CXR_NODE_HTTP_MAX_BODY_MB", "lots")
    with pytest.raises(ValueError, match="CXR_NODE_HTTP_MAX_BODY_MB"):
        module.body_limit()


def test_score_module_batch_settings(monkeypatch: pytest.MonkeyPatch):
    module = load_score_module("cxr_score_settings")
    monkeypatch.delenv("CXR_NODE_BATCH_SIZE", raising=False)
    monkeypatch.delenv("CXR_NODE_MAX_QUEUE_DELAY_MS", raising=False)
    assert module.batch_settings() == (8, 0.0)
    monkeypatch.setenv("CXR_NODE_BATCH_SIZE", "4")
    monkeypatch.setenv("CXR_NODE_MAX_QUEUE_DELAY_MS", "5")
    assert module.batch_settings() == (4, 0.005)
    for name, value in (("CXR_NODE_BATCH_SIZE", "0"), ("CXR_NODE_BATCH_SIZE", "many"),
                        ("CXR_NODE_MAX_QUEUE_DELAY_MS", "-1"),
                        ("CXR_NODE_MAX_QUEUE_DELAY_MS", "soon")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError, match=name):
                module.batch_settings()


# --- concurrent requests in one scoring process (no server) ------------------------------


def load_score_module(name: str):
    """A fresh copy of ``deploy/score.py``, imported as azmlinfsrv imports it."""
    import azureml_inference_server_http.server  # noqa: F401  (azureml.contrib.services)

    spec = importlib.util.spec_from_file_location(name, SCORE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scorer(azure_model_dir: Path, onnx_cache: Path):
    """``deploy/score.py`` after ``init()``, in this process: its ``run()`` is called from
    threads as gunicorn's threads call it."""
    module = load_score_module("cxr_score_inprocess")
    with pytest.MonkeyPatch.context() as m:
        for name in ("CXR_NODE_MODEL_FILE", "CXR_NODE_MODEL_CARD", "CXR_NODE_BATCH_SIZE",
                     "CXR_NODE_MAX_QUEUE_DELAY_MS", "CXR_NODE_THREADS"):
            m.delenv(name, raising=False)
        m.setenv("AZUREML_MODEL_DIR", str(azure_model_dir))
        m.setenv("CXR_NODE_DEVICE", "cpu")
        m.setenv("CXR_NODE_ONNX_CACHE", str(onnx_cache))
        # the server's log set-up would take the project's loggers from pytest's capture
        m.setattr(module, "_configure_logging", lambda: None)
        module.init()
    assert module.model.backend == "torch+onnxruntime"
    return module


@pytest.fixture(scope="module")
def distinct_images(cr_path: Path) -> list[bytes]:
    """Eight different radiographs (the CR shifted and scaled), each its own SOP instance."""
    import numpy as np
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(cr_path)
    pixels = source.pixel_array
    out = []
    for i in range(8):
        ds = pydicom.dcmread(cr_path)
        shifted = np.roll(pixels, 150 * i, axis=1).astype(np.float64) * (1 - 0.06 * i)
        ds.PixelData = shifted.astype(pixels.dtype).tobytes()
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["deploy test", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(dicom_bytes(ds))
    return out


def score_request(data: bytes, content_type: str = "application/dicom", query: str = ""):
    """The request azmlinfsrv hands ``run()``: a Flask request over a WSGI environment."""
    from flask import Request as FlaskRequest
    from werkzeug.test import EnvironBuilder

    return FlaskRequest(EnvironBuilder(path="/score", method="POST", data=data,
                                       content_type=content_type,
                                       query_string=query).get_environ())


def call(scorer, data: bytes, **kwargs) -> tuple[int, dict]:
    response = scorer.run(score_request(data, **kwargs))
    return response.status_code, json.loads(response.get_data())


def assert_same_answer(doc: dict, want: dict) -> None:
    """The same document, probabilities within 1e-6 (a batch may sum in another order)."""
    got_p = [f["probability"] for f in doc["findings"]]
    want_p = [f["probability"] for f in want["findings"]]
    assert max(abs(a - b) for a, b in zip(got_p, want_p, strict=True)) <= 1e-6
    strip = ("findings", "probability")
    assert {k: v for k, v in doc.items() if k not in strip} == \
        {k: v for k, v in want.items() if k not in strip}
    assert [{k: v for k, v in f.items() if k != "probability"} for f in doc["findings"]] == \
        [{k: v for k, v in f.items() if k != "probability"} for f in want["findings"]]


@pytest.fixture(scope="module")
def alone(scorer, distinct_images: list[bytes]) -> list[dict]:
    """Each image's answer when it is the only request (a forward of one)."""
    answers = []
    for data in distinct_images:
        status, doc = call(scorer, data)
        assert status == 200, doc
        answers.append(doc)
    # eight different answers: a mix-up between requests could not go unseen
    assert len({doc["source"]["sop_instance_uid"] for doc in answers}) == 8
    first = [f["probability"] for f in answers[0]["findings"]]
    for doc in answers[1:]:
        assert max(abs(a - b) for a, b in
                   zip(first, [f["probability"] for f in doc["findings"]], strict=True)) > 1e-5
    return answers


class HeldForward:
    """Wraps the batcher's forward: the first forward waits until ``total`` inputs are in
    (its own and those queued behind it), so the rest must go in one forward together."""

    def __init__(self, batcher, total: int) -> None:
        self.batcher, self.total = batcher, total
        self.forward = batcher.forward
        self.sizes: list[int] = []

    def __call__(self, batch):
        if not self.sizes:
            wait_until(lambda: self.batcher.waiting() >= self.total - len(batch), 60, 0.005,
                       "the other inputs to be queued")
        self.sizes.append(len(batch))
        return self.forward(batch)


def run_together(scorer, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """Call ``run()`` from one thread per body, all released at once."""
    barrier = threading.Barrier(len(bodies))

    def one(data: bytes) -> tuple[int, dict]:
        barrier.wait()
        return call(scorer, data)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_concurrent_requests_share_forwards_and_get_their_own_answers(
        scorer, distinct_images: list[bytes], alone: list[dict],
        monkeypatch: pytest.MonkeyPatch):
    before = scorer.batcher.forwards
    held = HeldForward(scorer.batcher, len(distinct_images))
    monkeypatch.setattr(scorer.batcher, "forward", held)
    answers = run_together(scorer, distinct_images)
    for (status, doc), want in zip(answers, alone, strict=True):
        assert status == 200, doc
        assert_same_answer(doc, want)
    # eight requests, two forwards: the first, and all the others that queued behind it
    assert len(held.sizes) == 2 and sum(held.sizes) == 8, held.sizes
    assert scorer.batcher.forwards - before == 2
    assert max(scorer.batcher.batch_sizes) >= 4


def test_a_bad_request_among_concurrent_ones_gets_its_own_error(
        scorer, distinct_images: list[bytes], alone: list[dict], cr_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    lateral = pydicom.dcmread(cr_path)
    lateral.ViewPosition = "LL"
    bodies = list(distinct_images[:6])
    bodies[2:2] = [b"this is not DICOM" * 100]
    bodies[5:5] = [dicom_bytes(lateral)]
    held = HeldForward(scorer.batcher, 6)  # the two refused never reach the model
    monkeypatch.setattr(scorer.batcher, "forward", held)
    answers = run_together(scorer, bodies)
    statuses = [status for status, _ in answers]
    assert statuses == [200, 200, 400, 200, 200, 422, 200, 200], answers
    assert answers[2][1]["error"] == "invalid-input"
    assert answers[5][1] == {"error": "declined", "reason": answers[5][1]["reason"],
                             "code": "view"}
    good = [doc for status, doc in answers if status == 200]
    for doc, want in zip(good, alone[:6], strict=True):
        assert_same_answer(doc, want)
    assert sum(held.sizes) == 6 and len(held.sizes) == 2, held.sizes


def test_a_failed_forward_fails_only_its_own_requests(scorer, distinct_images: list[bytes],
                                                      alone: list[dict],
                                                      monkeypatch: pytest.MonkeyPatch):
    forward = scorer.batcher.forward

    def broken(batch):
        raise RuntimeError("device lost")

    monkeypatch.setattr(scorer.batcher, "forward", broken)
    status, doc = call(scorer, distinct_images[0])
    assert status == 500 and doc["error"] == "internal-error", doc
    assert "device lost" not in json.dumps(doc)  # a fault's message stays in the log
    monkeypatch.setattr(scorer.batcher, "forward", forward)
    status, doc = call(scorer, distinct_images[1])
    assert status == 200
    assert_same_answer(doc, alone[1])


def test_explained_request_beside_plain_ones(scorer, distinct_images: list[bytes],
                                             alone: list[dict]):
    """Grad-CAM of one request while others are scored: each gets what it asked for."""
    barrier = threading.Barrier(3)

    def one(i: int) -> tuple[int, dict]:
        barrier.wait()
        return call(scorer, distinct_images[i], query="explain=gradcam" if i == 0 else "")

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(one, range(3)))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1]["explanation"]["overlay_png_base64"]
    assert_same_answer({k: v for k, v in answers[0][1].items()
                        if k not in ("explanation", "regions")}, alone[0])
    for (_, doc), want in zip(answers[1:], alone[1:3], strict=True):
        assert "explanation" not in doc
        assert_same_answer(doc, want)


# --- deploy.batching.Batcher --------------------------------------------------------------


def test_batcher_lone_inputs_go_alone_and_errors_reach_only_their_batch():
    import numpy as np

    from deploy.batching import Batcher

    fail = threading.Event()

    def forward(batch: np.ndarray) -> np.ndarray:
        if fail.is_set():
            raise ValueError("bad batch")
        return batch * 2

    batcher = Batcher(forward, max_batch=4)
    assert batcher(np.array([1.0, 2.0])).tolist() == [2.0, 4.0]
    fail.set()
    with pytest.raises(ValueError, match="bad batch"):
        batcher(np.array([1.0, 2.0]))
    fail.clear()
    assert batcher(np.array([3.0])).tolist() == [6.0]  # the runner outlived the failure
    assert batcher.batch_sizes == {1: 3} and batcher.forwards == 3 and batcher.images == 3
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(forward, max_batch=0)


def test_batcher_waits_for_an_announced_input_and_not_for_a_refused_one():
    import numpy as np

    from deploy.batching import Batcher

    batcher = Batcher(lambda batch: batch + 1, max_batch=4, max_wait_s=120)
    with ThreadPoolExecutor(2) as pool:
        with batcher.expect() as submit:  # announced: still decoding
            other = pool.submit(batcher, np.array([10.0]))
            # queued, and held for the announced one
            wait_until(lambda: batcher.waiting() >= 1, 60, 0.005, "the input to be queued")
            mine = submit(np.array([20.0]))
        assert mine.tolist() == [21.0] and other.result(timeout=60).tolist() == [11.0]
        assert batcher.batch_sizes == {2: 1}
        with pytest.raises(RuntimeError, match="once"):
            submit(np.array([0.0]))
        with batcher.expect():  # announced, then refused before it reached the model
            other = pool.submit(batcher, np.array([1.0]))
            wait_until(lambda: batcher.waiting() >= 1, 60, 0.005, "the input to be queued")
        assert other.result(timeout=60).tolist() == [2.0]  # not held for the refused one
    assert batcher.batch_sizes == {2: 1, 1: 1}


# --- deploy.aci ---------------------------------------------------------------------------


ACI_ARGS = ["--name", "cxr-node-test", "--cpu", "2", "--memory-gb", "4"]


class _NoAzureSdk:
    """A meta path finder that makes any ``azureml.core`` import fail."""

    def find_spec(self, name, path=None, target=None):
        if name == "azureml.core" or name.startswith("azureml.core."):
            raise ImportError(f"{name} blocked by the test")
        return None


def test_aci_dry_run_prints_both_routes(azure_model_dir: Path, model, capsys,
                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "meta_path", [_NoAzureSdk(), *sys.meta_path])
    rc = aci.main(["--model-dir", str(azure_model_dir), *ACI_ARGS, "--dry-run",
                   "--route", "az", "--env", "CXR_NODE_THREADS=2"])
    assert rc == 0
    assert not any(m == "azureml.core" or m.startswith("azureml.core.") for m in sys.modules)
    config = json.loads(capsys.readouterr().out)
    assert config["route"] == "az"
    assert config["model"]["sha256"] == model.sha256
    assert config["model"]["weights"] == "cxr-model/pc-densenet-densenet-best.pt"
    assert config["model"]["card"] == "cxr-model/model_card.json"
    sdk = config["sdk"]
    assert sdk["inference_config"]["entry_script"] == "score.py"
    assert Path(sdk["inference_config"]["source_directory"], "score.py") == SCORE_PY
    assert Path(sdk["environment"]["conda_file"]).is_file()
    assert sdk["deploy_configuration"]["cpu_cores"] == 2
    assert sdk["deploy_configuration"]["memory_gb"] == 4
    assert sdk["deploy_configuration"]["auth_enabled"] is True
    # registered as a folder: the service sees AZUREML_MODEL_DIR/<folder name>/...
    folder = azure_model_dir.name
    assert sdk["environment"]["environment_variables"] == {
        "CXR_NODE_HTTP_MAX_BODY_MB": "64", "CXR_NODE_THREADS": "2",
        "CXR_NODE_MODEL_FILE": f"{folder}/cxr-model/pc-densenet-densenet-best.pt",
        "CXR_NODE_MODEL_CARD": f"{folder}/cxr-model/model_card.json"}
    cmd = config["az"]["command"]
    assert cmd[:3] == ["az", "container", "create"]
    for flag, value in (("--cpu", "2"), ("--memory", "4"), ("--ports", "5001"),
                        ("--name", "cxr-node-test")):
        assert cmd[cmd.index(flag) + 1] == value
    variables = cmd[cmd.index("--environment-variables") + 1:]
    assert "CXR_NODE_MODEL_FILE=cxr-model/pc-densenet-densenet-best.pt" in variables
    assert config["az"]["shell"].startswith("az container create ")


def test_aci_cli_dry_run_and_missing_sdk(azure_model_dir: Path):
    if importlib.util.find_spec("azureml") and importlib.util.find_spec("azureml.core"):
        pytest.skip("azureml-core is installed here")
    cmd = [sys.executable, "-m", "deploy.aci", "--model-dir", str(azure_model_dir), *ACI_ARGS]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    assert {"sdk", "az", "model"} <= set(json.loads(dry.stdout))
    real = subprocess.run([*cmd, "--route", "sdk"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert real.returncode == 2
    assert real.stdout == ""
    lines = real.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install azureml-core" in lines[0], real.stderr


def test_aci_refuses_a_bad_model_folder(tmp_path: Path, capsys):
    touch(tmp_path / "a.pt")
    touch(tmp_path / "b.pt")
    assert aci.main(["--model-dir", str(tmp_path), *ACI_ARGS, "--dry-run"]) == 2
    assert "CXR_NODE_MODEL_FILE" in capsys.readouterr().err
    assert aci.main(["--model-dir", str(tmp_path), "--name", "Bad_Name", "--dry-run"]) == 2
