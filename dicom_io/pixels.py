"""Pixels of a radiograph as a person sees them, in a fixed 16-bit range.

:func:`display_pixels` is the one place where stored pixel values become what the model reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_io.errors import InvalidInputError

logger = logging.getLogger(__name__)

#: Full-scale value of the 16-bit display image (the PadChest PNGs' maximum).
DISPLAY_MAX = 65535
#: Uncompressed little-endian transfer syntaxes: PixelData holds the stored words as they are.
_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


@dataclass
class DisplayPixels:
    """A MONOCHROME2 (white = dense) image scaled to ``0..DISPLAY_MAX`` and how it was made."""

    array: np.ndarray  # uint16, (rows, columns)
    steps: list[str] = field(default_factory=list)

    @property
    def maxval(self) -> int:
        return DISPLAY_MAX


def _window_range(ds: Dataset) -> tuple[float, float]:
    """Output range ``(y_min, y_max)`` of pydicom's windowing for ``ds`` (mirrors
    ``apply_windowing``); ``y_min > y_max`` when the rescale slope is negative."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif ds.get("PixelRepresentation", 0) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min = y_min * float(slope) + float(intercept)
        y_max = y_max * float(slope) + float(intercept)
    return y_min, y_max


def _voi_lut(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, int]:
    """Apply the first VOI LUT Sequence item (PS3.3 C.11.2.1.1); return values and bits.

    Not pydicom's ``apply_voi``: pydicom 3.0 indexes the table through an array of the LUT's
    entry type, so an 8-bit LUT with more than 256 entries wraps its inputs modulo 256.
    """
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    elem = item["LUTData"]
    if isinstance(elem.value, bytes | bytearray):  # OW: raw words in the file's byte order
        meta = getattr(ds, "file_meta", None)
        tsuid = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None
        big = bool(tsuid and tsuid.is_transfer_syntax and not tsuid.is_little_endian)
        table = np.frombuffer(elem.value, dtype=">u2" if big else "<u2").astype(np.int64)
    else:
        table = np.asarray(elem.value if elem.VM > 1 else [elem.value], dtype=np.int64)
    if table.size < entries or not 1 <= bits <= 16:
        raise ValueError(f"LUT Descriptor {list(item.LUTDescriptor)} with {table.size} entries")
    index = np.clip(np.floor(arr) - first, 0, entries - 1).astype(np.intp)
    return table[:entries][index], bits


def _voi(arr: np.ndarray, ds: Dataset, steps: list[str], present
         ) -> tuple[np.ndarray, float, float]:
    """Apply the first VOI transform of ``ds``; return the values and their output range
    (``present`` picks the values of pixels in the image, for the min..max fallback)."""
    if ds.get("VOILUTSequence"):
        try:
            out, bits = _voi_lut(arr, ds)
            steps.append(f"VOI LUT sequence item 1 ({bits}-bit)")
            return out, 0.0, float(2**bits - 1)
        except Exception as e:  # a broken LUT is a header lie; fall back to the full range
            logger.warning("VOI LUT sequence unusable (%s); using the full pixel range", e)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            out = apply_voi_lut(arr, ds, index=0, prefer_lut=False)
            lo, hi = _window_range(ds)
            if lo > hi:  # negative slope: pydicom sends values below the window to y_min,
                out, lo, hi = (lo + hi) - out, hi, lo  # the larger end; keep them darkest
            center = ds["WindowCenter"].value
            center = center[0] if ds["WindowCenter"].VM > 1 else center
            width = ds["WindowWidth"].value
            width = width[0] if ds["WindowWidth"].VM > 1 else width
            function = str(ds.get("VOILUTFunction", "LINEAR"))
            steps.append(f"window centre {center} width {width} ({function}, first of "
                         f"{ds['WindowCenter'].VM})")
            return out, lo, hi
        except Exception as e:
            logger.warning("window unusable (%s); using the full pixel range", e)
    seen = present(np.asarray(arr))
    lo, hi = float(seen.min()), float(seen.max())
    steps.append("no usable VOI: full pixel range (min to max)")
    return arr, lo, hi


