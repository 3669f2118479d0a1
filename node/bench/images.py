"""The radiographs ``cxr-node bench`` sends: ``--images`` (DICOM files as they are, PNGs wrapped
as DX) or, by default, the mixed set of :mod:`node.bench.image_set` (the encodings a PACS
sends); and, apart, the uncompressed NEMA CR on which the node's own cost per image is judged
(:attr:`ImageSet.overhead`)."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
    """pydicom-data's NEMA CR chest (1955 x 1841, MONOCHROME1, uncompressed)."""
    from node.bench.image_set import nema_file

    found = nema_file(CR_TEST_FILE)
    if not found:
        raise ValueError(f"no --images given and {CR_TEST_FILE} is not available: "
                         "install pydicom-data or pass --images")
    return found


@dataclass
class ImageSet:
    """The radiographs every phase sends, what they are, and the overhead image."""

    images: list[BenchImage]
    #: count per transfer syntax, photometric interpretation, modality, bits allocated, ...
    info: dict[str, Any] = field(default_factory=dict)
    #: The uncompressed NEMA CR (1955 x 1841): the image the node's own cost per image is
    #: judged on (issue #17's first target), None when pydicom-data is not installed.
    overhead: BenchImage | None = None


def overhead_image() -> BenchImage | None:
    """The uncompressed NEMA CR as a :class:`BenchImage`, or None without pydicom-data."""
    from node.bench.image_set import nema_file

    path = nema_file(CR_TEST_FILE)
    return None if path is None else BenchImage(path.name, path.read_bytes())


def describe(images: Sequence[BenchImage]) -> dict[str, Any]:
    """How many of the images are in each transfer syntax, photometric interpretation,
    modality and sample size (read from their headers)."""
    import pydicom

    counts: dict[str, Counter[str]] = {k: Counter() for k in (
        "transfer_syntaxes", "photometric", "modality", "bits_allocated")}
    for image in images:
        ds = pydicom.dcmread(io.BytesIO(image.data), stop_before_pixels=True)
        counts["transfer_syntaxes"][pydicom.uid.UID(ds.file_meta.TransferSyntaxUID).name] += 1
        counts["photometric"][str(ds.get("PhotometricInterpretation", "?"))] += 1
        counts["modality"][str(ds.get("Modality", "?"))] += 1
        counts["bits_allocated"][str(ds.get("BitsAllocated", "?"))] += 1
    return {"count": len(images), "mb": round(sum(len(i.data) for i in images) / 1e6, 1),
            **{k: dict(sorted(c.items())) for k, c in counts.items()}}


def bench_images(paths: Sequence[Path], cache: Path | None = None,
                 progress: Callable[[str], None] = logger.info) -> ImageSet:
    """``--images`` when given, else the default mixed set (made once into ``cache``)."""
    from node.bench import image_set

    if paths:
        images = collect_images(paths)
        info: dict[str, Any] = {"source": "--images"}
    else:
        files, manifest = image_set.default_set(cache, progress=progress)
        images = [BenchImage(f.name, f.read_bytes()) for f in files]
        info = {"source": "default", "folder": str(files[0].parent) if files else None,
                "left_out": manifest.get("left_out", []),
                "made_by": dict(Counter(i["made_by"] for i in manifest["images"]))}
    info.update(describe(images))
    overhead = overhead_image()
    info["overhead_image"] = None if overhead is None else overhead.name
    return ImageSet(images, info, overhead)


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
