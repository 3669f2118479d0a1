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

Since results take those elements as they are, the reference is checked once, where it is
copied (:func:`dicom_io.results.sanitize.sanitize`): each element against its VR, VM and the
result IOD, corrected where unambiguous, else left out (emptied if results need it). The
source's pixel spacing is read checked (:func:`checked_pixel_spacing`).
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass
from functools import cache

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_io.errors import ResultBuildError
from dicom_io.gate import CHEST_BODY_PARTS
from dicom_io.results.modules import PATIENT_STUDY_SPECIMEN_KEYWORDS
from dicom_io.results.sanitize import sanitize, texts_of
from dicom_io.results.uids import check_uid
from dicom_io.results.values import decimal_string
from domain import SourceImage

logger = logging.getLogger(__name__)

#: Patient and study attributes every result carries (Type 2: present, possibly empty).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)

#: The source's identity, checked by the gate and :func:`source_context` (not sanitised).
IDENTITY_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

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

#: Where the source's pixel spacing is read, in this order (see :func:`checked_pixel_spacing`).
SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing")
_ORIENTATION = re.compile(r"^[LRAPHF]{1,3}$")
_PIXEL_DATA = 0x7FE00010
#: Largest Instance Number (IS: a signed 32-bit integer).
_IS_MAX = 2**31 - 1


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


#: The Patient's Name result constructors see (see :meth:`SourceContext.for_result`).
NAME_PLACEHOLDER = "^"


@dataclass(frozen=True)
class SourceContext:
    """The source image as the result objects reference it.

    ``reference`` is the source header trimmed to what results read (:func:`reference_tags`)
    and copied, once per image, every element checked against its VR, VM and the result IOD
    (:func:`~dicom_io.results.sanitize.sanitize`); its patient and study attributes are all
    present (absent or malformed ones empty). It is never changed afterwards: each result
    object is given :meth:`for_result`.

    ``pixel_spacing``: row and column spacing in mm, from Pixel Spacing, else Imager Pixel
    Spacing (:func:`checked_pixel_spacing` says why), or None where neither is two positive
    numbers (``0\\0``, negative, non-numeric): results then state no spacing.
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
        if "PatientName" in ds:
            # highdicom warns of a name without "^" as "potentially invalid", quoting it (no
            # patient data in logs): constructors get a placeholder, :meth:`name` the result.
            ds.PatientName = NAME_PLACEHOLDER
        return ds

    def name(self, result: Dataset) -> None:
        """Give ``result`` the source's Patient's Name (its constructor got a placeholder)."""
        if "PatientName" in self.reference:
            result["PatientName"] = copy.deepcopy(self.reference["PatientName"])

    @property
    def rows(self) -> int:
        return self.image.rows

    @property
    def columns(self) -> int:
        return self.image.columns


def _reference(header: Dataset, uids: dict[str, str]) -> Dataset:
    """What results read of ``header``, copied (the one copy of the header per image): pydicom
    sets values on elements in place, and the caller's header must not change. The copy is
    checked (:func:`~dicom_io.results.sanitize.sanitize`): results copy its elements; the
    identity ``uids`` (checked already) are set as UI, whatever VR the header gave them."""
    keep = reference_tags()
    trimmed = Dataset()
    for tag in header.keys():  # noqa: SIM118 (a Dataset iterates its elements)
        if tag in keep and tag != _PIXEL_DATA:
            trimmed.add(header[tag])
    reference = sanitize(copy.deepcopy(trimmed), required=PATIENT_STUDY_KEYWORDS,
                         kept=IDENTITY_KEYWORDS)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if reference.get(keyword) is None:
            setattr(reference, keyword, None)
    for keyword, uid in uids.items():
        if keyword not in reference or (reference[keyword].VR, reference[keyword].value) != (
            "UI", uid
        ):
            tag = Tag(keyword)
            reference[tag] = DataElement(tag, "UI", uid)  # a new element: its VR too
    return reference


def checked_pixel_spacing(header: Dataset) -> tuple[float, float] | None:
    """The source's pixel spacing (row, column; mm) if valid, else None.

    Pixel Spacing, else Imager Pixel Spacing: in a projection radiograph Pixel Spacing is the
    spacing its maker calibrated for measuring in the patient, and the one viewers measure
    with (falling back, as here, to Imager Pixel Spacing, at the detector); results lie on the
    source's grid and measure as the source does. Valid: two finite positive decimal strings;
    ``0\\0`` (the NEMA CR's), negative, non-numeric or one value: none (viewers draw black).
    """
    for keyword in SPACING_KEYWORDS:
        if keyword not in header:
            continue
        texts = texts_of(header.get(keyword)) or []
        numbers = [float(v) for v in map(decimal_string, texts) if v] if len(texts) == 2 else []
        if len(numbers) == 2 and all(math.isfinite(v) and v > 0 for v in numbers):
            return numbers[0], numbers[1]
        logger.debug("source %s not used: not two positive numbers", keyword)
    return None


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
    for keyword in IDENTITY_KEYWORDS:
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
    if not 1 <= instance_number <= _IS_MAX:
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
        reference=_reference(header, uids),
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=str(header.get("Modality", "") or "").strip().upper(),
        instance_number=instance_number,
        pixel_spacing=checked_pixel_spacing(header),
        patient_orientation=patient_orientation,
        burned_in_annotation=str(header.get("BurnedInAnnotation", "")).strip().upper() == "YES",
        lossy=lossy,
        body_part=body_part,
    )
