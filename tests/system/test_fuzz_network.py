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
from pynetdicom.sop_class import Verification
from pynetdicom.status import code_to_category

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
    """Every mutated data set the SCU can send gets a C-STORE response with a success or a
    failure status; an association aborted, or a response without a status, fails the test.

    Counted apart, and only these: a mutation pydicom cannot read back (nothing to send), and
    one pynetdicom refuses before sending anything (it cannot encode the data set, or no
    accepted presentation context fits its SOP class and transfer syntax). For those the
    association must still be up: a C-ECHO on it gets success."""
    base = small_radiograph(cr_path)
    outcomes: dict[str, int] = {}
    ae = AE(ae_title="FUZZER")
    for sop_class in sorted(INPUT_SOP_CLASSES):
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES[:3])
    ae.add_requested_context(Verification)

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    @FUZZ
    @given(data=mutated(base))
    def check(data: bytes) -> None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            str(ds.SOPClassUID)
        except Exception:
            count("not sent: unreadable by pydicom")
            return
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="CXRNODE")
        assert assoc.is_established
        try:
            try:
                status = assoc.send_c_store(ds)
            except (AttributeError, ValueError) as e:
                # pynetdicom's refusals before it sends anything (see send_c_store): the data
                # set is unencodable by the SCU, or names a SOP class / transfer syntax no
                # accepted context has. Nothing reached the node, so the association is intact.
                assert assoc.is_established, f"association lost after a local refusal: {e}"
                echo = assoc.send_c_echo()
                assert echo.get("Status") == 0x0000, f"C-ECHO after a local refusal: {echo}"
                count(f"not sent: SCU refused ({type(e).__name__})")
                return
            assert "Status" in status, ("no C-STORE response: the association was aborted "
                                        "or timed out")
            code = int(status.Status)
            assert code_to_category(code) in ("Success", "Failure"), f"status 0x{code:04X}"
            assert assoc.is_established, f"association lost after status 0x{code:04X}"
            count(f"0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    check()
    record_figure(f"fuzz over C-STORE: {outcomes}")
    echo = subprocess.run(["echoscu", "-aec", "CXRNODE", "127.0.0.1", str(node.dicom_port)],
                          capture_output=True, timeout=60)
    assert echo.returncode == 0
    assert any(k.startswith("0x") for k in outcomes)
