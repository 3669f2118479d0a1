"""The node in this process: its HTTP routers (FastAPI ``TestClient``), its DIMSE handlers (a
pynetdicom SCU against its SCP), its workers and its sender, on a small model. What the
system tests check through processes, checked here in seconds."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from node.bench.harness import wait_until as harness_wait_until
from node.dimse.scu import associate
from node.http import create_app
from node.http.multipart import build_related, parse_related
from node.jobs.model import Delivery
from node.service import Node
from node.settings import Settings


def wait_until(predicate: Callable[[], object], timeout: float = 30) -> object:
    """``predicate()``'s first true value, polled every 50 ms for ``timeout`` seconds."""
    return harness_wait_until(predicate, timeout, 0.05, getattr(predicate, "__name__", "it"))


def small_cr(cr_path: Path, **changes: object) -> bytes:
    """The NEMA CR, an eighth of its size each way, with a new SOP Instance UID."""
    ds = pydicom.dcmread(cr_path)
    arr = ds.pixel_array[::8, ::8].copy()
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Pacs:
    """A pynetdicom storage SCP: answers each C-STORE with ``status`` and keeps the UIDs."""

    def __init__(self) -> None:
        self.status = 0x0000
        self.received: list[str] = []
        self.ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, ExplicitVRLittleEndian)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.address = f"PACS@127.0.0.1:{self.server.server_address[1]}"

    def _store(self, event: evt.Event) -> int:
        if self.status == 0x0000:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return self.status


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    peer = Pacs()
    yield peer
    peer.ae.shutdown()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, loaded_model, pacs: Pacs) -> Iterator[Node]:
    settings = Settings(spool=tmp_path_factory.mktemp("node") / "spool", model="in-memory",
                        bind="127.0.0.1", dicom_port=0, http_port=None, explain="none",
                        onnx_fast_path=False, workers=1, destinations=[pacs.address],
                        retry_initial_s=0.5, retry_max_attempts=5, min_free_mb=0)
    running = Node(settings, loaded_model)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(node: Node) -> Iterator[TestClient]:
    with TestClient(create_app(node)) as http:
        yield http


def post_dicom(client: TestClient, data: bytes, **params: str):
    return client.post("/score", content=data, params=params,
                       headers={"Content-Type": "application/dicom"})


def test_score_answers_with_the_result_and_records_a_job_without_spooling(
        client: TestClient, node: Node, cr_path: Path) -> None:
    data = small_cr(cr_path)
    uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    before = set(node.store.keys("incoming"))
    response = post_dicom(client, data)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["source"]["sop_instance_uid"] == uid
    assert len(document["findings"]) == 26 and set(document["result_uids"]) == {"sr", "sc"}
    assert set(node.store.keys("incoming")) == before  # the answer is the acknowledgement
    jobs = node.records.counts()
    assert jobs.get("jobs_done", 0) >= 1


@pytest.mark.parametrize(("changes", "status", "code"), [
    ({"ViewPosition": "LL"}, 422, "view"),
    ({"Modality": "CT"}, 422, "modality"),
])
def test_score_declines_with_the_gates_code(client: TestClient, cr_path: Path,
                                            changes: dict, status: int, code: str) -> None:
    response = post_dicom(client, small_cr(cr_path, **changes))
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["error"] == "declined"


def test_score_refuses_what_is_not_dicom(client: TestClient) -> None:
    response = post_dicom(client, b"GIF89a not a radiograph")
    assert response.status_code == 400
    assert response.json() == {"error": "invalid-input", "code": "not-dicom",
                               "reason": response.json()["reason"]}
    assert post_dicom(client, b"").json()["code"] == "empty"


def test_score_of_a_node_that_is_full_is_503_with_retry_after(client: TestClient, node: Node,
                                                              cr_path: Path) -> None:
    node.settings.max_queue_depth, saved = 0, node.settings.max_queue_depth
    try:
        response = post_dicom(client, small_cr(cr_path))
    finally:
        node.settings.max_queue_depth = saved
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["code"] == "out-of-resources"


