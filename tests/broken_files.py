"""Broken real-world DICOM files, made from the NEMA CR chest radiograph, for any test to reuse.

Each builder returns :class:`BrokenFile`: the file as Part 10 bytes and the outcome every front
must give it, ``OK`` (the image is usable and must be scored) or the code of the
:class:`dicom_io.DicomIOError` it must be refused with, where it arrives (``dicom_io.load``,
``dicom_io.from_dataset``, C-STORE, STOW-RS, ``/score``, ``cxr-node predict``).

The source is ``RG1_UNCR.dcm`` (pydicom-data) downsampled by 8 in both directions (245 x 231,
16 bits), so that every variant is small and quick to score.

    from broken_files import BROKEN, OK, good_file

    for name, make in BROKEN.items():
        case = make()          # case.data: bytes, case.code: "OK" or the refusal's code
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: The outcome of a file that must be scored (not refused).
OK = "OK"


@dataclass(frozen=True)
class BrokenFile:
    """One file and what must become of it: ``OK`` or the code it is refused with."""

    name: str
    data: bytes
    code: str

    @property
    def refused(self) -> bool:
        return self.code != OK


@cache
def _base_bytes() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    arr = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _bytes(ds)


def base_dataset() -> Dataset:
    """A fresh copy of the small radiograph (its own UIDs are those of RG1_UNCR)."""
    return pydicom.dcmread(io.BytesIO(_base_bytes()))


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    # enforce_file_format=False: write what we set, as a broken sender would.
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def fresh_uids(ds: Dataset) -> Dataset:
    """New SOP/Series/Study Instance UIDs, so that every good file has its own result."""
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    return ds


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put undecoded bytes into an element, as a file with a broken value holds them."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _changed(name: str, code: str, change: Callable[[Dataset], None]) -> BrokenFile:
    ds = fresh_uids(base_dataset())
    change(ds)
    return BrokenFile(name, _bytes(ds), code)


# --- files that must be scored -------------------------------------------------------------


def good_file() -> BrokenFile:
    """The small radiograph itself, with fresh UIDs."""
    return _changed("good", OK, lambda ds: None)


def bad_patient_age() -> BrokenFile:
    """Patient's Age ``62`` (AS must be ``nnnD/W/M/Y``): a usable image with a broken value."""
    return _changed("bad-patient-age", OK, lambda ds: _raw(ds, "PatientAge", "AS", b"62"))


def zero_pixel_spacing() -> BrokenFile:
    """Pixel Spacing ``0\\0``: no usable spacing, but a usable image."""
    return _changed("zero-pixel-spacing", OK,
                    lambda ds: _raw(ds, "PixelSpacing", "DS", b"0\\0 "))


def bad_patient_sex_and_dates() -> BrokenFile:
    """Patient's Sex ``MALE``, Study Date ``2004-08-26``: broken values of a usable image."""
    def change(ds: Dataset) -> None:
        _raw(ds, "PatientSex", "CS", b"MALE")
        _raw(ds, "StudyDate", "DA", b"2004-08-26")
    return _changed("bad-sex-and-dates", OK, change)


def uid_with_padding() -> BrokenFile:
    """SOP Instance UID padded with a trailing NUL, as many senders write UIDs: still valid."""
    def change(ds: Dataset) -> None:
        _raw(ds, "SOPInstanceUID", "UI", (str(ds.SOPInstanceUID) + "\x00").encode()
             + (b"" if len(str(ds.SOPInstanceUID)) % 2 else b"\x00"))
    return _changed("uid-nul-padded", OK, change)


# --- files that must be refused ------------------------------------------------------------


def empty_sop_instance_uid() -> BrokenFile:
    return _changed("empty-sop-instance-uid", "missing-uid",
                    lambda ds: _raw(ds, "SOPInstanceUID", "UI", b""))


def missing_sop_instance_uid() -> BrokenFile:
    return _changed("missing-sop-instance-uid", "missing-uid",
                    lambda ds: delattr(ds, "SOPInstanceUID"))


def invalid_sop_instance_uid() -> BrokenFile:
    """Letters in the UID (seen from de-identification tools that replace UIDs by names)."""
    return _changed("invalid-sop-instance-uid", "invalid-uid",
                    lambda ds: _raw(ds, "SOPInstanceUID", "UI", b"1.2.840.anon.42\x00"))


def too_long_sop_instance_uid() -> BrokenFile:
    return _changed("too-long-sop-instance-uid", "invalid-uid",
                    lambda ds: _raw(ds, "SOPInstanceUID", "UI", b"1.2." + b"3" * 70))


def missing_study_instance_uid() -> BrokenFile:
    return _changed("missing-study-instance-uid", "missing-uid",
                    lambda ds: delattr(ds, "StudyInstanceUID"))


def empty_series_instance_uid() -> BrokenFile:
    return _changed("empty-series-instance-uid", "missing-uid",
                    lambda ds: _raw(ds, "SeriesInstanceUID", "UI", b""))


def sop_instance_uid_wrong_vr() -> BrokenFile:
    """SOP Instance UID written as US of one byte: pydicom raises on reading its value."""
    return _changed("sop-instance-uid-wrong-vr", "corrupt",
                    lambda ds: _raw(ds, "SOPInstanceUID", "US", b"\x01"))


