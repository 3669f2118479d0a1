"""Load a radiograph (DICOM object or PNG) into a :class:`SourceImage` the model can read."""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError, InvalidInputError
from dicom_io.gate import check_header
from dicom_io.pixels import display_pixels
from domain.image import SourceImage

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_dataset(source: str | Path | bytes | BinaryIO) -> Dataset:
    """Parse a DICOM Part 10 file (or a bare dataset) from a path, bytes or a binary file."""
    if isinstance(source, bytes | bytearray):
        if not source:
            raise InvalidInputError("empty", "no DICOM data")
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source, force=True)
    except Exception as e:
        raise InvalidInputError("not-dicom", f"not a readable DICOM object: {e}") from e
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            # pydicom drops every element when the data set ends early (EOF inside
            # encapsulated pixel data): a Part 10 file, truncated or corrupt.
            raise InvalidInputError(
                "corrupt", "DICOM file meta present but the data set is unreadable "
                "(truncated or corrupt)"
            )
        raise InvalidInputError("not-dicom", "no DICOM data elements found")
    return ds


def from_dataset(ds: Dataset, name: str = "dataset") -> SourceImage:
    """Gate and decode a dataset (as read from a file or received over the network).

    The whole gate (:func:`dicom_io.gate.check_header`) runs here: what this returns can be
    scored and can carry results.

    Raises:
        DeclinedError: valid object the model must not see (see :mod:`dicom_io.gate`).
        InvalidInputError: the object lacks the UIDs its results reference
            (``missing-uid``, ``invalid-uid``), the header lies about its pixel data,
            decoding fails, or the header is corrupt (``corrupt``: any other exception
            pydicom raises on it).
    """
    check_header(ds)
    return decode(ds, name)


def decode(ds: Dataset, name: str = "dataset") -> SourceImage:
    """Decode a dataset that passed :func:`dicom_io.gate.check_header` already (where it
    arrived): its display pixels and its header without the pixel data.

    Raises:
        InvalidInputError: decoding fails (``corrupt`` for any exception pydicom raises).
    """
    try:
        display = display_pixels(ds)
        header = Dataset()
        header.update({elem.tag: elem for elem in ds if elem.tag != 0x7FE00010})
        header.file_meta = getattr(ds, "file_meta", Dataset())
    except DicomIOError:
        raise
    except Exception as e:  # pydicom raises many types for corrupt data
        raise InvalidInputError("corrupt", f"{type(e).__name__}: {e}") from e
    return SourceImage(name, display.array, display.maxval, header, display.steps)


def load_png(path: str | Path) -> SourceImage:
    """Load an 8- or 16-bit grayscale PNG as training did (``skimage.io.imread``, channel 0)."""
    import skimage.io
    from PIL import Image

    try:
        # Checked first (chunk CRCs, truncation) with Pillow, which says what is wrong in its
        # exception; the readers skimage falls back on print libpng's errors to stderr.
        with Image.open(path) as check:
            check.verify()
        arr = skimage.io.imread(str(path))
    except Exception as e:
        raise InvalidInputError("not-png", f"PNG not readable: {e}") from e
    if arr.ndim == 3:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint8:
        maxval = 255
    elif arr.dtype == np.uint16:
        maxval = 65535
    else:
        raise InvalidInputError("png-depth", f"PNG sample type {arr.dtype}; need 8 or 16 bit")
    if arr.ndim != 2 or min(arr.shape) < 32:
        raise InvalidInputError("dimensions", f"PNG shape {arr.shape}")
    return SourceImage(Path(path).name, np.ascontiguousarray(arr), maxval, None, ["PNG as stored"])


def load(path: str | Path) -> SourceImage:
    """Load a file by content: PNG by its signature, anything else as DICOM."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the reader for good
            raise InvalidInputError("unreadable", "not a regular file")
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InvalidInputError("unreadable", f"cannot read file: {e.strerror}") from e
    if head == PNG_SIGNATURE:
        return load_png(path)
    return from_dataset(read_dataset(path), path.name)
