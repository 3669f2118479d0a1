"""The input gate: which DICOM objects the model may be run on, and why not.

:func:`check_acceptable` raises :class:`~dicom_io.errors.DeclinedError` for valid objects the
model must not see; :func:`check_identity` raises :class:`~dicom_io.errors.InvalidInputError`
for objects without the UIDs their results must reference; :func:`check_pixel_header` raises
it for headers that lie about their pixel data. All read only the header: no pixel data is
decoded here. :func:`check_header` is the three in order, for a front that gates an object
where it arrives.

Whatever passes the gate can be scored *and* carry results: a file is refused where it
arrives, with its own code, never later while its results are built.
"""

from __future__ import annotations

import logging
import re

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_io.errors import DeclinedError, DicomIOError, InvalidInputError
from dicom_io.uids import (
    INPUT_SOP_CLASSES,
    NODE_MANUFACTURER,
    RADIOGRAPH_SOP_CLASSES,
    SECONDARY_CAPTURE_SOP_CLASSES,
)

logger = logging.getLogger(__name__)

#: BodyPartExamined values (PS3.16 Annex L, upper-cased) that name the chest.
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LUNG", "PORTABLE CHEST"})
#: ViewPosition values that are not frontal projections.
NON_FRONTAL_VIEWS = {
    "LL": "left lateral",
    "RL": "right lateral",
    "LAT": "lateral",
    "LATERAL": "lateral",
    "LLO": "left lateral oblique",
    "RLO": "right lateral oblique",
}
#: Largest image side accepted (pixels); larger headers are treated as corrupt.
MAX_DIMENSION = 16384
#: Smallest image side accepted (pixels).
MIN_DIMENSION = 32
#: The UIDs every result references (SR, secondary capture, parametric map): the source
#: image's, its series' (result series UIDs derive from it) and its study's.
IDENTITY_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: PS3.5 9.1: components of digits without leading zeros, joined by dots; at most 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_CHARACTERS = re.compile(r"^[0-9.]*$")
#: The first two arcs of an OID (ISO/IEC 8824): root 0, 1 or 2; under 0 and 1, below 40.
_UID_ROOT = re.compile(r"^([01]\.([0-9]|[1-3][0-9])|2\.(0|[1-9][0-9]*))(\.|$)")
UID_MAX = 64


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().upper()


def is_own_result(ds: Dataset) -> bool:
    """Whether ``ds`` was produced by a cxr-node (its Manufacturer or contributing equipment)."""
    if _text(ds, "Manufacturer") == NODE_MANUFACTURER.upper():
        return True
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        if str(item.get("Manufacturer", "")).strip().upper() == NODE_MANUFACTURER.upper():
            return True
    return False


def _view_reason(ds: Dataset) -> str | None:
    view = _text(ds, "ViewPosition")
    if view in NON_FRONTAL_VIEWS:
        return f"ViewPosition {view} ({NON_FRONTAL_VIEWS[view]})"
    for item in ds.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "lateral" in meaning or "oblique" in meaning:
            return f"ViewCodeSequence '{item.get('CodeMeaning')}'"
    return None


