"""DICOM in and out: read any chest radiograph a PACS sends; write standard results."""

from dicom_io.errors import DeclinedError, DicomIOError, InvalidInputError, ResultBuildError
from dicom_io.gate import check_acceptable, check_header, check_pixel_header, is_own_result
from dicom_io.image import decode, from_dataset, load, load_png, read_dataset
from dicom_io.pixels import DISPLAY_MAX, display_pixels

__all__ = [
    "DISPLAY_MAX",
    "DeclinedError",
    "DicomIOError",
    "InvalidInputError",
    "ResultBuildError",
    "check_acceptable",
    "check_header",
    "check_pixel_header",
    "decode",
    "display_pixels",
    "from_dataset",
    "is_own_result",
    "load",
    "load_png",
    "read_dataset",
]
