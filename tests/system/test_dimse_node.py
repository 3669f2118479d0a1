"""The DIMSE node against real peers: dcmtk storescu/storescp/echoscu, dciodvfy, Orthanc."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import urllib.request
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from conftest import record_figure
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from system.conftest import radiograph_copy
from system.peers import (
    NodeProcess,
    Receiver,
    dciodvfy_errors,
    free_port,
    storescu,
    wait_port,
    wait_until,
)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"


def results_by_source(datasets: list[pydicom.Dataset]) -> dict[str, dict[str, set[str]]]:
    """source SOP Instance UID -> result SOP class -> result SOP Instance UIDs."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for ds in datasets:
        source = None
        for item in ds.get("ReferencedSeriesSequence", []) or []:
            for ref in item.get("ReferencedInstanceSequence", []) or []:
                source = str(ref.ReferencedSOPInstanceUID)
        for item in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
            for series in item.ReferencedSeriesSequence:
                for ref in series.ReferencedSOPSequence:
                    source = str(ref.ReferencedSOPInstanceUID)
        for item in ds.get("SourceImageSequence", []) or []:
            source = str(item.ReferencedSOPInstanceUID)
        if source:
            out[source][str(ds.SOPClassUID)].add(str(ds.SOPInstanceUID))
    return out


def wait_results(receiver: Receiver, sources: set[str], timeout: float
                 ) -> dict[str, dict[str, set[str]]]:
    """:func:`results_by_source` once every one of ``sources`` has an SR and an SC in
    ``receiver`` (or at ``timeout``); results of other sources there are left alone."""

    def complete() -> dict[str, dict[str, set[str]]] | None:
        got = results_by_source(receiver.received())
        return got if all(len(got.get(uid, {})) >= 2 for uid in sources) else None

    try:
        return wait_until(complete, timeout, 0.25, "every source's SR, SC and PM")
    except TimeoutError:  # the caller's assertions say what is missing
        return results_by_source(receiver.received())


def wait_jobs(node: NodeProcess, predicate, timeout: float = 120) -> dict:
    """Poll the node's ``GET /jobs`` until ``predicate`` holds; return that state."""
    last: dict = {}

    def reached() -> dict | None:
        status, state = node.get("/jobs")
        assert status == 200, state
        last["state"] = state
        return state if predicate(state) else None

    try:
        return wait_until(reached, timeout, 0.5, "the queue's expected state", node.proc)
    except TimeoutError:
        raise TimeoutError(f"queue never reached the expected state: {last}") from None


def wait_settled(node: NodeProcess, timeout: float = 180) -> None:
    """Wait until the node has nothing in hand: no job queued or processing, no delivery
    pending. Everything it was going to send has then been sent, and acknowledged."""
    wait_until(node.idle, timeout, 0.25, "the node to finish its jobs and deliveries",
               node.proc)


