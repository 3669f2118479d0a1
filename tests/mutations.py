"""Hypothesis strategies that break real DICOM files in the ways broken senders do."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.3.4",
]


def small_radiograph(path) -> bytes:
    """A real CR chest, downscaled so each case is cheap, as Part 10 bytes."""
    ds = pydicom.dcmread(path)
    arr = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


HEADER_CHANGES = st.sampled_from([
    ("Rows", st.integers(-5, 70000)), ("Columns", st.integers(-5, 70000)),
    ("BitsAllocated", st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64])),
    ("BitsStored", st.integers(-1, 40)), ("HighBit", st.integers(-1, 40)),
    ("PixelRepresentation", st.integers(-1, 3)), ("SamplesPerPixel", st.integers(0, 4)),
    ("PhotometricInterpretation", st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "", "XYZ"])),
    ("NumberOfFrames", st.sampled_from([0, 1, 2, -1, "abc"])),
    ("WindowCenter", st.sampled_from([0, -1e9, 1e12, "x", [1, 2, 3]])),
    ("WindowWidth", st.sampled_from([0, -5, 1e-9, 1e12, [0, 0]])),
    ("RescaleSlope", st.sampled_from([0, -1, 1e30, float("nan"), "inf"])),
    ("RescaleIntercept", st.sampled_from([-1e30, 5, float("nan")])),
    ("VOILUTFunction", st.sampled_from(["SIGMOID", "LINEAR_EXACT", "BOGUS"])),
    ("Modality", st.sampled_from(["CR", "DX", "CT", "", "SR"])),
    ("SOPClassUID", st.sampled_from(["1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.7",
                                     "1.2.840.10008.5.1.4.1.1.2", "not-a-uid", ""])),
    ("BodyPartExamined", st.sampled_from(["CHEST", "KNEE", "", "\x00\x01"])),
    ("ViewPosition", st.sampled_from(["PA", "LL", "AP", "???"])),
    ("VOILUTSequence", st.just("bad-lut")), ("ModalityLUTSequence", st.just("bad-lut")),
    ("PixelData", st.sampled_from([b"", b"\x00", b"\xff" * 1001])),
    ("TransferSyntaxUID", st.sampled_from(TRANSFER_SYNTAXES)),
])


@st.composite
def header_mutations(draw, base: bytes) -> bytes:
    """``base`` with 1 to 4 header attributes set to hostile values."""
    ds = pydicom.dcmread(io.BytesIO(base))
    for _ in range(draw(st.integers(1, 4))):
        keyword, values = draw(HEADER_CHANGES)
        value = draw(values)
        if keyword == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = value
            continue
        if value == "bad-lut":
            item = Dataset()
            item.LUTDescriptor = draw(st.sampled_from([[0, 0, 16], [4096, 0, 8], [2, 0, 99]]))
            item.LUTData = draw(st.sampled_from([[0, 1], list(range(300)), []]))
            setattr(ds, keyword, Sequence([item]))
            continue
        try:
            setattr(ds, keyword, value)
        except Exception:
            continue
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:
        return base
    return buffer.getvalue()


@st.composite
def byte_mutations(draw, base: bytes) -> bytes:
    """``base`` truncated, with bytes flipped, or with junk spliced in."""
    data = bytearray(base)
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "header-flip"]))
    if kind == "truncate":
        return bytes(data[:draw(st.integers(0, len(data) - 1))])
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:])
    limit = 1500 if kind == "header-flip" else len(data) - 1  # the header is near the start
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(0, min(limit, len(data) - 1)))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


def mutated(base: bytes):
    return st.one_of(header_mutations(base), byte_mutations(base))