def display_pixels(ds: Dataset, *, table: bool = True) -> DisplayPixels:
    """Decode ``ds`` and return its display image as ``uint16`` MONOCHROME2 in ``0..65535``.

    Steps, in this order (PS3.4 N.2 grayscale pipeline, as pydicom implements it):

    1. ``ds.pixel_array`` (decompresses; honours BitsStored and PixelRepresentation);
    2. :func:`pydicom.pixels.apply_modality_lut` (Rescale Slope/Intercept or Modality LUT);
    3. the *first* VOI LUT Sequence item (own lookup, see :func:`_voi_lut`), else
       :func:`pydicom.pixels.apply_voi_lut` with the *first* window (centre/width, LINEAR /
       LINEAR_EXACT / SIGMOID); with neither, or a broken one, the image's own min..max;
    4. linear scaling of the VOI output range to ``0..65535``, clipping values outside it;
    5. inversion when Photometric Interpretation is MONOCHROME1 or Presentation LUT Shape is
       INVERSE (PS3.3 C.8.11.6.1.2: for MONOCHROME1 the two mean the same single inversion).

    A Presentation LUT Sequence is not applied (radiograph IODs do not use it).

    Steps 2-5 depend on nothing but the stored value, so for integer pixels of up to 16 bits
    (``table``, the default) they run once on every value between the image's minimum and
    maximum, and the image is then looked up in that table: the same arithmetic on each
    value, done once per distinct value instead of once per pixel. An uncompressed
    little-endian 16-bit image is looked up by the word in PixelData itself: step 1's masking
    of the bits above BitsStored and its sign extension are in the table, and no decoded copy
    of the image is made.

    Raises:
        InvalidInputError: the pixel data cannot be decoded (``decode-failed``), the modality
            LUT or rescale is unusable (``corrupt``), or the image is blank (``blank-image``).
    """
    steps: list[str] = []
    words = _native_words(ds) if table else None
    if words is not None:  # a lookup by the 16-bit word itself: no decoded copy needed
        domain = _word_values(int(ds.BitsStored), ds.get("PixelRepresentation", 0) == 1)

        def present_words(values: np.ndarray) -> np.ndarray:
            return values[np.bincount(words.ravel(), minlength=values.size) > 0]

        return DisplayPixels(lookup(_to_display(domain, ds, steps, present_words), words), steps)
    try:
        stored = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = ts.name if ts is not None else "unknown transfer syntax"
        raise InvalidInputError("decode-failed", f"pixel data not decodable ({name}): {e}") from e
    if stored.ndim != 2:
        raise InvalidInputError("dimensions", f"decoded pixel array has shape {stored.shape}")
    if not (table and stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2):
        return DisplayPixels(_to_display(stored, ds, steps, lambda a: a), steps)
    high = int(stored.max())
    low = 0 if stored.dtype.kind == "u" else int(stored.min())  # unsigned: the value indexes
    domain = np.arange(low, high + 1, dtype=stored.dtype)
    index = stored if low == 0 else np.subtract(stored, low, dtype=np.int32)

    def present(values: np.ndarray) -> np.ndarray:
        """The table's values at the stored values that occur in the image."""
        return values[np.bincount(index.ravel(), minlength=domain.size) > 0]

    values = _to_display(domain, ds, steps, present)
    return DisplayPixels(lookup(values, index), steps)


def _native_words(ds: Dataset) -> np.ndarray | None:
    """The 16-bit words of an uncompressed little-endian single-frame grayscale image, as a
    read-only view of PixelData; None when ``pixel_array`` has to decode."""
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid not in _NATIVE_LE or ds.get("BitsAllocated") != 16 \
            or ds.get("SamplesPerPixel", 1) != 1:
        return None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, columns = int(ds.Rows), int(ds.Columns)
        data = ds["PixelData"].value
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if frames != 1 or not isinstance(data, bytes | bytearray) or len(data) < rows * columns * 2:
        return None
    return np.frombuffer(data, dtype="<u2", count=rows * columns).reshape(rows, columns)


@cache
def _word_values(bits_stored: int, signed: bool) -> np.ndarray:
    """The stored value ``pixel_array`` gives each 16-bit word: the low ``bits_stored`` bits,
    sign-extended when ``signed`` (the bits above are not part of the value)."""
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"BitsStored {bits_stored} outside 1..16")
    words = np.arange(2**16, dtype=np.int64) & ((1 << bits_stored) - 1)
    if signed:
        words[words >= 1 << (bits_stored - 1)] -= 1 << bits_stored
    out = words.astype(np.int16 if signed else np.uint16)
    out.flags.writeable = False
    return out


def lookup(table: np.ndarray, index: np.ndarray, rows: int = 32) -> np.ndarray:
    """``table[index]`` for a 2-D ``index``, a block of rows at a time: numpy converts the
    indices to ``intp`` first, and a block's conversion stays in cache."""
    out = np.empty(index.shape, dtype=table.dtype)
    for r in range(0, index.shape[0], rows):
        table.take(index[r:r + rows], out=out[r:r + rows])
    return out


def _to_display(stored: np.ndarray, ds: Dataset, steps: list[str], present) -> np.ndarray:
    """Steps 2-5 of :func:`display_pixels` on ``stored`` values; ``present(values)`` keeps
    those of the image's pixels (for the min..max fallbacks)."""
    try:
        arr = apply_modality_lut(stored, ds)
    except Exception as e:  # e.g. a Modality LUT without LUT Data, a slope that is not a number
        raise InvalidInputError("corrupt", f"modality LUT or rescale unusable: {e}") from e
    if ds.get("ModalityLUTSequence"):
        steps.append("modality LUT sequence")
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        steps.append(f"rescale slope {ds.get('RescaleSlope', 1)} intercept "
                     f"{ds.get('RescaleIntercept', 0)}")
    arr, lo, hi = _voi(arr, ds, steps, present)
    if not hi > lo:
        seen = present(np.asarray(arr))
        lo, hi = float(seen.min()), float(seen.max())
    if not hi > lo:
        raise InvalidInputError("blank-image", "every pixel has the same value")
    scaled = (np.asarray(arr, dtype=np.float64) - lo) * (DISPLAY_MAX / (hi - lo))
    np.clip(scaled, 0, DISPLAY_MAX, out=scaled)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        scaled = DISPLAY_MAX - scaled
        steps.append(f"inverted ({photometric}, Presentation LUT Shape {shape or 'absent'})")
    return np.rint(scaled).astype(np.uint16)
