"""The HTTP front and DICOMweb on the real server (uvicorn in the node process), with Orthanc."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_io.results import codes as rcodes
from dicom_io.results import instance_uid
from inference.card import PADCHEST_LABELS
from system.conftest import radiograph_copy
from system.peers import NodeProcess, Orthanc, Receiver, free_port, storescu, wait_until

TOKEN = "test-token-5f1c"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR


def sr_probabilities(ds: pydicom.Dataset) -> dict[str, float]:
    """Every label's probability in the SR: outlined findings' region groups (in %), the
    others' items in Qualitative Evaluations."""
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    out = {}
    for group in sr.content.get_planar_roi_measurement_groups():
        label = group.tracking_identifier
        [probability] = group.get_measurements(name=rcodes.probability_of(label))
        out[label] = round(float(probability.value) / 100, 6)
    labels = {rcodes.finding_code(label).value: label for label in PADCHEST_LABELS}
    [evaluations] = [item for item in ds.ContentSequence if item.ConceptNameCodeSequence[0]
                     .CodeValue == rcodes.QUALITATIVE_EVALUATIONS.value]
    for item in evaluations.ContentSequence:
        if item.ValueType == "CODE":
            [probability] = [num for num in item.ContentSequence if num.ConceptNameCodeSequence[0]
                             .CodeValue == rcodes.PROBABILITY.value]
            value = float(probability.MeasuredValueSequence[0].NumericValue)
            out[labels[item.ConceptNameCodeSequence[0].CodeValue]] = round(value, 6)
    return out


