"""Results as standard DICOM, built with highdicom.

* :mod:`~dicom_io.results.sr`: the findings as a Comprehensive 3D SR (TID 1500);
* :mod:`~dicom_io.results.sc`: the heat map blended over the source (RGB Secondary Capture);
* :mod:`~dicom_io.results.pm`: the raw heat map (Parametric Map, float values);
* :mod:`~dicom_io.results.codes`: every coded concept, and the label-to-code table;
* :mod:`~dicom_io.results.uids`: deterministic UIDs;
* :mod:`~dicom_io.results.source`: the source header as results read it, once per image.

All join the source's study in their own series; their UIDs derive from the source's UIDs,
the weights hash and the object type, so a re-sent image yields the same objects.
"""

from dicom_io.results._common import ModelIdentity, ModelLike
from dicom_io.results.builder import (
    SERIES_NUMBERS,
    ResultBuilder,
    build_results,
    builder_for,
)
from dicom_io.results.codes import FINDING_CODES, PRIVATE_SCHEME, finding_code
from dicom_io.results.uids import device_uid, instance_uid, series_uid

__all__ = [
    "FINDING_CODES",
    "PRIVATE_SCHEME",
    "SERIES_NUMBERS",
    "ModelIdentity",
    "ModelLike",
    "ResultBuilder",
    "build_results",
    "builder_for",
    "device_uid",
    "finding_code",
    "instance_uid",
    "series_uid",
]
