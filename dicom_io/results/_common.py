"""What every result object shares: the model's identity, the source's identity, timestamps.

The source context lives in :mod:`~dicom_io.results.source` (re-exported here)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

import numpy as np
from highdicom import ContributingEquipment
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM

from dicom_io.results import codes
from dicom_io.results.source import LOSSY_TRANSFER_SYNTAXES as LOSSY_TRANSFER_SYNTAXES
from dicom_io.results.source import PATIENT_STUDY_KEYWORDS as PATIENT_STUDY_KEYWORDS
from dicom_io.results.source import SourceContext
from dicom_io.results.source import source_context as source_context
from dicom_io.results.uids import check_sha256, device_uid
from dicom_io.uids import NODE_MANUFACTURER
from domain import HeatMap

#: Longest LO (Long String) value.
LO_MAX = 64


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

