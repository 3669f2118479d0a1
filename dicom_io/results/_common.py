"""What every result object shares: the model's identity, the source's identity, timestamps."""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM

from dicom_io.errors import ResultBuildError
from dicom_io.gate import CHEST_BODY_PARTS
from dicom_io.results import codes
from dicom_io.results.uids import check_sha256, check_uid, device_uid
from dicom_io.uids import NODE_MANUFACTURER
from domain import HeatMap, SourceImage

#: Longest LO (Long String) value.
LO_MAX = 64

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

_ORIENTATION = re.compile(r"^[LRAPHF]{1,3}$")


@cache
def node_version() -> str:
    """The installed cxr-node version (``0+unknown`` when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxr-node")
    except PackageNotFoundError:
        return "0+unknown"


def clip_lo(text: str) -> str:
    """``text`` cut to a Long String (64 characters), without trailing blanks."""
    return text.strip()[:LO_MAX].rstrip()


def check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} {value!r} is empty")
    return value.strip()


def check_heatmap(heatmap: object) -> HeatMap:
    """``heatmap`` if it is a :class:`HeatMap` with an array of values, a label and a method.

    Raises:
        TypeError: not a HeatMap, or its values are not an ndarray.
        ValueError: its label or method is not a non-empty str.
    """
    if not isinstance(heatmap, HeatMap):
        raise TypeError(f"heatmap must be a HeatMap, not {type(heatmap).__name__}")
    if not isinstance(heatmap.values, np.ndarray):
        raise TypeError(
            f"heat map values must be a numpy ndarray, not {type(heatmap.values).__name__}"
        )
    for name, value in (("label", heatmap.label), ("method", heatmap.method)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"heat map {name} {value!r} must be a non-empty str")
    return heatmap


@runtime_checkable
class CardLike(Protocol):
    """What results read of a model card (:class:`inference.card.ModelCard`)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def labels(self) -> Sequence[str]: ...
    @property
    def manufacturer(self) -> str: ...
    @property
    def intended_use(self) -> str: ...


@runtime_checkable
class ModelLike(Protocol):
    """What results read of a loaded model (:class:`inference.factory.LoadedModel`): its card
    and weights hash. ``dicom_io`` does not import ``inference``."""

    @property
    def card(self) -> CardLike: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class ModelIdentity:
    """Who made the results: the model (name, version, manufacturer, weights hash), and the
    labels it reports (in output order; an empty label is an output it does not report)."""

    name: str
    version: str
    manufacturer: str
    sha256: str
    intended_use: str = ""
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_text("model name", self.name)
        check_text("model version", self.version)
        check_text("model manufacturer", self.manufacturer)
        object.__setattr__(self, "sha256", check_sha256(self.sha256))
        if not isinstance(self.intended_use, str):
            raise TypeError(
                f"intended_use must be a str, not {type(self.intended_use).__name__}"
            )
        if isinstance(self.labels, str) or not isinstance(self.labels, Sequence):
            raise TypeError(f"labels must be a sequence of str, not {type(self.labels).__name__}")
        for label in self.labels:
            if not isinstance(label, str):
                raise TypeError(f"label {label!r} must be a str, not {type(label).__name__}")
        object.__setattr__(self, "labels", tuple(self.labels))

    @classmethod
    def of(cls, model: ModelIdentity | ModelLike) -> ModelIdentity:
        """``model`` itself, or the identity of a loaded model (its ``card`` and ``sha256``).

        Raises:
            TypeError: ``model`` is neither (the message names its type).
        """
        if isinstance(model, ModelIdentity):
            return model
        if not isinstance(model, ModelLike):
            raise TypeError(
                f"model must be a LoadedModel (with .card and .sha256) or a ModelIdentity, "
                f"not {type(model).__name__}"
            )
        card = model.card
        if not isinstance(card, CardLike):
            raise TypeError(
                f"model card must be a ModelCard (with name, version, labels, manufacturer, "
                f"intended_use), not {type(card).__name__}"
            )
        return cls(
            name=card.name, version=card.version,
            manufacturer=card.manufacturer or NODE_MANUFACTURER, sha256=model.sha256,
            intended_use=card.intended_use or "", labels=tuple(card.labels),
        )

    @property
    def device_uid(self) -> str:
        return device_uid(self.sha256)

    @property
    def model_name(self) -> str:
        return clip_lo(self.name)

    @property
    def software_versions(self) -> tuple[str, str]:
        return (
            clip_lo(f"{NODE_MANUFACTURER} {node_version()}"),
            clip_lo(f"{self.name} {self.version}"),
        )

    @property
    def serial_number(self) -> str:
        """The weights' sha256 (64 hex digits: exactly one LO)."""
        return self.sha256

    def equipment_kwargs(self) -> dict[str, Any]:
        """General Equipment arguments of highdicom's SOP class constructors."""
        return {
            "manufacturer": NODE_MANUFACTURER,
            "manufacturer_model_name": self.model_name,
            "software_versions": list(self.software_versions),
            "device_serial_number": self.serial_number,
        }

    def contributing_equipment(self, when: datetime.datetime) -> ContributingEquipment:
        """The model as Processing Equipment (IHE AIR): name, versions, serial, Device UID."""
        item = ContributingEquipment(
            manufacturer=clip_lo(self.manufacturer),
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.model_name,
            software_versions=list(self.software_versions),
            device_serial_number=self.serial_number,
            contribution_datetime=when,
            contribution_description=clip_lo(
                f"AI model {self.name} {self.version} run by {NODE_MANUFACTURER}"
            ),
        )
        item.DeviceUID = self.device_uid
        return item