def test_stow_stores_each_part_and_names_each_failure(client: TestClient, node: Node,
                                                      cr_path: Path) -> None:
    good, lateral = small_cr(cr_path), small_cr(cr_path, ViewPosition="LL")
    body, content_type = build_related([good, lateral, b"not DICOM"])
    response = client.post("/dicomweb/studies", content=body,
                           headers={"Content-Type": content_type})
    assert response.status_code == 202
    stored = response.json()["00081199"]["Value"]
    [failed] = response.json()["00081198"]["Value"]
    assert len(stored) == 2  # the lateral view is stored too, and recorded as skipped
    assert failed["00081197"]["Value"] == [0xC000]
    lateral_uid = pydicom.dcmread(io.BytesIO(lateral)).SOPInstanceUID
    skipped = wait_until(lambda: [j for j in node.records.failed_document()["failed_jobs"]
                                  if j["sop_instance_uid"] == lateral_uid])
    assert skipped[0]["code"] == "view"
    # the audit trail names the HTTP client each stored part came from (TestClient's host)
    good_uid = str(pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID)
    audit = (node.settings.spool / "audit.log").read_text()
    [line] = [m for m in audit.splitlines() if good_uid in m and 'csd-code="110104"' in m]
    assert 'NetworkAccessPointID="testclient"' in line and 'EventActionCode="C"' in line


def test_jobs_route_and_parse_related_agree(client: TestClient) -> None:
    document = client.get("/jobs").json()
    assert set(document) == {"counts", "failed_jobs", "failed_deliveries"}
    body, content_type = build_related([b"a", b"bc"])
    assert [p for _, p in parse_related(body, content_type)] == [b"a", b"bc"]


