"""The input gate: which DICOM objects the model may be run on, and why not.

:func:`check_acceptable` raises :class:`~dicom_io.errors.DeclinedError` for valid objects the
model must not see; :func:`check_pixel_header` raises
:class:`~dicom_io.errors.InvalidInputError` for headers that lie about their pixel data. Both
read only the header: no pixel data is decoded here.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_io.errors import DeclinedError, InvalidInputError
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


def check_pixel_header(ds: Dataset) -> None:
    """Raise :class:`InvalidInputError` when the header cannot describe real pixel data.

    Checks: PixelData present; BitsAllocated 8 or 16; 1 <= BitsStored <= BitsAllocated;
    PixelRepresentation 0 or 1; Rows and Columns within [MIN_DIMENSION, MAX_DIMENSION]; and,
    for native (uncompressed) transfer syntaxes, PixelData long enough for Rows x Columns.
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
