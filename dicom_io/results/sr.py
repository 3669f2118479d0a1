"""The findings as a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Layout (PS3.16 TID 1500)::

    Imaging Measurement Report
    ├── Language, Observer Type = Device, Device Observer UID/Name/Manufacturer/Model/Serial
    ├── Procedure reported = Plain chest X-ray
    ├── Image Library ── Image Library Group ── IMAGE (the source) + descriptors
    ├── Imaging Measurements
    │   └── Measurement Group (TID 1501), one per label
    │       ├── Tracking Identifier (label) / Tracking UID (deterministic)
    │       ├── Finding = the label's concept       ├── Algorithm Name/Version/Manufacturer
    │       ├── Probability = p {probability}      ├── Threshold Value = t {probability}
    │       ├── <label concept> = Present | Absent (p >= t)
    │       └── Source = IMAGE (the source)
    └── Qualitative Evaluations: Intended use; Heat map (or: Heat map suppressed, and why)
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from functools import partial

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.tag import Tag

from dicom_io.results import codes
from dicom_io.results._common import ModelIdentity, check_heatmap, clip_lo, date_time_kwargs, finish
from dicom_io.results.source import SourceContext
from dicom_io.results.stencil import GroupStencils, StencilError, encode_item, source_slots
from dicom_io.results.uids import tracking_uid
from domain import Finding, HeatMap, Prediction

logger = logging.getLogger(__name__)

_CONTAINS = RelationshipTypeValues.CONTAINS
_ACQ = RelationshipTypeValues.HAS_ACQ_CONTEXT
_PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")
_MM = CodedConcept.from_code(dcm_codes.UCUM.Millimeter)
_CONTENT_SEQUENCE = 0x0040A730
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_IMAGE_LIBRARY = ("111028", "DCM")


def _concept(item: Dataset) -> tuple[str, str] | None:
    name = item.get("ConceptNameCodeSequence")
    return (str(name[0].CodeValue), str(name[0].CodingSchemeDesignator)) if name else None


def _shallow(item: Dataset) -> Dataset:
    copy = Dataset()
    copy.update(item)
    return copy


def _text_encodings(ds: Dataset) -> str | list[str]:
    """The encodings pydicom's writer gives ``ds``'s text: its Specific Character Set, else
    the default (``ds`` is built here, not decoded: it inherits no parent's character set)."""
    charset = ds.get("SpecificCharacterSet")
    return convert_encodings(charset) if charset else default_encoding


def _set_raw_content(ds: Dataset, encoded: bytes) -> None:
    """``ds``'s Content Sequence as already encoded (Explicit VR LE) items, written as they
    are: pydicom neither parses nor encodes them again (original encoding = written one)."""
    ds[_CONTENT_SEQUENCE] = RawDataElement(
        Tag(_CONTENT_SEQUENCE), "SQ", len(encoded), encoded, 0, False, True)
    ds.set_original_encoding(False, True, _text_encodings(ds))


def finding_values(prediction: Prediction) -> list[tuple[str, float, float, bool]]:
    """``(label, probability, threshold, positive)`` of each finding, checked (TypeError,
    ValueError naming the value)."""
    if not isinstance(prediction, Prediction):
        raise TypeError(f"prediction must be a Prediction, not {type(prediction).__name__}")
    out = []
    seen = set()
    for f in prediction.findings:
        if not isinstance(f, Finding):
            raise TypeError(f"finding {f!r} must be a Finding, not {type(f).__name__}")
        label = f.label
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"finding label {label!r} must be a non-empty str")
        if label in seen:
            raise ValueError(f"finding label {label!r} appears twice")
        seen.add(label)
        p, t = float(f.probability), float(f.threshold)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"probability {p!r} of {label!r} is not in [0, 1]")
        if not (math.isfinite(t) and 0.0 <= t <= 1.0):
            raise ValueError(f"threshold {t!r} of {label!r} is not in [0, 1]")
        out.append((label, p, t, p >= t))
    if not out:
        raise ValueError("prediction has no findings")
    return out


