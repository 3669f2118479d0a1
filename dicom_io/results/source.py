"""The source image as the result objects reference it: its header read, trimmed and copied once.

One :class:`SourceContext` per image serves the SR, the capture and the parametric map. Its
``reference`` holds only what they read of the header (:func:`reference_tags`), copied once.

What highdicom (0.28: ``SOPClass.copy_patient_and_study_information``, ``_SR.__init__``,
``_Image._init_multiframe_image``, ``ContributingEquipment.for_image_acquisition``) does with a
source dataset: it never changes it, it reads values from it, and it adds the Patient, Study and
Specimen module elements it finds there to the new object **as they are**
(``SOPClass._copy_attribute``: ``self.add(data_element)``). Results sharing those elements would
change together (setting the SR's Patient Name would set the capture's), so each result gets a
dataset of its own (:meth:`SourceContext.for_result`) holding its own copy of those few
elements and sharing the others, which highdicom only reads.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from dicom_io.errors import ResultBuildError
from dicom_io.gate import CHEST_BODY_PARTS
from dicom_io.results.modules import PATIENT_STUDY_SPECIMEN_KEYWORDS
from dicom_io.results.uids import check_uid
from domain import SourceImage

logger = logging.getLogger(__name__)

#: Patient and study attributes every result carries (Type 2: present, possibly empty).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)

#: Transfer syntaxes whose decoded pixels already lost information.
LOSSY_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106",
})  # fmt: skip

#: What the result builders and highdicom read of the source besides the Patient, Study and
#: Specimen modules: identity and character set (all), the acquisition equipment (highdicom's
#: contributing equipment item), lossy compression (capture, map), and what highdicom's
#: multi-frame constructor checks of its source image (map). The map's frame of reference,
#: plane geometry and functional groups are its own (:data:`dicom_io.results.pm.GEOMETRY`).
READ_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
    "SeriesInstanceUID", "Rows", "Columns", "PixelRepresentation", "NumberOfFrames",
    "TotalPixelMatrixRows", "TotalPixelMatrixColumns", "DimensionOrganizationType",
    "ImageOrientationSlide", "ImageCenterPointCoordinatesSequence", "SpacingBetweenSlices",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress", "StationName",
    "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime",
)  # fmt: skip
#: Elements the capture and the map copy into themselves whole (besides highdicom's modules).
TAKEN_KEYWORDS = ("LossyImageCompressionRatio", "LossyImageCompressionMethod")

_ORIENTATION = re.compile(r"^[LRAPHF]{1,3}$")
_PIXEL_DATA = 0x7FE00010


@cache
def taken_tags() -> frozenset[int]:
    """Tags of the elements a result takes whole: the root attributes of the Patient, Study
    and Specimen modules (:mod:`dicom_io.results.modules`: highdicom copies them from a
    source as they are) and :data:`TAKEN_KEYWORDS`."""
    tags = {tag_for_keyword(k) for k in (*PATIENT_STUDY_SPECIMEN_KEYWORDS, *TAKEN_KEYWORDS)}
    return frozenset(tag for tag in tags if tag is not None)


@cache
def reference_tags() -> frozenset[int]:
    """Tags of the header elements a :class:`SourceContext` keeps: what results read."""
    keywords = (*READ_KEYWORDS, *PATIENT_STUDY_KEYWORDS)
    return taken_tags() | {tag_for_keyword(keyword) for keyword in keywords}


@dataclass(frozen=True)
class SourceContext:
    """The source image as the result objects reference it.

    ``reference`` is the source header trimmed to what results read (:func:`reference_tags`)
    and copied, once per image; its patient and study attributes are all present and valid
    for highdicom (absent or malformed ones empty). It is never changed afterwards: each
    result object is given :meth:`for_result`.
    """

    image: SourceImage
    reference: Dataset
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    instance_number: int
    pixel_spacing: tuple[float, float] | None
    patient_orientation: tuple[str, str] | None
    burned_in_annotation: bool
    lossy: bool
    body_part: str = "CHEST"

    def for_result(self, *replaced: str) -> Dataset:
        """The source as one result object's constructor is given it.

        Its own copy of each element results take whole (:func:`taken_tags`: highdicom adds
        them to the new object as they are), the reference's other elements shared (read
        only). ``replaced``: keywords the caller sets itself, left out (a shared element set
        in place would change the other results' sources too).
        """
        taken = taken_tags()
        skip = {tag_for_keyword(keyword) for keyword in replaced}
        ds = Dataset()
        for elem in self.reference:
            if elem.tag not in skip:
                ds.add(copy.deepcopy(elem) if elem.tag in taken else elem)
        return ds

    @property
    def rows(self) -> int:
        return self.image.rows

    @property
    def columns(self) -> int:
        return self.image.columns


def _valid_date(value: Any, kind: type) -> bool:
    try:
        kind(str(value))
    except (TypeError, ValueError):
        return False
    return True


def _reference(header: Dataset) -> Dataset:
    """What results read of ``header``, copied (the one copy of the header per image): pydicom
    sets values on elements in place, and the caller's header must not change."""
    keep = reference_tags()
    trimmed = Dataset()
    for tag in header.keys():  # noqa: SIM118 (a Dataset iterates its elements)
        if tag in keep and tag != _PIXEL_DATA:
            trimmed.add(header[tag])
    reference = copy.deepcopy(trimmed)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if reference.get(keyword) is None:
            setattr(reference, keyword, None)
    if str(reference.PatientSex or "").strip().upper() not in {"", "M", "F", "O"}:
        reference.PatientSex = None
    for keyword, kind in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        value = reference.get(keyword)
        if value not in (None, "") and not _valid_date(value, kind):
            setattr(reference, keyword, None)
    return reference


def source_context(image: SourceImage) -> SourceContext:
    """Check that ``image`` can be referenced by results and collect what they copy from it.

    Raises:
        TypeError: ``image`` is not a :class:`SourceImage`.
        ResultBuildError: ``image`` has no DICOM header (PNG) or lacks its UIDs, or its
            header disagrees with its pixels.
    """
    if not isinstance(image, SourceImage):
        raise TypeError(f"image must be a SourceImage, not {type(image).__name__}")
    header = image.header
    if header is None:
        raise ResultBuildError(
            "no-dicom-source", f"{image.name} is not DICOM: results reference a DICOM image"
        )
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        try:
            uids[keyword] = check_uid(keyword, str(header.get(keyword, "") or ""))
        except ValueError as e:
            raise ResultBuildError("source-uid", f"source {keyword}: {e}") from None
    rows, columns = header.get("Rows"), header.get("Columns")
    if (rows, columns) != (image.rows, image.columns):
        raise ResultBuildError(
            "source-geometry",
            f"header says {rows}x{columns}, pixels are {image.rows}x{image.columns}",
        )

    orientation = header.get("PatientOrientation")
    patient_orientation = None
    if orientation is not None and not isinstance(orientation, str) and len(orientation) == 2:
        pair = (str(orientation[0]).strip().upper(), str(orientation[1]).strip().upper())
        if all(_ORIENTATION.match(v) for v in pair):
            patient_orientation = pair

    try:
        instance_number = int(header.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        instance_number = 1
    # The gate admits only chest images; results say so (General Series, Laterality 2C).
    body_part = str(header.get("BodyPartExamined", "") or "").strip().upper() or "CHEST"
    if body_part not in CHEST_BODY_PARTS or " " in body_part:
        body_part = "CHEST"
    meta = getattr(header, "file_meta", None)
    tsuid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    lossy = str(header.get("LossyImageCompression", "")).strip() == "01" or (
        tsuid in LOSSY_TRANSFER_SYNTAXES
    )
    return SourceContext(
        image=image,
        reference=_reference(header),
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=str(header.get("Modality", "") or "").strip().upper(),
        instance_number=max(1, instance_number),
        pixel_spacing=image.pixel_spacing,
        patient_orientation=patient_orientation,
        burned_in_annotation=str(header.get("BurnedInAnnotation", "")).strip().upper() == "YES",
        lossy=lossy,
        body_part=body_part,
    )
