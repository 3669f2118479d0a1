"""Mutated radiographs through C-STORE, STOW-RS and /score: a status each time, never a 5xx,
never a dead node."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import pydicom
from conftest import record_figure
from hypothesis import HealthCheck, given, settings
from mutations import mutated, small_radiograph
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

from dicom_io.uids import INPUT_SOP_CLASSES
from node.http.multipart import build_related
from system.peers import NodeProcess

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def test_http_and_stow_never_answer_5xx(node: NodeProcess, cr_path: Path) -> None:
    base = small_radiograph(cr_path)
    statuses: dict[int, int] = {}

    @FUZZ
    @given(data=mutated(base))
    def check(data: bytes) -> None:
        r = httpx.post(f"{node.url}/score", content=data, timeout=120,
                       headers={"Content-Type": "application/dicom"})
        assert r.status_code < 500, r.text
        if r.status_code != 200:
            assert r.json()["reason"]
        body, content_type = build_related([data])
        s = httpx.post(f"{node.url}/dicomweb/studies", content=body, timeout=120,
                       headers={"Content-Type": content_type})
        assert s.status_code in (200, 202, 409), s.text
        for code in (r.status_code, s.status_code):
            statuses[code] = statuses.get(code, 0) + 1

    check()
    record_figure(f"fuzz over HTTP: {sum(statuses.values())} requests, statuses {statuses}")
    assert httpx.get(f"{node.url}/readyz").status_code == 200


def test_c_store_of_mutated_datasets_gets_a_status(node: NodeProcess, cr_path: Path) -> None:
    base = small_radiograph(cr_path)
    outcomes: dict[str, int] = {}
    ae = AE(ae_title="FUZZER")
    for sop_class in sorted(INPUT_SOP_CLASSES):
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES[:3])

    @FUZZ
    @given(data=mutated(base))
    def check(data: bytes) -> None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            str(ds.SOPClassUID)
        except Exception:
            outcomes["unsendable"] = outcomes.get("unsendable", 0) + 1
            return
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="CXRNODE")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
            key = f"0x{status.Status:04X}" if "Status" in status else "local-refusal"
        except Exception as e:  # pynetdicom refused to encode it: nothing was sent
            key = f"local-{type(e).__name__}"
        finally:
            if assoc.is_established:
                assoc.release()
        outcomes[key] = outcomes.get(key, 0) + 1

    check()
    record_figure(f"fuzz over C-STORE: {outcomes}")
    echo = subprocess.run(["echoscu", "-aec", "CXRNODE", "127.0.0.1", str(node.dicom_port)],
                          capture_output=True, timeout=60)
    assert echo.returncode == 0
    assert any(k.startswith("0x") for k in outcomes)
