"""Session-wide real peers: started once, shared by the system tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_tool
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from system.peers import NodeProcess, Orthanc, Receiver, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/system/" in str(item.fspath):
            item.add_marker(pytest.mark.system)


def radiograph_copy(source: Path, dest: Path, name: str, downscale: int = 1,
                    **changes: object) -> Path:
    """A copy of a real radiograph as a new instance (new SOP Instance UID, same study)."""
    ds = pydicom.dcmread(source)
    if downscale > 1:
        arr = ds.pixel_array[::downscale, ::downscale]
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.Rows, ds.Columns = arr.shape
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        setattr(ds, key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


@pytest.fixture(scope="session")
def dcmtk() -> None:
    for tool in ("storescp", "storescu", "echoscu", "dciodvfy", "dsrdump"):
        require_tool(tool)


@pytest.fixture(scope="session")
def receiver(tmp_path_factory: pytest.TempPathFactory, dcmtk) -> Iterator[Receiver]:
    r = Receiver("PACS", free_port(), tmp_path_factory.mktemp("pacs")).start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require_tool("Orthanc")
    o = Orthanc(tmp_path_factory.mktemp("orthanc"))
    o.dicom_port = free_port()
    o.http_port = free_port()
    yield o
    o.stop()


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory, whole_model_path: Path, receiver: Receiver,
         orthanc: Orthanc) -> Iterator[NodeProcess]:
    """One node for the session, sending results to the storescp PACS and to Orthanc."""
    folder = tmp_path_factory.mktemp("node")
    n = NodeProcess(folder / "spool", whole_model_path,
                    [receiver.address, f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"])
    n.dicom_port = free_port()
    orthanc.start({"cxrnode": [n.ae_title, "127.0.0.1", n.dicom_port]})
    n.start()
    yield n
    n.stop()
