"""Outbound security against real peers, with one sending node for the module: results go over
TLS to dcmtk ``storescp +tls`` that requires a client certificate; a destination whose
certificate the node does not trust is a failed delivery with its reason, retried; STOW-RS
authenticates with basic credentials (from a file) to Orthanc with authentication on and with
a bearer token (from the environment) to a second cxr-node whose STOW-RS requires it; and no
credential shows in a log, the metrics, the jobs listing or a failure reason."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from conftest import record_figure, require_tool

from node.bench.harness import cxr_node
from system.conftest import radiograph_copy
from system.peers import (
    Certificates,
    NodeProcess,
    Orthanc,
    Receiver,
    free_port,
    storescu,
    wait_until,
)

TOKEN = "bearer-7f1c2e9a-outbound"
WRONG_TOKEN = "wrong-4d0b61aa-outbound"
USER, PASSWORD = "cxrnode", "basic-9e2a77c1-outbound"
SECRETS = [TOKEN, WRONG_TOKEN, PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
#: results of one image (explain gradcam): the SR and the heat-map capture
RESULTS = 2


@dataclass
class Outbound:
    """The module's peers, its sending node, and the image that node was sent."""

    node: NodeProcess
    pacs: Receiver
    orthanc: Orthanc
    archive: NodeProcess
    certs: Certificates
    source_uid: str
    orthanc_url: str
    archive_url: str
    #: the same servers under another name, with no or wrong credentials
    orthanc_anonymous: str
    archive_wrong_token: str

    def failed(self, destination: str) -> list[dict]:
        """The node's failed deliveries to ``destination`` (``GET /jobs``)."""
        status, document = self.node.get("/jobs")
        assert status == 200, document
        return [d for d in document["failed_deliveries"] if d["destination"] == destination]


@pytest.fixture(scope="module")
def outbound(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path, cr_path: Path,
             dcmtk) -> Iterator[Outbound]:
    require_tool("Orthanc")
    root = tmp_path_factory.mktemp("outbound")
    certs = Certificates(root / "certs").make()
    stranger = Certificates(root / "stranger").make()  # a CA that signed none of the peers
    pacs = Receiver("TLSPACS", free_port(), root / "pacs", tls=(
        "+tls", str(certs.path("server.key")), str(certs.path("server.crt")),
        "+cf", str(certs.path("ca.crt")), "--require-peer-cert"))
    orthanc = Orthanc(root / "orthanc", users={USER: PASSWORD})
    archive = NodeProcess(root / "archive", whole_model_path, [], explain="none",
                          extra=("--no-onnx-fast-path",), env={"CXR_NODE_HTTP_TOKEN": TOKEN})
    started: list = []
    try:
        for peer in (pacs, orthanc, archive):
            peer.start()
            started.append(peer)
        out = Outbound(
            NodeProcess(root / "node", whole_model_path,
                        [pacs.address, f"STRANGER@127.0.0.1:{pacs.port}"], explain="gradcam"),
            pacs, orthanc, archive, certs, "",
            f"{orthanc.url}/dicom-web", f"{archive.url}/dicomweb",
            f"http://localhost:{orthanc.http_port}/dicom-web",
            f"http://localhost:{archive.http_port}/dicomweb")
        basic, wrong = root / "orthanc.creds", root / "wrong.token"
        basic.write_text(f"{USER}:{PASSWORD}\n")
        wrong.write_text(WRONG_TOKEN)
        config = root / "node.toml"
        urls = [out.orthanc_url, out.orthanc_anonymous, out.archive_url, out.archive_wrong_token]
        config.write_text(
            f"dicomweb_destinations = {json.dumps(urls)}\n"
            f'[destination_tls.TLSPACS]\nca = "{certs.path("ca.crt")}"\n'
            f'cert = "{certs.path("client.crt")}"\nkey = "{certs.path("client.key")}"\n'
            f'[destination_tls.STRANGER]\nca = "{stranger.path("ca.crt")}"\n'
            f'[dicomweb_auth."{out.orthanc_url}"]\nbasic_file = "{basic}"\n'
            f'[dicomweb_auth."{out.archive_url}"]\nbearer_env = "ARCHIVE_TOKEN"\n'
            f'[dicomweb_auth."{out.archive_wrong_token}"]\nbearer_file = "{wrong}"\n')
        out.node.extra = ("--config", str(config), "--retry-max-attempts", "2",
                          "--no-onnx-fast-path")
        out.node.env = {"ARCHIVE_TOKEN": TOKEN}
        out.node.start()
        started.append(out.node)
        image = radiograph_copy(cr_path, root / "in.dcm", "outbound", downscale=4)
        out.source_uid = str(pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)
        sent = storescu(out.node.dicom_port, [image])
        assert sent.returncode == 0, sent.stderr
        # every delivery settled: sent, or failed after its 2 attempts
        wait_until(out.node.idle, 120, 0.25, "the node to settle every delivery",
                   out.node.proc)
        yield out
    finally:
        for peer in reversed(started):
            peer.stop()