def failed_delivery_attempts(node: NodeProcess) -> float:
    """Delivery attempts that failed since the node started (its ``/metrics``)."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "cxr_deliveries_total"
               and sample.labels.get("outcome") == "failed")


@pytest.fixture(scope="module")
def encoded_variants(tmp_path_factory, cr_path: Path, cr_j2k_lossless_path: Path
                     ) -> list[tuple[Path, str]]:
    """The NEMA CR chest as separate instances in several transfer syntaxes (dcmtk encodes),
    each with the storescu option that proposes its transfer syntax."""
    folder = tmp_path_factory.mktemp("variants")
    out = [(radiograph_copy(cr_path, folder / "src" / "explicit.dcm", "explicit"), "-xe"),
           (radiograph_copy(cr_j2k_lossless_path, folder / "src" / "j2k.dcm", "j2k"), "-xv")]
    for name, cmd, option in (("jpegls", ["dcmcjpls"], "-xt"), ("rle", ["dcmcrle"], "-xr"),
                              ("deflate", ["dcmconv", "+td"], "-xd"),
                              ("jpeg_lossless", ["dcmcjpeg"], "-xs")):
        src = radiograph_copy(cr_path, folder / "src" / f"{name}_src.dcm", name)
        dest = folder / f"{name}.dcm"
        subprocess.run([*cmd, str(src), str(dest)], check=True, capture_output=True)
        out.append((dest, option))
    return out


def test_echoscu_gets_success(node: NodeProcess) -> None:
    proc = subprocess.run(["echoscu", "-aec", node.ae_title, "127.0.0.1", str(node.dicom_port)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_storescu_images_come_back_as_valid_sr_sc_pm(
    node: NodeProcess, receiver: Receiver, encoded_variants: list[tuple[Path, str]]
) -> None:
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
               for p, _ in encoded_variants}
    for path, option in encoded_variants:
        proc = storescu(node.dicom_port, [path], extra=(option, "-R"))
        assert proc.returncode == 0, (path.name, proc.stderr)
    got = wait_results(receiver, set(sources), timeout=300)
    for uid, path in sources.items():
        classes = got[uid]
        assert set(classes) == {SR_CLASS, SC_CLASS}, (path.name, dict(classes))  # PM: opt-in
        assert all(len(uids) == 1 for uids in classes.values())
    study = pydicom.dcmread(encoded_variants[0][0], stop_before_pixels=True).StudyInstanceUID
    ours = [f for f in receiver.files()  # the session's PACS also holds other tests' results
            if set(results_by_source([pydicom.dcmread(f, stop_before_pixels=True)])) & set(sources)]
    assert len(ours) == 2 * len(sources)
    for f in ours:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.StudyInstanceUID == study
        assert ds.Manufacturer == "cxr-node"
        assert dciodvfy_errors(f) == [], f.name
    sr = [f for f in ours if pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID == SR_CLASS]
    dump = subprocess.run(["dsrdump", str(sr[0])], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout


def test_other_sop_classes_are_refused_at_negotiation(node: NodeProcess, tmp_path: Path,
                                                      cr_path: Path) -> None:
    ct = radiograph_copy(cr_path, tmp_path / "ct.dcm", "ct",
                         SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT")
    ds = pydicom.dcmread(ct)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.save_as(ct, enforce_file_format=True)
    proc = storescu(node.dicom_port, [ct])
    assert proc.returncode != 0
    assert "No presentation context" in proc.stderr or "no acceptable" in proc.stderr.lower()


def test_request_and_data_set_naming_other_instances_are_refused(
    node: NodeProcess, tmp_path: Path, cr_path: Path
) -> None:
    """A C-STORE whose request names one instance and whose data set is another is refused:
    its results would reference an image the sender never asked about."""
    from pynetdicom import _config

    good = radiograph_copy(cr_path, tmp_path / "good.dcm", "mismatch-good", downscale=4)
    ds = pydicom.dcmread(good)
    other = tmp_path / "other.dcm"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request takes this one
    ds.save_as(other)  # (enforce_file_format would set it back from the data set)
    assert pydicom.dcmread(other).file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    ae = AE(ae_title="MISMATCH")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="CXRNODE")
    assert assoc.is_established
    streaming = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file as it is, UIDs from its meta
    try:
        refused = assoc.send_c_store(other)
        accepted = assoc.send_c_store(good)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = streaming
        assoc.release()
    assert refused.Status == 0xC000
    assert accepted.Status == 0x0000


def test_lateral_view_is_stored_as_skipped_with_reason(
    node: NodeProcess, receiver: Receiver, tmp_path: Path, cr_path: Path
) -> None:
    lateral = radiograph_copy(cr_path, tmp_path / "lat.dcm", "lateral", downscale=4,
                              ViewPosition="LL")
    uid = str(pydicom.dcmread(lateral, stop_before_pixels=True).SOPInstanceUID)
    assert storescu(node.dicom_port, [lateral]).returncode == 0
    state = wait_jobs(node, lambda s: any(j["sop_instance_uid"] == uid
                                               for j in s["failed_jobs"]))
    job = next(j for j in state["failed_jobs"] if j["sop_instance_uid"] == uid)
    assert job["state"] == "skipped"
    assert job["reason"].startswith("view:") and "frontal" in job["reason"]
    wait_settled(node)  # whatever the node was going to send has arrived: nothing for it
    assert uid not in results_by_source(receiver.received())


def test_own_results_sent_back_are_not_reprocessed(
    node: NodeProcess, receiver: Receiver, tmp_path: Path, cr_path: Path
) -> None:
    image = radiograph_copy(cr_path, tmp_path / "loop.dcm", "loop", downscale=4)
    source_uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
    assert storescu(node.dicom_port, [image]).returncode == 0
    wait_until(lambda: len(results_by_source(receiver.received()).get(source_uid, {})) >= 2,
               120, 0.5, "the results of the loop image", node.proc)
    by_class = {str(ds.SOPClassUID): f for f in receiver.files()
                if (ds := pydicom.dcmread(f, stop_before_pixels=True)).SOPInstanceUID
                in {u for uids in results_by_source([ds]).get(source_uid, {}).values()
                    for u in uids}}
    sc, sr = by_class[SC_CLASS], by_class[SR_CLASS]
    uid = str(pydicom.dcmread(sc, stop_before_pixels=True).SOPInstanceUID)
    assert storescu(node.dicom_port, [sc], extra=("-xy",)).returncode == 0  # a JPEG capture
    state = wait_jobs(node, lambda s: any(j["sop_instance_uid"] == uid
                                          for j in s["failed_jobs"]))
    job = next(j for j in state["failed_jobs"] if j["sop_instance_uid"] == uid)
    assert (job["state"], job["reason"].split(":")[0]) == ("skipped", "own-result")
    assert storescu(node.dicom_port, [sr]).returncode != 0  # SR is not an accepted SOP class


def test_orthanc_push_gets_results_into_its_study(node: NodeProcess, orthanc, tmp_path: Path,
                                                  cr_path: Path) -> None:
    image = radiograph_copy(cr_path, tmp_path / "orthanc.dcm", "orthanc", downscale=2,
                            StudyInstanceUID=generate_uid())
    uploaded = orthanc.post("/instances", image.read_bytes(), "application/dicom")
    study_id = uploaded["ParentStudy"]
    orthanc.post("/modalities/cxrnode/store", {"Resources": [uploaded["ID"]],
                                               "Synchronous": True})
    with contextlib.suppress(TimeoutError):  # the assertion below shows what arrived
        wait_until(lambda: len(orthanc.get(f"/studies/{study_id}/instances")) >= 3, 180, 1,
                   "the source and its 2 results in Orthanc's study", node.proc)
    instances = orthanc.get(f"/studies/{study_id}/instances")
    assert len(instances) == 3, [i["MainDicomTags"] for i in instances]
    series = orthanc.get(f"/studies/{study_id}/series")
    modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
    assert "SR" in modalities and "CR" in modalities


def send_counting(port: int, files: list[Path], acknowledged: list[str]) -> None:
    """Send one by one with pynetdicom; record each SOP Instance UID acknowledged (0x0000)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRNODE")
    if not assoc.is_established:
        return
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            try:
                status = assoc.send_c_store(ds)
            except Exception:
                return
            if getattr(status, "Status", None) == 0x0000:
                acknowledged.append(str(ds.SOPInstanceUID))
            if not assoc.is_established:
                return
    finally:
        if assoc.is_established:
            assoc.release()


