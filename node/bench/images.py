"""The radiographs ``cxr-node bench`` sends: DICOM files as they are, PNGs wrapped as DX, by
default pydicom-data's NEMA CR chest."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CR_TEST_FILE = "RG1_UNCR.dcm"


@dataclass
class BenchImage:
    """One distinct radiograph: its DICOM bytes (as sent) and where it came from."""

    name: str
    data: bytes


def _png_dataset(path: Path) -> Any:
    """A DX (for presentation) object around a PNG radiograph, so the node can take it."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dicom_io import load_png
    from dicom_io.uids import DX_PRESENTATION_STORAGE

    image = load_png(path)
    pixels = np.ascontiguousarray(image.pixels)
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPClassUID = DX_PRESENTATION_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node bench", path.name])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cxr-node bench study", path.name])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-node bench series", path.name])
    ds.PatientName, ds.PatientID = "BENCH^IMAGE", f"BENCH-{path.stem}"[:64]
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def _encode(ds: Any) -> bytes:
    import io

    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file()
                          and p.suffix.lower() in ("", ".dcm", ".dicom", ".png"))
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"--images {path}: no such file or folder")
    return out


def default_image() -> Path:
    """pydicom-data's NEMA CR chest (1955 x 1841, MONOCHROME1)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(CR_TEST_FILE, download=False)
    if not found:
        raise ValueError(f"no --images given and {CR_TEST_FILE} is not available: "
                         "install pydicom-data or pass --images")
    return Path(str(found))


def collect_images(paths: Sequence[Path]) -> list[BenchImage]:
    """The radiographs to use: DICOM files as they are, PNGs wrapped as DX; each must pass
    the node's input gate and decode (others are skipped with a warning)."""
    from dicom_io import DicomIOError, from_dataset, read_dataset

    files = _files(paths) if paths else [default_image()]
    out: list[BenchImage] = []
    for path in files:
        try:
            with path.open("rb") as f:
                head = f.read(8)
            if head == b"\x89PNG\r\n\x1a\n":
                data = _encode(_png_dataset(path))
            else:
                data = path.read_bytes()
            from_dataset(read_dataset(data), path.name)
        except (DicomIOError, OSError) as e:
            logger.warning("%s skipped: %s", path, e)
            continue
        out.append(BenchImage(path.name, data))
    if not out:
        raise ValueError("no usable radiograph among --images (DICOM CR/DX or PNG)")
    return out