@dataclass(frozen=True)
class SourceContext:
    """The source image as the result objects reference it.

    ``reference`` is a copy of the source header (no pixel data) whose patient and study
    attributes are all present and valid for highdicom (absent or malformed ones empty).
    Each object gets its own copy (:meth:`reference_copy`): highdicom copies elements by
    reference, and results must not share elements with each other.
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

    def reference_copy(self) -> Dataset:
        ds = copy.deepcopy(self.reference)
        ds.file_meta = copy.deepcopy(self.reference.file_meta)
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

    # A deep copy: pydicom sets values on shared elements in place, the caller's header
    # must not change (the header has no pixel data: this is cheap).
    reference = Dataset()
    reference.update({elem.tag: elem for elem in header if elem.tag != 0x7FE00010})
    reference = copy.deepcopy(reference)
    # (a header made in memory has no file_meta attribute at all)
    reference.file_meta = copy.deepcopy(getattr(header, "file_meta", Dataset()))
    for keyword in PATIENT_STUDY_KEYWORDS:
        if reference.get(keyword) is None:
            setattr(reference, keyword, None)
    if str(reference.PatientSex or "").strip().upper() not in {"", "M", "F", "O"}:
        reference.PatientSex = None
    for keyword, kind in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        value = reference.get(keyword)
        if value not in (None, "") and not _valid_date(value, kind):
            setattr(reference, keyword, None)

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
        reference=reference,
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


def normalise_timestamp(when: datetime.datetime | None) -> datetime.datetime:
    """``when`` (default: now), naive local time, whole seconds."""
    if when is None:
        when = datetime.datetime.now()
    if not isinstance(when, datetime.datetime):
        raise TypeError(f"timestamp must be a datetime, not {type(when).__name__}")
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.replace(microsecond=0)


def date_time_kwargs(when: datetime.datetime) -> dict[str, Any]:
    """Content and series date/time arguments of highdicom's SOP class constructors."""
    return {
        "content_date": when.date(), "content_time": when.time(),
        "series_date": when.date(), "series_time": when.time(),
    }


def finish(ds: Dataset, model: ModelIdentity, when: datetime.datetime) -> None:
    """What highdicom leaves to the caller: Device UID; its own clock replaced by ``when``.

    highdicom stamps instance creation (and its own contributing equipment item) with the
    wall clock; results built with the same ``when`` must be byte-identical.
    """
    ds.DeviceUID = model.device_uid
    ds.InstanceCreationDate = DA(when.date())
    ds.InstanceCreationTime = TM(when.time())
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        purposes = item.get("PurposeOfReferenceCodeSequence") or []
        acquisition = any(p.get("CodeValue") == "109101" for p in purposes)
        if not acquisition and "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)


def source_image_item(source: SourceContext) -> Dataset:
    """A Source Image Sequence item referencing the source image."""
    item = Dataset()
    item.ReferencedSOPClassUID = UID(source.sop_class_uid)
    item.ReferencedSOPInstanceUID = UID(source.sop_uid)
    item.PurposeOfReferenceCodeSequence = [codes.SOURCE_IMAGE_FOR_PROCESSING]
    return item