def test_kill_9_mid_send_loses_nothing_acknowledged(
    tmp_path: Path, cr_path: Path, whole_model_path: Path, dcmtk
) -> None:
    files = [radiograph_copy(cr_path, tmp_path / "in" / f"{i:02d}.dcm", f"kill{i}", downscale=4)
             for i in range(30)]
    pacs = Receiver("PACS2", free_port(), tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address]).start()
    try:
        acknowledged: list[str] = []
        sender = threading.Thread(target=send_counting, args=(node.dicom_port, files,
                                                              acknowledged))
        sender.start()
        # kill once 12 are acknowledged (the assertion below fails if the sender stopped first)
        wait_until(lambda: len(acknowledged) >= 12 or not sender.is_alive(), 120, 0.05,
                   "12 images to be acknowledged")
        node.kill9()
        sender.join(60)
        assert 12 <= len(acknowledged) < 30, len(acknowledged)
        node.start()
        pacs.wait_for(2 * len(acknowledged), timeout=300)
        wait_settled(node, timeout=300)  # all sent: anything duplicated has arrived too
        got = results_by_source(pacs.received())
        for uid in acknowledged:
            assert set(got[uid]) == {SR_CLASS, SC_CLASS}, uid
            assert all(len(uids) == 1 for uids in got[uid].values()), dict(got[uid])
        record_figure(f"fault kill -9: {len(acknowledged)} of 30 images acknowledged before "
                      f"the kill; all have SR+SC after restart, none duplicated")
    finally:
        node.stop()
        pacs.stop()


