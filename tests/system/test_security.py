"""Access control and privacy against real peers: AE allow list, DIMSE and HTTP over TLS,
spool quota, and no patient data in logs, metrics or error messages."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from conftest import record_figure

from node.http.multipart import build_related
from system.conftest import radiograph_copy
from system.peers import Certificates, NodeProcess, Receiver, free_port, storescu, wait_until

PHI = {"PatientName": "Sentinel^Phiona^Q", "PatientID": "PHI-77341902",
       "PatientBirthDate": "19230817", "OtherPatientIDs": "ALT-55120077",
       "AccessionNumber": "ACC99887766"}
PHI_STRINGS = ["Sentinel", "Phiona", "PHI-77341902", "19230817", "ALT-55120077",
               "ACC99887766"]


def accepted(proc: subprocess.CompletedProcess) -> bool:
    """Whether ``storescu`` had its image stored (not refused with 0xA700, out of resources)."""
    return proc.returncode == 0 and "A700" not in proc.stderr + proc.stdout


def echo(port: int, calling: str = "MODALITY", *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", *tls, "-aet", calling, "-aec", "CXRNODE", "127.0.0.1",
                           str(port)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs")).make()


def test_calling_ae_allow_list(tmp_path: Path, whole_model_path: Path, dcmtk) -> None:
    node = NodeProcess(tmp_path / "spool", whole_model_path, [], explain="none",
                       extra=("--allow-calling-ae", "MODALITY", "--allow-calling-ae", "PACS"))
    node.start()
    try:
        assert echo(node.dicom_port, "MODALITY").returncode == 0
        refused = echo(node.dicom_port, "INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
        wrong_called = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "SOMEONE",
                                       "127.0.0.1", str(node.dicom_port)],
                                      capture_output=True, text=True, timeout=60)
        assert "Called AE Title Not Recognized" in wrong_called.stderr
    finally:
        node.stop()


def test_dimse_and_http_over_tls_with_client_certificates(
    tmp_path: Path, whole_model_path: Path, certs: Certificates, cr_path: Path, dcmtk
) -> None:
    pacs = Receiver("PACS", free_port(), tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address], explain="none",
                       extra=("--tls-cert", str(certs.path("server.crt")), "--tls-key",
                              str(certs.path("server.key")), "--tls-ca",
                              str(certs.path("ca.crt")), "--tls-require-client-cert"))
    node.start()
    client_tls = ("+tls", str(certs.path("client.key")), str(certs.path("client.crt")),
                  "+cf", str(certs.path("ca.crt")))
    try:
        ok = echo(node.dicom_port, "MODALITY", *client_tls)
        assert ok.returncode == 0, ok.stderr
        assert echo(node.dicom_port, "MODALITY").returncode != 0  # plain TCP refused
        anonymous = echo(node.dicom_port, "MODALITY", "+tla", "+cf", str(certs.path("ca.crt")))
        assert anonymous.returncode != 0  # no client certificate
        image = radiograph_copy(cr_path, tmp_path / "tls.dcm", "tls", downscale=4)
        sent = storescu(node.dicom_port, [image], extra=client_tls)
        assert sent.returncode == 0, sent.stderr
        assert pacs.wait_for(1, timeout=120)
        context = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
        context.load_cert_chain(certs.path("client.crt"), certs.path("client.key"))
        url = f"https://127.0.0.1:{node.http_port}"
        assert httpx.get(f"{url}/healthz", verify=context).status_code == 200
        bare = ssl.create_default_context(cafile=str(certs.path("ca.crt")))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", verify=bare)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{node.http_port}/healthz")
    finally:
        node.stop()
        pacs.stop()


def test_spool_quota_refuses_then_recovers_and_loses_nothing(
    tmp_path: Path, whole_model_path: Path, cr_path: Path, dcmtk
) -> None:
    port = free_port()
    pacs = Receiver("LATE", port, tmp_path / "pacs")
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address], explain="gradcam",
                       extra=("--spool-quota-mb", "6"))
    node.start()
    try:
        files: list[Path] = []
        acknowledged = []
        refused = 0

        def send_another() -> bool:
            """Send one more image; whether the node has refused one yet."""
            nonlocal refused
            i = len(files)
            files.append(radiograph_copy(cr_path, tmp_path / "in" / f"{i}.dcm", f"quota{i}",
                                         downscale=4))
            if accepted(storescu(node.dicom_port, [files[-1]])):
                acknowledged.append(str(pydicom.dcmread(files[-1], stop_before_pixels=True)
                                        .SOPInstanceUID))
            else:
                refused += 1
            return refused > 0

        # The first image's results are in the spool before it fills: once the receiver is back,
        # sending them frees the room the results of the others need.
        assert not send_another(), "the first image was refused"
        wait_until(lambda: node.counts().get("jobs_done", 0) >= 1, 120, 0.25,
                   "the first image's results", node.proc)
        for _ in range(39):  # ~0.5 MB each: 40 images are three times the quota
            if send_another():
                break
        assert refused > 0, "the quota never filled"
        body, content_type = build_related([files[-1].read_bytes()])
        r = httpx.post(f"{node.url}/dicomweb/studies", content=body, timeout=60,
                       headers={"Content-Type": content_type})
        assert r.status_code == 503  # STOW-RS stores: nothing stored, out of resources
        assert r.headers["retry-after"]
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        # /score stores nothing (its answer is its acknowledgement): it still answers
        r = httpx.post(f"{node.url}/score", content=files[0].read_bytes(), timeout=120,
                       headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        pacs.start()  # results flow out, the spool is purged, room comes back
        received = pacs.wait_for(2 * len(acknowledged), timeout=240)
        sources = {str(ref.ReferencedSOPInstanceUID) for ds in received
                   for ref in ds.get("SourceImageSequence", [])}
        assert set(acknowledged) <= sources
        record_figure(f"fault spool full: {refused} C-STORE refused with 0xA700, STOW-RS 0xA700; "
                      f"all {len(acknowledged)} acknowledged delivered after space returned")
        wait_until(lambda: accepted(storescu(node.dicom_port, [files[-1]])), 60, 1,
                   "the node to take images again", node.proc)
    finally:
        node.stop()
        pacs.stop()


def test_no_patient_data_in_logs_metrics_or_errors(
    tmp_path: Path, whole_model_path: Path, cr_path: Path, dcmtk
) -> None:
    pacs = Receiver("PACS", free_port(), tmp_path / "pacs").start()
    node = NodeProcess(tmp_path / "spool", whole_model_path, [pacs.address],
                       explain="gradcam").start()
    try:
        good = radiograph_copy(cr_path, tmp_path / "phi.dcm", "phi", downscale=4, **PHI)
        lateral = radiograph_copy(cr_path, tmp_path / "phi_lat.dcm", "phi-lat", downscale=4,
                                  ViewPosition="LL", **PHI)
        knee = radiograph_copy(cr_path, tmp_path / "phi_knee.dcm", "phi-knee", downscale=4,
                               BodyPartExamined="KNEE", **PHI)
        broken = tmp_path / "phi_broken.dcm"
        broken.write_bytes(good.read_bytes()[:-5000])
        assert storescu(node.dicom_port, [good, lateral, knee]).returncode == 0
        storescu(node.dicom_port, [broken])
        bodies = []
        for f in (good, lateral, broken):
            r = httpx.post(f"{node.url}/score", content=f.read_bytes(), timeout=120,
                           headers={"Content-Type": "application/dicom"})
            if r.status_code != 200:
                bodies.append(r.text)
        assert len(bodies) == 2
        pacs.wait_for(2, timeout=120)
        # every job closed and every result sent; then the log is complete once the node stops
        wait_until(node.idle, 120, 0.25, "the node to finish its jobs and deliveries",
                   node.proc)
        texts = {"metrics": httpx.get(f"{node.url}/metrics").text,
                 "jobs": httpx.get(f"{node.url}/jobs").text, "errors": "\n".join(bodies)}
        node.stop()
        texts["log"] = node.log_text()
        for where, text in texts.items():
            for secret in PHI_STRINGS:
                assert secret not in text, f"{secret!r} leaked into {where}"
        assert "received" in texts["log"]  # the log did record the traffic
    finally:
        node.stop()
        pacs.stop()
