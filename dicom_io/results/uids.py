"""Deterministic UIDs of result objects.

Every UID the node writes is a ``2.25.`` UID (PS3.5 Annex B.2) made from a name-based
(SHA-1, version 5) UUID over the strings that identify the object, so that the same image
scored by the same weights yields the same objects: a re-sent image updates what the PACS
holds instead of duplicating it, and all results of one source series land in one result
series per object type.
"""

from __future__ import annotations

import re
import uuid

from dicom_io.gate import uid_problem

#: Namespace of every name-based UUID the node derives (itself uuid5 of the node's URN).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cxr-node:dicom-results")

#: Object types, one result series each.
OBJECT_TYPES = ("sr", "sc", "pm")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    value = value.strip().rstrip("\x00").strip()
    if not value:
        raise ValueError(f"{name} {value!r} is empty")
    return value


def check_uid(name: str, value: object) -> str:
    """``value`` as a valid UID string (the gate's rules); ``ValueError`` naming ``name``
    otherwise."""
    value = _text(name, value)
    problem = uid_problem(value)
    if problem:
        raise ValueError(f"{name} is not a valid DICOM UID: {problem}")
    return value


def check_sha256(value: object) -> str:
    """A weights hash: 64 hexadecimal digits (case ignored)."""
    value = _text("weights sha256", value).lower()
    if not _SHA256.match(value):
        raise ValueError(f"weights sha256 {value!r} is not 64 hexadecimal digits")
    return value


def derive_uid(*parts: str) -> str:
    """``2.25.<uuid5 as integer>`` over ``parts`` (joined with a unit separator)."""
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for i, part in enumerate(parts):
        _text(f"part {i}", part)
    return f"2.25.{uuid.uuid5(NAMESPACE, chr(0x1F).join(parts)).int}"


#: Result-format version of each result type: raised whenever the content of that type
#: changes, so that new content never reuses an old instance's UID (a PACS that keeps the
#: first instance of a UID, as Orthanc does by default, would silently keep the old one).
#: Version 1 is the format before versions were numbered: its UIDs have no version part.
#: 2: SR with planar ROI regions as a Comprehensive SR; capture with legend and outlines,
#: JPEG; parametric map opt-in; values copied from sources checked.
FORMAT_VERSIONS: dict[str, int] = {"sr": 2, "sc": 2, "pm": 2}


def _format(object_type: str) -> tuple[str, ...]:
    version = FORMAT_VERSIONS[object_type]
    return () if version == 1 else (f"format-{version}",)


def _check_type(object_type: str) -> str:
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object type {object_type!r}: use one of {OBJECT_TYPES}")
    return object_type


def instance_uid(object_type: str, source_sop_instance_uid: str, weights_sha256: str) -> str:
    """SOP Instance UID of the ``object_type`` result of one source image and weights, in
    this version of its format (:data:`FORMAT_VERSIONS`)."""
    return derive_uid(
        "instance", _check_type(object_type),
        check_uid("source SOP Instance UID", source_sop_instance_uid),
        check_sha256(weights_sha256), *_format(object_type),
    )


def series_uid(object_type: str, source_series_instance_uid: str, weights_sha256: str) -> str:
    """Series Instance UID of the ``object_type`` results of one source series and weights,
    in this version of its format."""
    return derive_uid(
        "series", _check_type(object_type),
        check_uid("source Series Instance UID", source_series_instance_uid),
        check_sha256(weights_sha256), *_format(object_type),
    )


def device_uid(weights_sha256: str) -> str:
    """Device UID of the model: one per weights file."""
    return derive_uid("device", check_sha256(weights_sha256))


def tracking_uid(source_sop_instance_uid: str, weights_sha256: str, label: str) -> str:
    """Tracking Unique Identifier of one label's measurement group in the SR."""
    return derive_uid(
        "tracking", check_uid("source SOP Instance UID", source_sop_instance_uid),
        check_sha256(weights_sha256), _text("label", label),
    )


def frame_of_reference_uid(source_sop_instance_uid: str) -> str:
    """The parametric map's own frame of reference (one per source image, any model)."""
    return derive_uid(
        "frame-of-reference", check_uid("source SOP Instance UID", source_sop_instance_uid)
    )


def dimension_organization_uid(sop_instance_uid: str) -> str:
    """Dimension Organization UID of a multi-frame result (highdicom draws a random one)."""
    return derive_uid(
        "dimension-organization", check_uid("SOP Instance UID", sop_instance_uid)
    )