def test_results_wait_for_a_receiver_that_is_down(
    tmp_path: Path, cr_path: Path, whole_model_path: Path, dcmtk
) -> None:
    port = free_port()
    pacs = Receiver("LATEPACS", port, tmp_path / "pacs")
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address],
                       explain="none").start()
    try:
        image = radiograph_copy(cr_path, tmp_path / "late.dcm", "late", downscale=4)
        assert storescu(node.dicom_port, [image]).returncode == 0
        wait_jobs(node, lambda s: s["counts"].get("deliveries_pending", 0) >= 1)
        wait_until(lambda: failed_delivery_attempts(node) >= 1, 60, 0.25,
                   "a delivery attempt to the receiver that is down to fail", node.proc)
        pacs.start()
        got = pacs.wait_for(1, timeout=120)
        assert [str(ds.SOPClassUID) for ds in got] == [SR_CLASS]
        state = wait_jobs(node, lambda s: s["counts"].get("deliveries_sent", 0) == 1)
        assert not state["failed_deliveries"]
    finally:
        node.stop()
        pacs.stop()


def test_given_up_delivery_is_listed_and_resent(
    tmp_path: Path, cr_path: Path, whole_model_path: Path, dcmtk
) -> None:
    pacs = Receiver("GONE", free_port(), tmp_path / "pacs")
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address], explain="none",
                       extra=("--retry-max-attempts", "2")).start()
    try:
        image = radiograph_copy(cr_path, tmp_path / "gone.dcm", "gone", downscale=4)
        assert storescu(node.dicom_port, [image]).returncode == 0
        state = wait_jobs(node, lambda s: len(s["failed_deliveries"]) == 1)
        failed = state["failed_deliveries"][0]
        assert failed["attempts"] == 2 and "association" in failed["reason"]
        exe = Path(sys.executable).with_name("cxr-node")
        listing = subprocess.run([str(exe), "jobs", "--spool", str(node.spool)],
                                 capture_output=True, text=True, check=True).stdout
        assert f"delivery {failed['id']} to {pacs.address} failed after 2 attempt(s)" in listing
        pacs.start()
        out = subprocess.run([str(exe), "resend", "--spool", str(node.spool)],
                             capture_output=True, text=True, check=True).stdout
        assert out.startswith("1 failed delivery re-queued")
        assert len(pacs.wait_for(1, timeout=60)) >= 1
    finally:
        node.stop()
        pacs.stop()


def test_sigterm_stops_cleanly(tmp_path: Path, whole_model_path: Path) -> None:
    node = NodeProcess(tmp_path / "spool", whole_model_path, [], explain="none").start()
    wait_port(node.dicom_port)
    assert node.stop() == 0
    assert "stopped" in node.log_text()


@pytest.mark.parametrize(("syntaxes", "expected"), [("+xa", ExplicitVRLittleEndian),
                                                     ("+xi", ImplicitVRLittleEndian)])
def test_result_files_reach_peers_as_stored_or_converted(tmp_path: Path, cr_path: Path,
                                                         syntaxes: str, expected: str) -> None:
    """Results are streamed from the outbox file as stored when the peer accepts its
    transfer syntax, and re-encoded when it accepts only another one (here dcmtk's storescp
    limited to implicit VR): the peer gets the same data set either way."""
    from node.dimse.scu import Outgoing, send_files
    from node.settings import Peer

    meta = pydicom.dcmread(cr_path, stop_before_pixels=True).file_meta
    item = Outgoing(cr_path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    receiver = Receiver("PACS", free_port(), tmp_path / "got", syntaxes=syntaxes).start()
    try:
        [(path, failure)] = send_files(Peer("PACS", "127.0.0.1", receiver.port), [item],
                                       "CXRNODE")
        assert path == cr_path and failure is None
        receiver.wait_for(1, timeout=60)
    finally:
        receiver.stop()
    [file] = receiver.files()
    sent, stored = pydicom.dcmread(cr_path), pydicom.dcmread(file)
    assert stored.file_meta.TransferSyntaxUID == expected
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert stored.PixelData == sent.PixelData
    assert stored.PatientName == sent.PatientName