def c_store(node: Node, data: bytes) -> int:
    """C-STORE ``data`` to the node as a modality does; the status it answers."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = associate(ae, "127.0.0.1", node.dicom_port, node.settings.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status)
    finally:
        assoc.release()


def test_c_store_is_stored_processed_and_its_results_delivered(node: Node, pacs: Pacs,
                                                               cr_path: Path) -> None:
    data = small_cr(cr_path)
    assert c_store(node, data) == 0x0000
    sr_uid = wait_until(lambda: [d for d in node.records.due_deliveries(float("inf"), 1000)]
                        or node.records.counts().get("deliveries_sent"))
    assert sr_uid
    wait_until(lambda: len(pacs.received) >= 1)


def test_c_store_of_a_lateral_view_succeeds_and_is_recorded_as_skipped(
        node: Node, cr_path: Path) -> None:
    data = small_cr(cr_path, ViewPosition="LL")
    uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert c_store(node, data) == 0x0000  # the gate never changes the status a sender gets
    job = wait_until(lambda: [j for j in node.records.failed_document()["failed_jobs"]
                              if j["sop_instance_uid"] == uid])[0]
    assert (job["state"], job["code"]) == ("skipped", "view")


def test_sender_backs_off_then_delivers_and_purges(node: Node, pacs: Pacs,
                                                  cr_path: Path) -> None:
    """A failure status is a failed attempt retried later; a success marks it sent and the
    result and source files are deleted once every delivery of the job is sent."""
    stop_sender = node.sender.stop_event
    pacs.status = 0xA700
    try:
        assert c_store(node, small_cr(cr_path)) == 0x0000

        def failed_once() -> list[Delivery]:
            return [d for d in node.records.due_deliveries(float("inf"), 1000)
                    if d.attempts >= 1 and "0xA700" in (d.reason or "")]

        tried = wait_until(failed_once)
    finally:
        pacs.status = 0x0000
    assert not stop_sender.is_set()
    wait_until(lambda: all(node.records.job(d.job_id) is not None
                           and node.records.unsent_deliveries(d.job_id) == 0 for d in tried))
    wait_until(lambda: not any(node.store.local_path(d.key).exists() for d in tried))
    job = node.records.job(tried[0].job_id)
    wait_until(lambda: not node.store.local_path(job.key).exists())


def test_a_score_request_cut_off_by_a_crash_is_closed_as_failed(node: Node) -> None:
    """A ``/score`` job open at start (its process died before answering) gives its caller
    an error, never a late answer: recovery closes it as failed, ``interrupted``."""
    job_id = node.records.open(None, "1.2.3", None, "http", {"explain": "none"})
    node.intake.recover()
    record = node.records.job(job_id)
    assert (record.state, record.code) == ("failed", "interrupted")


def test_workers_keep_running_after_a_batch_with_a_bad_object(node: Node,
                                                              cr_path: Path) -> None:
    """An object whose pixels cannot be decoded fails alone; the one after it is done."""
    ds = pydicom.dcmread(io.BytesIO(small_cr(cr_path)))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # shorter than the header says
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    bad_status = c_store(node, buffer.getvalue())
    good = small_cr(cr_path)
    assert bad_status == 0x0000 and c_store(node, good) == 0x0000
    good_uid = pydicom.dcmread(io.BytesIO(good)).SOPInstanceUID

    def done() -> bool:
        rows = node.records.db.connection().execute(
            "SELECT state FROM jobs WHERE sop_instance_uid=?", (good_uid,)).fetchall()
        return bool(rows) and rows[0][0] == "done"

    wait_until(done)
    assert threading.active_count() > 1


#: What a DICOM front answers for a file ``cxr-node predict`` reads by its signature.
FRONT_CODES = {"not-png": "not-dicom"}


def front_code(case) -> str:
    return "empty" if not case.data else FRONT_CODES.get(case.code, case.code)


def test_every_broken_file_gets_its_own_answer_from_score(client: TestClient) -> None:
    from broken_files import all_files

    for case in all_files():
        response = post_dicom(client, case.data)
        if not case.refused:
            assert response.status_code == 200, (case.name, response.text)
            continue
        assert response.status_code in (400, 422), (case.name, response.text)
        assert response.json()["code"] == front_code(case), case.name
    assert client.get("/healthz").status_code == 200


def test_every_broken_file_gets_its_own_answer_from_stow(client: TestClient) -> None:
    """One request with every file: each part is stored or refused on its own, with the
    gate's code in its Error Comment."""
    from broken_files import all_files

    cases = all_files()
    body, content_type = build_related([c.data for c in cases])
    response = client.post("/dicomweb/studies", content=body,
                           headers={"Content-Type": content_type})
    assert response.status_code == 202
    document = response.json()
    stored = document["00081199"]["Value"]
    failed = document["00081198"]["Value"]
    kept = [c for c in cases if not c.refused or c.code in ("view", "blank-image")]
    assert len(stored) == len(kept)  # declined and pixel-level failures are still stored
    comments = [item.get("00000902", {}).get("Value", [""])[0] for item in failed]
    for case in cases:
        if case in kept or case.code == "sop-class":
            continue
        assert any(comment.startswith(front_code(case)) for comment in comments), case.name


def test_every_broken_file_that_can_be_sent_gets_a_status_and_a_record(
        node: Node) -> None:
    """C-STORE answers success for what it could store (the gate's verdict is recorded, not
    answered), and the record holds each file's own code."""
    from broken_files import all_files

    expected: dict[str, str] = {}
    for case in all_files():
        try:
            ds = pydicom.dcmread(io.BytesIO(case.data))
            uid = str(ds.SOPInstanceUID)
            if ds.SOPClassUID != ComputedRadiographyImageStorage or not uid.strip():
                continue
        except Exception:  # not something a modality could send
            continue
        try:
            answered = c_store(node, case.data)
        except ValueError:  # pynetdicom refuses to send it (an invalid UID in its request)
            continue
        assert answered == 0x0000, case.name
        expected[uid] = case.code

    def closed() -> dict[str, str] | None:
        rows = node.records.db.connection().execute(
            f"SELECT sop_instance_uid, state, code FROM jobs WHERE sop_instance_uid IN"
            f" ({','.join('?' * len(expected))})", list(expected)).fetchall()
        if len(rows) < len(expected) or any(r[1] in ("queued", "processing") for r in rows):
            return None
        return {r[0]: "OK" if r[1] == "done" else r[2] for r in rows}

    assert {"OK", "view", "short-pixel-data", "long-pixel-data",
            "blank-image"} <= set(expected.values())
    assert wait_until(closed, 60) == expected