class FindingsReportTemplate:
    """The parts of one model's SR that never change, built once per loaded model.

    Codes of the card's labels, the device observer context, the algorithm identification
    and the coding scheme declarations; :meth:`build` adds what each image changes.
    """

    def __init__(self, model: ModelIdentity, labels: Sequence[str] = ()) -> None:
        if not isinstance(model, ModelIdentity):
            raise TypeError(f"model must be a ModelIdentity, not {type(model).__name__}")
        self.model = model
        self.observation_context = ObservationContext(
            observer_device_context=ObserverContext(
                observer_type=codes.DEVICE_OBSERVER,
                observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                    uid=model.device_uid,
                    name=clip_lo(model.name),
                    manufacturer_name=clip_lo(model.manufacturer),
                    model_name=clip_lo(f"{model.name} {model.version}"),
                    serial_number=model.serial_number,
                ),
            )
        )
        self.algorithm = AlgorithmIdentification(
            name=clip_lo(model.name), version=clip_lo(model.version),
            manufacturer=clip_lo(model.manufacturer),
        )
        self._codes: dict[str, CodedConcept] = {}
        for label in labels:
            if label:
                self.code(label)
        self._group_stencils: dict[str, GroupStencils] = {}
        self._no_stencil: set[str] = set()

    def prepare(self) -> bool:
        """Make the group stencils of the card's labels now (else on first use)."""
        return self._stencils(list(self._codes)) is not None

    def code(self, label: str) -> CodedConcept:
        code = self._codes.get(label)
        if code is None:
            code = self._codes[label] = codes.finding_code(label)
        return code

    def _image_library(self, source: SourceContext) -> ContainerContentItem:
        """TID 1600 with one TID 1601 entry; descriptors only where the source knows them."""
        descriptors = []
        modality = codes.MODALITIES.get(source.modality)
        if modality is not None:
            descriptors.append(CodeContentItem(
                name=dcm_codes.DCM.Modality, value=modality, relationship_type=_ACQ,
            ))
        descriptors += [
            NumContentItem(name=dcm_codes.DCM.PixelDataRows, value=source.rows,
                           unit=_PIXELS, relationship_type=_ACQ),
            NumContentItem(name=dcm_codes.DCM.PixelDataColumns, value=source.columns,
                           unit=_PIXELS, relationship_type=_ACQ),
        ]
        if source.patient_orientation is not None:
            descriptors += [
                TextContentItem(name=dcm_codes.DCM.PatientOrientationRow,
                                value=source.patient_orientation[0], relationship_type=_ACQ),
                TextContentItem(name=dcm_codes.DCM.PatientOrientationColumn,
                                value=source.patient_orientation[1], relationship_type=_ACQ),
            ]
        if source.pixel_spacing is not None:
            descriptors += [
                NumContentItem(name=dcm_codes.DCM.HorizontalPixelSpacing,
                               value=source.pixel_spacing[1], unit=_MM, relationship_type=_ACQ),
                NumContentItem(name=dcm_codes.DCM.VerticalPixelSpacing,
                               value=source.pixel_spacing[0], unit=_MM, relationship_type=_ACQ),
            ]
        image = ImageContentItem(
            name=CodedConcept.from_code(dcm_codes.SCT.Source),
            referenced_sop_class_uid=source.sop_class_uid,
            referenced_sop_instance_uid=source.sop_uid,
            relationship_type=_CONTAINS,
        )
        image.ContentSequence = descriptors
        group = ContainerContentItem(name=dcm_codes.DCM.ImageLibraryGroup,
                                     relationship_type=_CONTAINS)
        group.ContentSequence = [image]
        library = ContainerContentItem(name=dcm_codes.DCM.ImageLibrary,
                                       relationship_type=_CONTAINS)
        library.ContentSequence = [group]
        return library

    def _evaluations(self, heatmap: HeatMap | None) -> ContainerContentItem:
        items = []
        if self.model.intended_use.strip():
            items.append(TextContentItem(
                name=codes.INTENDED_USE, value=self.model.intended_use.strip(),
                relationship_type=_CONTAINS,
            ))
        if heatmap is not None:
            method, label = heatmap.method, heatmap.label  # checked: non-empty str
            if heatmap.suppressed:
                reason = str(heatmap.suppressed_reason or "sanity check failed")
                items.append(TextContentItem(
                    name=codes.HEAT_MAP_SUPPRESSED,
                    value=(f"{method} heat map for {label} suppressed and not written: "
                           f"{reason}"),
                    relationship_type=_CONTAINS,
                ))
            else:
                items.append(TextContentItem(
                    name=codes.HEAT_MAP,
                    value=(f"{method} heat map for {label}: written as secondary capture "
                           "(overlay) and parametric map; not for diagnostic use"),
                    relationship_type=_CONTAINS,
                ))
        container = ContainerContentItem(
            name=codes.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
        )
        container.ContentSequence = items
        return container

    def build(
        self,
        source: SourceContext,
        prediction: Prediction,
        heatmap: HeatMap | None,
        *,
        when: datetime.datetime,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        series_description: str,
        stencil: bool = True,
        findings: list[tuple[str, float, float, bool]] | None = None,
    ) -> Comprehensive3DSR:
        """The SR of one image's prediction (and what became of its heat map).

        With ``stencil`` (the default) the content tree is encoded here: the measurement
        groups are filled from byte stencils (:mod:`~dicom_io.results.stencil`), the other
        items are built by highdicom and encoded by pydicom. highdicom builds the document
        around a content tree holding only the image library (all it reads from the content
        is the evidence the tree references), and the encoded tree replaces it: the same
        bytes, several times faster. The returned dataset holds its content tree raw.
        ``findings``: :func:`finding_values` of ``prediction``, where the caller has them.
        """
        if findings is None:
            findings = finding_values(prediction)
        if heatmap is not None:
            check_heatmap(heatmap)
        stencils = self._stencils([label for label, *_ in findings]) if stencil else None
        if stencils is None:
            groups = [
                self.group(label, tracking_uid(source.sop_uid, self.model.sha256, label),
                           round(p, 6), round(t, 6), positive, source.sop_class_uid,
                           source.sop_uid)
                for label, p, t, positive in findings
            ]
        else:  # a stand-in: the container's content is filled from the stencils below
            groups = [stencils[findings[0][0]].synthetic]
        report = MeasurementReport(
            observation_context=self.observation_context,
            procedure_reported=codes.PROCEDURE_CHEST_XRAY,
            imaging_measurements=groups,
            title=codes.REPORT_TITLE,
        )
        root = report[0].ContentSequence
        # TID 1500 order: ..., procedure reported, image library, imaging measurements, ...
        root.insert(len(root) - 1, self._image_library(source))
        root.append(self._evaluations(heatmap))

        content: Dataset = report[0]
        encoded = None
        if stencils is not None:
            charset = source.reference.get("SpecificCharacterSet") or default_encoding
            encoded = self._content_bytes(content, findings, stencils, source, charset)
            # highdicom needs the content only for the evidence it references: the source.
            content = _shallow(report[0])
            del content.ContentSequence  # a new element: the report's own stays as it was
            content.ContentSequence = [item for item in report[0].ContentSequence
                                       if _concept(item) == _IMAGE_LIBRARY]

        # The private scheme is always declared: the TEXT item names use it.
        sr = Comprehensive3DSR(
            evidence=[source.for_result()],  # its own patient and study elements
            content=content,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=source.instance_number,
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=clip_lo(series_description),
            coding_schemes=list(codes.CODING_SCHEMES),
            contributing_equipment=[self.model.contributing_equipment(when)],
            **self.model.equipment_kwargs(),
            **date_time_kwargs(when),
        )
        finish(sr, self.model, when)
        if encoded is not None:
            _set_raw_content(sr, encoded)
        return sr

    def _content_bytes(self, root: Dataset, findings: list, stencils: dict[str, GroupStencils],
                       source: SourceContext, charset: str | list[str]) -> bytes:
        """The root's Content Sequence encoded, its groups filled from the stencils."""
        slots = source_slots(source.sop_class_uid, source.sop_uid)
        groups = b"".join(
            stencils[label].fill(tracking_uid(source.sop_uid, self.model.sha256, label),
                                 round(p, 6), round(t, 6), positive, slots)
            for label, p, t, positive in findings
        )
        parts = []
        for item in root.ContentSequence:
            if _concept(item) == _IMAGING_MEASUREMENTS:
                item = _shallow(item)
                _set_raw_content(item, groups)
            parts.append(encode_item(item, charset))
        return b"".join(parts)

    def group(self, label: str, uid: str, probability: float, threshold: float,
              positive: bool, sop_class_uid: str, sop_uid: str
              ) -> MeasurementsAndQualitativeEvaluations:
        """One label's measurement group (TID 1501), built by highdicom."""
        concept = self.code(label)
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=uid, identifier=label),
            finding_type=concept,
            algorithm_id=self.algorithm,
            measurements=[
                Measurement(name=codes.PROBABILITY, value=probability,
                            unit=codes.UNIT_PROBABILITY),
                Measurement(name=codes.THRESHOLD, value=threshold,
                            unit=codes.UNIT_PROBABILITY),
            ],
            qualitative_evaluations=[QualitativeEvaluation(
                name=concept, value=codes.PRESENT if positive else codes.ABSENT,
            )],
            source_images=[SourceImageForMeasurementGroup(
                referenced_sop_class_uid=sop_class_uid, referenced_sop_instance_uid=sop_uid,
            )],
        )

    def _stencils(self, labels: list[str]) -> dict[str, GroupStencils] | None:
        """Each label's group stencils (made on first use); None where one cannot be made.

        Stencils are encoded once, so their constant text must encode the same in every
        character set: labels and model identity in ASCII (else highdicom builds it all).
        """
        model = self.model
        if not all(text.isascii() for text in (*labels, model.name, model.version,
                                                model.manufacturer)):
            return None
        out = {}
        for label in labels:
            stencil = self._group_stencils.get(label)
            if stencil is None:
                if label in self._no_stencil:
                    return None
                try:
                    stencil = GroupStencils(partial(self.group, label))
                except StencilError as e:  # highdicom changed: build everything with it
                    logger.warning("no SR stencil for label %r (%s): highdicom builds it",
                                   label, e)
                    self._no_stencil.add(label)
                    return None
                self._group_stencils[label] = stencil
            out[label] = stencil
        return out


__all__ = ["FindingsReportTemplate", "finding_values"]