def check_acceptable(ds: Dataset) -> None:
    """Raise :class:`DeclinedError` unless ``ds`` is a frontal chest radiograph the model takes.

    Accepted: CR, DX (for presentation and for processing) and single-frame grayscale Secondary
    Capture whose Modality is CR or DX. Declined, each with its own ``code``: objects this node
    produced (``own-result``), other SOP classes (``sop-class``), other modalities
    (``modality``), multi-frame (``multi-frame``), colour (``colour``), other body parts
    (``body-part``) and non-frontal views (``view``).
    """
    if is_own_result(ds):
        raise DeclinedError(
            "own-result", f"object was produced by {NODE_MANUFACTURER} (routing loop)"
        )
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    if not sop_class:
        raise InvalidInputError("no-sop-class", "SOPClassUID is missing")
    modality = _text(ds, "Modality")
    if sop_class not in INPUT_SOP_CLASSES:
        name = UID(sop_class).name if UID(sop_class).is_valid else sop_class
        raise DeclinedError(
            "sop-class",
            f"SOP class {name} (modality {modality or 'unknown'}) is not a chest radiograph; "
            "accepted: CR, DX and grayscale Secondary Capture of CR/DX",
        )
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES and modality not in {"CR", "DX"}:
        raise DeclinedError(
            "modality", f"Secondary Capture with Modality {modality or 'absent'}; only CR or DX"
        )
    if sop_class in RADIOGRAPH_SOP_CLASSES and modality and modality not in {"CR", "DX"}:
        raise DeclinedError("modality", f"Modality {modality} is not CR or DX")
    frames = ds.get("NumberOfFrames", 1) or 1
    try:
        frames = int(frames)
    except (TypeError, ValueError):
        raise InvalidInputError(
            "bad-frames", f"NumberOfFrames {frames!r} is not a number"
        ) from None
    if frames > 1:
        raise DeclinedError("multi-frame", f"{frames} frames; the model reads single images")
    photometric = _text(ds, "PhotometricInterpretation")
    samples = ds.get("SamplesPerPixel", 1)
    if samples != 1 or (photometric and photometric not in {"MONOCHROME1", "MONOCHROME2"}):
        raise DeclinedError(
            "colour",
            f"colour image ({photometric or 'unknown'}, {samples} samples per pixel); "
            "the model reads grayscale radiographs",
        )
    body_part = _text(ds, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise DeclinedError("body-part", f"BodyPartExamined {body_part} is not the chest")
    view = _view_reason(ds)
    if view:
        raise DeclinedError(
            "view", f"{view}: the model was trained on frontal (PA/AP) views only"
        )


def _uid_value(ds: Dataset, keyword: str) -> str:
    """The element's value as one string, without the NUL or space padding senders add."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace")
    elif not isinstance(value, str):  # several values (VM > 1): never one UID
        value = "\\".join(str(v) for v in value)
    return value.strip().rstrip("\x00").strip()


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid DICOM UID (``None`` when it is one).

    The value is quoted only when it holds nothing but digits and dots: a UID element that
    holds anything else may hold anything (a de-identification tool's name, say).
    """
    if len(value) > UID_MAX:
        shown = f"{value!r} " if _UID_CHARACTERS.match(value) else ""
        return f"{shown}is {len(value)} characters long (at most {UID_MAX})"
    if not _UID_CHARACTERS.match(value):
        return f"has characters other than digits and '.' ({len(value)} characters)"
    if not _UID.match(value):
        return f"{value!r} has an empty component or one with a leading zero"
    if not _UID_ROOT.match(value):
        return f"{value!r} does not start with an OID root (0, 1 or 2, then an arc)"
    return None


def check_identity(ds: Dataset) -> None:
    """Raise :class:`InvalidInputError` unless ``ds`` names itself with valid UIDs.

    Every result object references the source's SOP Instance UID and joins its study; the
    result series' UIDs derive from its Series Instance UID. Each of the three must be
    present and a valid UID (PS3.5 9.1, after trailing NUL and space padding is removed):
    ``missing-uid`` when absent or empty, ``invalid-uid`` otherwise.
    """
    for keyword in IDENTITY_UIDS:
        value = _uid_value(ds, keyword)
        if not value:
            raise InvalidInputError("missing-uid", f"{keyword} is missing or empty")
        problem = uid_problem(value)
        if problem:
            raise InvalidInputError("invalid-uid", f"{keyword} {problem}")


def check_pixel_header(ds: Dataset) -> None:
    """Raise :class:`InvalidInputError` when the header cannot describe real pixel data.

    Checks: PixelData present; BitsAllocated 8 or 16; 1 <= BitsStored <= BitsAllocated;
    PixelRepresentation 0 or 1; Rows and Columns within [MIN_DIMENSION, MAX_DIMENSION]; and,
    for native (uncompressed) transfer syntaxes, PixelData long enough for Rows x Columns
    (``short-pixel-data``) and not one whole row or more longer (``long-pixel-data``: Rows or
    Columns says less than the data holds, and the image would be read cut or sheared; a few
    bytes of padding past the end are let through, as pydicom lets them).
    """
    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds else "PixelData"
        raise InvalidInputError("no-pixel-data", f"{kind} is missing")
    bits_allocated = ds.get("BitsAllocated")
    if bits_allocated not in (8, 16):
        raise InvalidInputError(
            "bits-allocated", f"BitsAllocated {bits_allocated!r}; radiographs use 8 or 16"
        )
    bits_stored = ds.get("BitsStored")
    if not isinstance(bits_stored, int) or not 1 <= bits_stored <= bits_allocated:
        raise InvalidInputError(
            "bits-stored", f"BitsStored {bits_stored!r} with BitsAllocated {bits_allocated}"
        )
    if ds.get("PixelRepresentation", 0) not in (0, 1):
        raise InvalidInputError(
            "pixel-representation", f"PixelRepresentation {ds.get('PixelRepresentation')!r}"
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    for name, value in (("Rows", rows), ("Columns", columns)):
        if not isinstance(value, int) or not MIN_DIMENSION <= value <= MAX_DIMENSION:
            raise InvalidInputError(
                "dimensions",
                f"{name} {value!r} outside [{MIN_DIMENSION}, {MAX_DIMENSION}]",
            )
    meta = getattr(ds, "file_meta", None)
    tsuid = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None
    # An unknown UID is not a transfer syntax (pydicom raises on asking): decoding will say so.
    encapsulated = bool(tsuid and tsuid.is_transfer_syntax and tsuid.is_encapsulated)
    if not encapsulated:
        expected = rows * columns * bits_allocated // 8
        actual = len(ds["PixelData"].value or b"")
        if actual < expected:
            raise InvalidInputError(
                "short-pixel-data",
                f"PixelData holds {actual} bytes, {rows}x{columns}x{bits_allocated} bits "
                f"needs {expected}",
            )
        row = columns * bits_allocated // 8
        if actual - expected >= row:
            raise InvalidInputError(
                "long-pixel-data",
                f"PixelData holds {actual} bytes, {rows}x{columns}x{bits_allocated} bits "
                f"needs {expected}: {actual - expected} bytes more than the header describes",
            )


def check_header(ds: Dataset) -> None:
    """The whole gate on a header: :func:`check_acceptable`, :func:`check_identity` and
    :func:`check_pixel_header`, in this order (a declined object is declined whatever its UIDs).

    Raises:
        DeclinedError, InvalidInputError: as the three do; any other exception pydicom raises
            on the header (a value of the wrong length, say) as ``corrupt``.
    """
    try:
        check_acceptable(ds)
        check_identity(ds)
        check_pixel_header(ds)
    except DicomIOError:
        raise
    except Exception as e:  # pydicom raises many types for corrupt headers
        raise InvalidInputError("corrupt", f"{type(e).__name__}: {e}") from e