def test_results_reach_a_tls_destination_that_requires_a_client_certificate(
    outbound: Outbound
) -> None:
    received = outbound.pacs.wait_for(RESULTS, timeout=60)
    assert {str(ref.ReferencedSOPInstanceUID) for ds in received
            for ref in ds.get("SourceImageSequence", [])} == {outbound.source_uid}
    ca = str(outbound.certs.path("ca.crt"))
    for refused in ((), ("+tla", "+cf", ca)):  # plain TCP; TLS without a client certificate
        echo = subprocess.run(["echoscu", *refused, "-aec", "TLSPACS", "127.0.0.1",
                               str(outbound.pacs.port)], capture_output=True, timeout=60)
        assert echo.returncode != 0, refused


def test_an_untrusted_destination_certificate_is_a_failed_delivery_retried_with_its_reason(
    outbound: Outbound
) -> None:
    destination = f"STRANGER@127.0.0.1:{outbound.pacs.port}"
    failed = outbound.failed(destination)
    assert len(failed) == RESULTS
    for d in failed:
        assert d["attempts"] == 2  # tried again after the first failure
        assert d["reason"].startswith(f"TLS with {destination} failed: ")
        assert "certificate verify failed" in d["reason"], d["reason"]
    assert outbound.node.proc is not None and outbound.node.proc.poll() is None
    listing = subprocess.run([*cxr_node(), "jobs", "--spool", str(outbound.node.spool)],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert f"to {destination} failed after 2 attempt(s): TLS with" in listing
    assert f"to {destination} failed (TLS with" in outbound.node.log_text()  # the retry
    record_figure(f"outbound TLS: {RESULTS} results to storescp +tls with a client "
                  f"certificate; untrusted destination failed after 2 attempts: "
                  f"{failed[0]['reason']}")


def test_basic_credentials_store_results_in_orthanc_with_authentication_on(
    outbound: Outbound
) -> None:
    orthanc = outbound.orthanc
    ids = wait_until(lambda: (i := orthanc.get("/instances")) and len(i) >= RESULTS and i, 60,
                     0.25, "the results in Orthanc")
    stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in ids}
    assert stored == {str(ds.SOPInstanceUID) for ds in outbound.pacs.received()}
    anonymous = outbound.failed(outbound.orthanc_anonymous)  # the same Orthanc, no credentials
    assert len(anonymous) == RESULTS
    assert all("401" in d["reason"] for d in anonymous), anonymous


def test_a_bearer_token_stores_results_in_a_node_that_requires_it(outbound: Outbound) -> None:
    # the archive node stores what is sent; its gate skips the capture, another node's
    # result (the routing-loop guard), and refuses the SR (not an image: 0x0122)
    wait_until(lambda: outbound.archive.counts().get("jobs_skipped", 0) >= 1, 60, 0.25,
               "the capture stored by the archive node")
    [sr] = outbound.failed(outbound.archive_url)
    assert "failure reason 0x0122" in sr["reason"], sr["reason"]  # authenticated, then judged
    wrong = outbound.failed(outbound.archive_wrong_token)  # the same node, a wrong token
    assert len(wrong) == RESULTS
    assert all("401" in d["reason"] for d in wrong), wrong


def test_no_credential_in_logs_metrics_jobs_or_failure_reasons(outbound: Outbound) -> None:
    node = outbound.node
    texts = {"metrics": httpx.get(f"{node.url}/metrics", timeout=30).text,
             "jobs": json.dumps(node.get("/jobs")[1]),
             "jobs CLI": subprocess.run([*cxr_node(), "jobs", "--spool", str(node.spool),
                                         "--json"], capture_output=True, text=True,
                                        check=True, timeout=60).stdout,
             "log": node.log_text(), "archive log": outbound.archive.log_text()}
    assert "deliveries" in texts["metrics"] and "401" in texts["log"]  # they did say things
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a credential leaked into the {where}"
