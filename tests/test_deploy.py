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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest
import requests

from deploy import aci
from deploy.modeldir import ModelDirError, card_candidates, find_card, find_weights
from inference import PADCHEST_LABELS, configure_threads, load_model
from inference.card import card_candidates as loader_card_candidates
from node.core.pipeline import Pipeline
from node.core.scoring import read_upload, score_document

ROOT = Path(__file__).resolve().parents[1]
SCORE_PY = ROOT / "deploy" / "score.py"
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
def model(azure_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from inference.export import enable_onnx_fast_path

    configure_threads()  # as score.py's init(): same threads, same float sums
    loaded = load_model(azure_model_dir / "cxr-model" / "pc-densenet-densenet-best.pt")
    enable_onnx_fast_path(loaded, tmp_path_factory.mktemp("onnx"))  # as score.py does
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
    env = {**os.environ, "AZUREML_MODEL_DIR": str(azure_model_dir),
           "CXR_NODE_HTTP_MAX_BODY_MB": repr(limit_bytes / 2**20), "CXR_NODE_DEVICE": "cpu"}
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
def test_server_log_has_no_patient_data(server, cr_path: Path):
    """Runs after the scoring tests (file order): nothing of the patient in the log."""
    _, log = server
    text = log.read_text(errors="replace")
    assert "init has completed successfully" in text
    assert "serving cxr-deploy-test 0.0.1" in text  # score.py's own records reach the log
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
    import azureml_inference_server_http.server  # noqa: F401  (azureml.contrib.services)

    spec = importlib.util.spec_from_file_location("cxr_score_entry", SCORE_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("CXR_NODE_HTTP_MAX_BODY_MB", raising=False)
    assert module.body_limit() == 64 * 2**20
    monkeypatch.setenv("CXR_NODE_HTTP_MAX_BODY_MB", "0.5")
    assert module.body_limit() == 2**19
    monkeypatch.setenv("CXR_NODE_HTTP_MAX_BODY_MB", "lots")
    with pytest.raises(ValueError, match="CXR_NODE_HTTP_MAX_BODY_MB"):
        module.body_limit()


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