def invalid_study_instance_uid() -> BrokenFile:
    """A UID with a leading-zero component (PS3.5 9.1 forbids it)."""
    return _changed("invalid-study-instance-uid", "invalid-uid",
                    lambda ds: _raw(ds, "StudyInstanceUID", "UI", b"1.2.840.01.5\x00"))


def truncated_pixel_data() -> BrokenFile:
    """A transfer cut inside the pixel data."""
    data = good_file().data
    return BrokenFile("truncated-pixel-data", data[: len(data) - 20000], "short-pixel-data")


def truncated_header() -> BrokenFile:
    """A transfer cut inside the header, before the pixel data."""
    data = good_file().data
    return BrokenFile("truncated-header", data[:400], "corrupt")


def preamble_only() -> BrokenFile:
    """A Part 10 preamble and ``DICM`` and nothing after (a copy that failed at once)."""
    return BrokenFile("preamble-only", bytes(128) + b"DICM", "not-dicom")


def not_dicom() -> BrokenFile:
    """A text file where an image was expected (a report, an error page saved as .dcm)."""
    return BrokenFile("not-dicom", b"<html><body>502 Bad Gateway</body></html>\n" * 40,
                      "not-dicom")


def broken_png() -> BrokenFile:
    """A PNG signature and then garbage (a download cut short)."""
    return BrokenFile("broken-png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 100, "not-png")


def truncated_png() -> BrokenFile:
    """A 16-bit grayscale PNG of the radiograph, cut in the middle of its image data."""
    import cv2

    ok, png = cv2.imencode(".png", base_dataset().pixel_array)
    assert ok
    data = png.tobytes()
    return BrokenFile("truncated-png", data[: len(data) // 2], "not-png")


def empty_file() -> BrokenFile:
    return BrokenFile("empty-file", b"", "not-dicom")


def rows_too_large() -> BrokenFile:
    """Rows says more rows than Pixel Data holds."""
    return _changed("rows-too-large", "short-pixel-data",
                    lambda ds: setattr(ds, "Rows", int(ds.Rows) + 40))


def rows_too_small() -> BrokenFile:
    """Rows says fewer rows than Pixel Data holds: the image would be read cut and shifted."""
    return _changed("rows-too-small", "long-pixel-data",
                    lambda ds: setattr(ds, "Rows", int(ds.Rows) - 40))


def columns_too_small() -> BrokenFile:
    """Columns says fewer columns than Pixel Data holds: the image would be read sheared."""
    return _changed("columns-too-small", "long-pixel-data",
                    lambda ds: setattr(ds, "Columns", int(ds.Columns) - 1))


def rows_zero() -> BrokenFile:
    return _changed("rows-zero", "dimensions", lambda ds: setattr(ds, "Rows", 0))


def lateral_view() -> BrokenFile:
    """A valid image the model must not see: declined, not broken."""
    return _changed("lateral-view", "view", lambda ds: setattr(ds, "ViewPosition", "LL"))


def structured_report() -> BrokenFile:
    """Another SOP class in the same folder (an SR of the study): declined."""
    return _changed("structured-report", "sop-class",
                    lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.88.22"))


def no_sop_class() -> BrokenFile:
    return _changed("no-sop-class", "no-sop-class", lambda ds: delattr(ds, "SOPClassUID"))


def blank_image() -> BrokenFile:
    """Every pixel the same value (a detector read-out that failed)."""
    def change(ds: Dataset) -> None:
        ds.PixelData = bytes(len(ds.PixelData))
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
    return _changed("blank-image", "blank-image", change)


#: Every builder, by name: the good file first, then usable-but-broken, then refused ones.
BROKEN: dict[str, Callable[[], BrokenFile]] = {
    "good": good_file,
    "bad-patient-age": bad_patient_age,
    "zero-pixel-spacing": zero_pixel_spacing,
    "bad-sex-and-dates": bad_patient_sex_and_dates,
    "uid-nul-padded": uid_with_padding,
    "empty-sop-instance-uid": empty_sop_instance_uid,
    "missing-sop-instance-uid": missing_sop_instance_uid,
    "invalid-sop-instance-uid": invalid_sop_instance_uid,
    "too-long-sop-instance-uid": too_long_sop_instance_uid,
    "missing-study-instance-uid": missing_study_instance_uid,
    "empty-series-instance-uid": empty_series_instance_uid,
    "invalid-study-instance-uid": invalid_study_instance_uid,
    "sop-instance-uid-wrong-vr": sop_instance_uid_wrong_vr,
    "truncated-pixel-data": truncated_pixel_data,
    "truncated-header": truncated_header,
    "preamble-only": preamble_only,
    "not-dicom": not_dicom,
    "broken-png": broken_png,
    "truncated-png": truncated_png,
    "empty-file": empty_file,
    "rows-too-large": rows_too_large,
    "rows-too-small": rows_too_small,
    "columns-too-small": columns_too_small,
    "rows-zero": rows_zero,
    "lateral-view": lateral_view,
    "structured-report": structured_report,
    "no-sop-class": no_sop_class,
    "blank-image": blank_image,
}


def all_files() -> list[BrokenFile]:
    """One of each (each good one with fresh UIDs)."""
    return [make() for make in BROKEN.values()]