def problem(response: httpx.Response, status: int) -> dict:
    """A JSON error body with ``error`` and ``reason`` and the expected status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] and body["reason"]
    return body


@pytest.fixture(scope="module")
def image(tmp_path_factory, cr_path: Path) -> Path:
    return radiograph_copy(cr_path, tmp_path_factory.mktemp("http") / "score.dcm", "http",
                           downscale=2)


@pytest.fixture(scope="module")
def web_node(tmp_path_factory, whole_model_path: Path, orthanc: Orthanc, node: NodeProcess):
    """A node configured by environment: bearer token, small limits, STOW-RS to Orthanc."""
    folder = tmp_path_factory.mktemp("webnode")
    n = NodeProcess(folder / "spool", whole_model_path, [], explain="gradcam", env={
        "CXR_NODE_HTTP_TOKEN": TOKEN, "CXR_NODE_HTTP_MAX_BODY_MB": "4",
        "CXR_NODE_MAX_QUEUE_DEPTH": "1",
        "CXR_NODE_DICOMWEB_DESTINATIONS": json.dumps([f"{orthanc.url}/dicom-web"]),
    }).start()
    yield n
    n.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def wait_idle(node: NodeProcess, timeout: float = 180) -> None:
    """Wait until no job is queued or processing (the web node's queue holds one)."""

    def drained() -> bool:
        r = httpx.get(f"{node.url}/jobs", headers=auth())
        assert r.status_code == 200, r.text
        counts = r.json()["counts"]
        return not counts.get("jobs_queued") and not counts.get("jobs_processing")

    wait_until(drained, timeout, 0.5, "the node's queue to drain", node.proc)


def sr_in_orthanc(orthanc: Orthanc, sr_uid: str) -> list:
    """Orthanc's lookup of ``sr_uid``: empty until the SR is stored there."""
    return orthanc.post("/tools/lookup", sr_uid.encode(), "text/plain")


def test_cold_start_is_ready_before_the_onnx_export_and_a_restart_reuses_it(
    tmp_path: Path, whole_model_path: Path, cr_path: Path
) -> None:
    """With an empty spool the ONNX export runs after ready (PyTorch predicts meanwhile);
    once it passed its parity check the node predicts with ONNX Runtime, and a restart on the
    same spool loads the cached export before ready."""
    image = radiograph_copy(cr_path, tmp_path / "cold.dcm", "cold", downscale=4).read_bytes()
    node = NodeProcess(tmp_path / "spool", whole_model_path, [], explain="none").start()
    try:
        first = node.log_text()
        assert "exporting the model to ONNX in the background" in first
        ready = httpx.get(f"{node.url}/readyz").json()
        assert ready["onnx_fast_path"] == "on"
        assert ready["model"]["backend"] == "torch+onnxruntime"
        scored = httpx.post(f"{node.url}/score", content=image, timeout=120,
                            headers={"Content-Type": "application/dicom"})
        assert scored.status_code == 200
        assert scored.json()["model"]["backend"] == "torch+onnxruntime"
    finally:
        node.stop()
    assert (tmp_path / "spool" / "onnx-cache").is_dir()
    offset = len(node.log_text())
    node = NodeProcess(tmp_path / "spool", whole_model_path, [], explain="none").start()

    def ready_again() -> str | None:
        text = node.log_text()[offset:]
        return text if "cxr-node ready" in text else None

    try:
        second = wait_until(ready_again, 60, 0.1, "the restarted node's ready line", node.proc)
        assert "exporting the model to ONNX in the background" not in second
        assert second.index("prediction by ONNX Runtime") < second.index("cxr-node ready")
        assert httpx.get(f"{node.url}/readyz").json()["onnx_fast_path"] == "on"
    finally:
        node.stop()


def test_operations_routes(node: NodeProcess) -> None:
    assert httpx.get(f"{node.url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{node.url}/readyz").json()
    assert ready["status"] == "ready" and len(ready["model"]["sha256"]) == 64
    metrics = httpx.get(f"{node.url}/metrics").text
    for name in ("cxr_http_requests_total", "cxr_queue_depth", "cxr_inference_batch_size",
                 "cxr_http_request_seconds_bucket"):
        assert name in metrics
    assert httpx.get(f"{node.url}/docs").status_code == 200
    paths = httpx.get(f"{node.url}/openapi.json").json()["paths"]
    assert {"/score", "/dicomweb/studies", "/jobs", "/readyz"} <= set(paths)
    assert "counts" in httpx.get(f"{node.url}/jobs").json()


def test_score_raw_body_and_multipart_give_the_same_answer(node: NodeProcess,
                                                          image: Path) -> None:
    data = image.read_bytes()
    raw = httpx.post(f"{node.url}/score", content=data,
                     headers={"Content-Type": "application/dicom"}, timeout=120)
    assert raw.status_code == 200, raw.text
    form = httpx.post(f"{node.url}/score", files={"image": ("x.dcm", data, "application/dicom")},
                      timeout=120)
    assert form.status_code == 200, form.text
    a, b = raw.json(), form.json()
    assert a["findings"] == b["findings"] and a["result_uids"] == b["result_uids"]
    ds = pydicom.dcmread(image, stop_before_pixels=True)
    assert a["source"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert a["source"]["study_instance_uid"] == ds.StudyInstanceUID
    assert len(a["findings"]) == 26 and len(a["model"]["sha256"]) == 64
    top = sorted(a["findings"], key=lambda f: -f["probability"])[:3]
    assert a["top_three_labels"] == [f["label"] for f in top]
    assert a["probability"] == [round(f["probability"] * 100, 2) for f in top]
    assert "explanation" not in a


def test_score_with_gradcam_returns_a_png_overlay(node: NodeProcess, image: Path) -> None:
    r = httpx.post(f"{node.url}/score", params={"explain": "gradcam"},
                   content=image.read_bytes(), headers={"Content-Type": "application/dicom"},
                   timeout=120)
    assert r.status_code == 200, r.text
    explanation = r.json()["explanation"]
    assert explanation["method"] == "gradcam" and not explanation["suppressed"]
    assert base64.b64decode(explanation["overlay_png_base64"]).startswith(b"\x89PNG")


def test_score_can_answer_with_the_dicom_results(node: NodeProcess, image: Path) -> None:
    uids = httpx.post(f"{node.url}/score", content=image.read_bytes(),
                      headers={"Content-Type": "application/dicom"}, timeout=120
                      ).json()["result_uids"]
    r = httpx.post(f"{node.url}/score", params={"explain": "gradcam"},
                   content=image.read_bytes(), timeout=120,
                   headers={"Content-Type": "application/dicom",
                            "Accept": 'multipart/related; type="application/dicom"'})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/related")
    from node.http.multipart import parse_related

    parts = parse_related(r.content, r.headers["content-type"])
    import io

    got = {str(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID) for _, p in parts}
    assert got == {uids["sr"], uids["sc"]}  # the parametric map is opt-in


def test_score_errors_are_specific_json(node: NodeProcess, image: Path, tmp_path: Path,
                                        cr_path: Path) -> None:
    url, dicom = f"{node.url}/score", {"Content-Type": "application/dicom"}
    body = problem(httpx.post(url, content=b"hello, not dicom", headers=dicom), 400)
    assert body["code"] == "not-dicom"
    lateral = radiograph_copy(cr_path, tmp_path / "lat.dcm", "http-lat", downscale=4,
                              ViewPosition="LL")
    body = problem(httpx.post(url, content=lateral.read_bytes(), headers=dicom), 422)
    assert body["code"] == "view" and "frontal" in body["reason"]
    problem(httpx.post(url, content=image.read_bytes(), headers={"Content-Type": "text/plain"}),
            415)
    problem(httpx.post(url, files={"other": ("x", b"1")}), 422)
    problem(httpx.post(url, params={"explain": "magic"}, content=image.read_bytes(),
                       headers=dicom), 422)
    truncated = image.read_bytes()[:3000]
    problem(httpx.post(url, content=truncated, headers=dicom), 400)


def test_token_size_limit_and_back_pressure(web_node: NodeProcess, cr_path: Path,
                                            tmp_path: Path) -> None:
    url = f"{web_node.url}/score"
    small = radiograph_copy(cr_path, tmp_path / "small.dcm", "bp-small", downscale=4)
    assert httpx.get(f"{web_node.url}/healthz").status_code == 200
    for path in ("/readyz", "/metrics", "/jobs"):
        problem(httpx.get(f"{web_node.url}{path}"), 401)
    r = httpx.post(url, content=small.read_bytes(), headers={"Content-Type": "application/dicom"})
    assert problem(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer nope", "Content-Type": "application/dicom"}
    problem(httpx.post(url, content=small.read_bytes(), headers=wrong), 401)
    big = cr_path.read_bytes()  # 7 MB over the 4 MB limit
    problem(httpx.post(url, content=big, headers={**auth(), "Content-Type": "application/dicom"}),
            413)
    ok = httpx.post(url, content=small.read_bytes(), timeout=120,
                    headers={**auth(), "Content-Type": "application/dicom"})
    assert ok.status_code == 200, ok.text
    # Fill the queue through DIMSE (never refused for depth): HTTP must push back while it is
    # full. Should the workers empty it before the request comes, the request is scored (200)
    # and the queue is filled again: the answer must be 503 once the request meets a full queue.
    fills = iter(range(1000))

    def refused_while_full() -> httpx.Response | None:
        fill = next(fills)
        files = [radiograph_copy(cr_path, tmp_path / f"q{fill}-{i}.dcm", f"bp{fill}-{i}")
                 for i in range(4)]
        assert storescu(web_node.dicom_port, files).returncode == 0
        r = httpx.post(url, content=small.read_bytes(), timeout=120,
                       headers={**auth(), "Content-Type": "application/dicom"})
        assert r.status_code in (200, 503), r.text
        return r if r.status_code == 503 else None

    r = wait_until(refused_while_full, 300, 0, "HTTP to be refused while the queue is full",
                   web_node.proc)
    assert problem(r, 503)["code"] == "out-of-resources"
    assert int(r.headers["retry-after"]) > 0


def test_stow_rs_in_and_results_out_to_orthanc_by_stow(
    web_node: NodeProcess, orthanc: Orthanc, cr_path: Path, tmp_path: Path
) -> None:
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    wait_idle(web_node)
    study = generate_uid()
    path = radiograph_copy(cr_path, tmp_path / "stow.dcm", "stow", downscale=2,
                           StudyInstanceUID=study)
    session = Session()
    session.headers.update(auth())
    client = DICOMwebClient(f"{web_node.url}/dicomweb", session=session)
    response = client.store_instances([pydicom.dcmread(path)], study_instance_uid=study)
    [stored] = response.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    sha = httpx.get(f"{web_node.url}/readyz", headers=auth()).json()["model"]["sha256"]
    sr_uid = instance_uid("sr", str(stored.ReferencedSOPInstanceUID), sha)
    found = wait_until(lambda: sr_in_orthanc(orthanc, sr_uid), 180, 1,
                       "the SR to reach Orthanc by STOW-RS", web_node.proc)
    assert found and found[0]["Type"] == "Instance"
    tags = orthanc.get(f"/instances/{found[0]['ID']}/simplified-tags")
    assert tags["StudyInstanceUID"] == study and tags["Manufacturer"] == "cxr-node"


def test_stow_rs_reports_failures_per_instance(web_node: NodeProcess, cr_path: Path,
                                               tmp_path: Path) -> None:
    from node.http.multipart import build_related

    wait_idle(web_node)
    good = radiograph_copy(cr_path, tmp_path / "good.dcm", "stow-good", downscale=4)
    ct = radiograph_copy(cr_path, tmp_path / "ct.dcm", "stow-ct", downscale=4,
                         SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT")
    body, ctype = build_related([good.read_bytes(), b"garbage", ct.read_bytes()])
    r = httpx.post(f"{web_node.url}/dicomweb/studies", content=body, timeout=60,
                   headers={**auth(), "Content-Type": ctype})
    assert r.status_code == 202, r.text
    doc = r.json()
    assert len(doc["00081199"]["Value"]) == 1
    reasons = sorted(item["00081197"]["Value"][0] for item in doc["00081198"]["Value"])
    assert reasons == [0x0122, 0xC000]
    other = radiograph_copy(cr_path, tmp_path / "other.dcm", "stow-other", downscale=4)
    body, ctype = build_related([other.read_bytes()])
    wait_idle(web_node)
    r = httpx.post(f"{web_node.url}/dicomweb/studies/1.2.3.4", content=body, timeout=60,
                   headers={**auth(), "Content-Type": ctype})
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    problem(httpx.post(f"{web_node.url}/dicomweb/studies", content=b"x",
                       headers={**auth(), "Content-Type": "application/dicom"}), 415)


def test_same_image_same_answer_through_dimse_stow_and_score(
    node: NodeProcess, web_node: NodeProcess, receiver: Receiver, orthanc: Orthanc,
    cr_path: Path, tmp_path: Path
) -> None:
    path = radiograph_copy(cr_path, tmp_path / "parity.dcm", "parity", downscale=2,
                           StudyInstanceUID=generate_uid())
    score = httpx.post(f"{node.url}/score", content=path.read_bytes(), timeout=120,
                       headers={"Content-Type": "application/dicom"}).json()
    expected = {f["label"]: f["probability"] for f in score["findings"]}
    sr_uid = score["result_uids"]["sr"]
    assert storescu(node.dicom_port, [path]).returncode == 0  # DIMSE
    from node.http.multipart import build_related

    wait_idle(web_node)
    body, ctype = build_related([path.read_bytes()])
    assert httpx.post(f"{web_node.url}/dicomweb/studies", content=body, timeout=60,
                      headers={**auth(), "Content-Type": ctype}).status_code == 200

    def dimse_delivered() -> pydicom.Dataset | None:
        for f in receiver.files():
            ds = pydicom.dcmread(f)
            if str(ds.SOPInstanceUID) == sr_uid:
                return ds
        return None

    dimse_sr = wait_until(dimse_delivered, 180, 0.5, "the DIMSE path to deliver the SR",
                          node.proc)
    assert dimse_sr is not None, "the DIMSE path never delivered the SR"
    found = wait_until(lambda: sr_in_orthanc(orthanc, sr_uid), 180, 1,
                       "the STOW-RS path to deliver the SR", web_node.proc)
    assert found, "the STOW-RS path never delivered the SR"
    import io
    import urllib.request

    with urllib.request.urlopen(f"{orthanc.url}/instances/{found[0]['ID']}/file") as f:
        stow_sr = pydicom.dcmread(io.BytesIO(f.read()))
    assert sr_probabilities(dimse_sr) == sr_probabilities(stow_sr)
    assert sr_probabilities(dimse_sr) == pytest.approx(expected, abs=2e-6)  # 6 decimals


def test_openapi_schema_holds_under_schemathesis(node: NodeProcess) -> None:
    import os

    exe = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [str(exe), "run", f"{node.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "15", "--request-timeout", "60"],
        capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).parent, env={**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks"})
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_many_clients_at_once_all_answered(node: NodeProcess, image: Path) -> None:
    data = image.read_bytes()

    def one(_: int) -> int:
        return httpx.post(f"{node.url}/score", content=data, timeout=300,
                          headers={"Content-Type": "application/dicom"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(16)))
    assert statuses == [200] * 16


def test_azure_score_py_answers_like_the_node(node: NodeProcess, image: Path, tmp_path: Path,
                                              whole_model_path: Path) -> None:
    """deploy/score.py under the real Azure ML inference server vs the node's /score."""
    import os
    import shutil
    import subprocess

    exe = Path(sys.executable).with_name("azmlinfsrv")
    model_dir = tmp_path / "azureml-models" / "cxr-model"
    model_dir.mkdir(parents=True)
    shutil.copy(whole_model_path, model_dir / whole_model_path.name)
    port = free_port()
    repo = Path(__file__).resolve().parents[2]
    log = (tmp_path / "azmlinfsrv.log").open("wb")
    proc = subprocess.Popen([str(exe), "--entry_script", str(repo / "deploy" / "score.py"),
                             "--port", str(port)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "AZUREML_MODEL_DIR": str(model_dir.parent),
                                 "CXR_NODE_DEVICE": "cpu"})

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            wait_until(up, 180, 0.5, "azmlinfsrv to come up", proc)
        except (RuntimeError, TimeoutError) as e:  # it exited, or never answered
            raise AssertionError(f"{e}:\n{(tmp_path / 'azmlinfsrv.log').read_text()[-3000:]}"
                                 ) from None
        azure = httpx.post(f"http://127.0.0.1:{port}/score", content=image.read_bytes(),
                           headers={"Content-Type": "application/dicom"}, timeout=120)
        ours = httpx.post(f"{node.url}/score", content=image.read_bytes(),
                          headers={"Content-Type": "application/dicom"}, timeout=120)
        assert azure.status_code == ours.status_code == 200, azure.text
        a, b = azure.json(), ours.json()
        for key in ("model", "findings", "top_three_labels", "probability", "result_uids"):
            assert a[key] == b[key], key
    finally:
        proc.terminate()
        proc.wait(30)
