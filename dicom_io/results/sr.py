"""The findings as a Comprehensive SR holding a TID 1500 Measurement Report.

Comprehensive SR, not Comprehensive 3D SR: the regions are 2D image coordinates (SCOORD), no
SCOORD3D is needed, and more PACS and viewers accept the 2D class.

Layout (PS3.16 TID 1500)::

    Imaging Measurement Report
    ├── Language, Observer Type = Device, Device Observer UID/Name/Manufacturer/Model/Serial
    ├── Procedure reported = Plain chest X-ray
    ├── Image Library ── Image Library Group ── IMAGE (the source) + descriptors
    ├── Imaging Measurements (only when a finding is outlined)
    │   └── Measurement Group (TID 1410), one per outlined finding (dicom_io.results.groups)
    │       ├── Tracking Identifier (label) / Tracking UID (deterministic, one per label)
    │       ├── Image Region = SCOORD POLYLINE (closed) SELECTED FROM the source IMAGE
    │       ├── Finding = the label's concept     ├── Algorithm Name/Version/Manufacturer
    │       ├── <label> probability = 100 p {%}   ├── <label> threshold = 100 t {%}
    │       └── <label concept> = Present | Absent (p >= t)
    └── Qualitative Evaluations
        ├── Intended use; Summary (the findings above threshold, or none)
        ├── per explained finding: Heat map (or: Heat map suppressed, and why)
        └── per finding without a region: <label concept> = Present | Absent
            └── HAS PROPERTIES Probability = p {probability}, Threshold Value = t

Findings without a region are not image-level groups (TID 1501) in Imaging Measurements:
OHIF 3.13 fails on a group without image coordinates (see
:func:`~dicom_io.results.groups.finding_item`).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from functools import partial

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.tag import Tag

from dicom_io.results import codes
from dicom_io.results._common import ModelIdentity, check_heatmap, clip_lo, date_time_kwargs, finish
from dicom_io.results.groups import finding_item, finding_values, image_group, region_group
from dicom_io.results.source import SourceContext
from dicom_io.results.stencil import FindingStencils, StencilError, encode_item
from dicom_io.results.uids import tracking_uid
from domain import HeatMap, Prediction, Region

logger = logging.getLogger(__name__)

_CONTAINS = RelationshipTypeValues.CONTAINS
_ACQ = RelationshipTypeValues.HAS_ACQ_CONTEXT
_PIXELS = CodedConcept("{pixels}", "UCUM", "Pixels")
_MM = CodedConcept.from_code(dcm_codes.UCUM.Millimeter)
_CONTENT_SEQUENCE = 0x0040A730
_QUALITATIVE_EVALUATIONS = (codes.QUALITATIVE_EVALUATIONS.value,
                            codes.QUALITATIVE_EVALUATIONS.scheme_designator)
_STAND_IN_UID = "1.2.826.0.1.3680043.10.1111.9.9"
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
        self._finding_stencils: dict[str, FindingStencils] = {}
        self._no_stencil: set[str] = set()
        self._stand_in_group: MeasurementsAndQualitativeEvaluations | None = None

    def prepare(self) -> bool:
        """Make the finding stencils of the card's labels now (else on first use)."""
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

    def _evaluations(self, findings: list[tuple[str, float, float, bool]],
                     heatmaps: Sequence[HeatMap], regions: Mapping[str, Region],
                     parametric_map: bool, with_findings: bool) -> ContainerContentItem:
        """Intended use, summary, what became of each heat map; then, ``with_findings``,
        each finding without a region (:func:`~dicom_io.results.groups.finding_item`)."""
        items = []
        if self.model.intended_use.strip():
            items.append(TextContentItem(
                name=codes.INTENDED_USE, value=self.model.intended_use.strip(),
                relationship_type=_CONTAINS,
            ))
        positive = [label for label, _, _, is_positive in findings if is_positive]
        summary = (f"Above threshold: {', '.join(positive)}" if positive
                   else "No finding is above its threshold")
        items.append(TextContentItem(name=codes.SUMMARY, value=summary[:1024],
                                     relationship_type=_CONTAINS))
        shown = " and parametric map" if parametric_map else ""
        for heatmap in heatmaps:
            method, label = heatmap.method, heatmap.label  # checked: non-empty str
            if heatmap.suppressed:
                reason = str(heatmap.suppressed_reason or "sanity check failed")
                items.append(TextContentItem(
                    name=codes.HEAT_MAP_SUPPRESSED,
                    value=(f"{method} heat map for {label} suppressed and not written: "
                           f"{reason}"),
                    relationship_type=_CONTAINS,
                ))
                continue
            region = regions.get(label)
            where = (f"outlined where it exceeds {region.fraction:.0%} of its peak; "
                     if region is not None else "")
            items.append(TextContentItem(
                name=codes.HEAT_MAP,
                value=(f"{method} heat map for {label}: {where}shown in the secondary "
                       f"capture{shown}; not for diagnostic use"),
                relationship_type=_CONTAINS,
            ))
        if with_findings:
            items += [finding_item(self.code(label), round(p, 6), round(t, 6), positive)
                      for label, p, t, positive in findings if label not in regions]
        container = ContainerContentItem(
            name=codes.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS
        )
        container.ContentSequence = items
        return container

    def build(
        self,
        source: SourceContext,
        prediction: Prediction,
        heatmaps: Sequence[HeatMap] = (),
        *,
        regions: Mapping[str, Region] | None = None,
        parametric_map: bool = False,
        when: datetime.datetime,
        series_instance_uid: str,
        series_number: int,
        sop_instance_uid: str,
        series_description: str,
        stencil: bool = True,
        findings: list[tuple[str, float, float, bool]] | None = None,
    ) -> ComprehensiveSR:
        """The SR of one image's prediction, its findings' regions (``regions``, by label)
        and what became of its heat maps.

        With ``stencil`` (the default) the content tree is encoded here: the findings without
        a region are filled from byte stencils (:mod:`~dicom_io.results.stencil`), the other
        items are built by highdicom and encoded by pydicom. highdicom builds the document
        around a content tree holding only the image library (all it reads from the content
        is the evidence the tree references), and the encoded tree replaces it: the same
        bytes, several times faster. The returned dataset holds its content tree raw.
        ``findings``: :func:`finding_values` of ``prediction``, where the caller has them.
        """
        if findings is None:
            findings = finding_values(prediction)
        for heatmap in heatmaps:
            check_heatmap(heatmap)
        regions = dict(regions or {})
        unknown = sorted(set(regions) - {label for label, *_ in findings})
        if unknown:
            raise ValueError(f"regions of labels {unknown} that the prediction has not")
        plain = [label for label, *_ in findings if label not in regions]
        stencils = self._stencils(plain) if stencil else None
        groups = [self._group(source, f, regions[f[0]]) for f in findings if f[0] in regions]
        report = MeasurementReport(
            observation_context=self.observation_context,
            procedure_reported=codes.PROCEDURE_CHEST_XRAY,
            imaging_measurements=groups or [self._stand_in()],  # highdicom asks for one
            title=codes.REPORT_TITLE,
        )
        root = report[0].ContentSequence
        if not groups:  # no region: Imaging Measurements is left out (TID 1500 row 9: MC)
            del root[-1]
        # TID 1500 order: ..., procedure reported, image library, imaging measurements, ...
        root.insert(len(root) - (1 if groups else 0), self._image_library(source))
        root.append(self._evaluations(findings, heatmaps, regions, parametric_map,
                                      with_findings=stencils is None))

        content: Dataset = report[0]
        encoded = None
        if stencils is not None:
            charset = source.reference.get("SpecificCharacterSet") or default_encoding
            encoded = self._content_bytes(content, findings, stencils, charset, regions)
            # highdicom needs the content only for the evidence it references: the source.
            content = _shallow(report[0])
            del content.ContentSequence  # a new element: the report's own stays as it was
            content.ContentSequence = [item for item in report[0].ContentSequence
                                       if _concept(item) == _IMAGE_LIBRARY]

        # The private scheme is always declared: the TEXT item names use it.
        sr = ComprehensiveSR(
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
        source.name(sr)
        finish(sr, self.model, when)
        if encoded is not None:
            _set_raw_content(sr, encoded)
        return sr

    def _content_bytes(self, root: Dataset, findings: list,
                       stencils: dict[str, FindingStencils], charset: str | list[str],
                       regions: Mapping[str, Region]) -> bytes:
        """The root's Content Sequence encoded, the findings without a region appended to
        its Qualitative Evaluations from the stencils."""
        plain = b"".join(stencils[label].fill(round(p, 6), round(t, 6), positive)
                         for label, p, t, positive in findings if label not in regions)
        parts = []
        for item in root.ContentSequence:
            if _concept(item) == _QUALITATIVE_EVALUATIONS:
                texts = b"".join(encode_item(text, charset) for text in item.ContentSequence)
                item = _shallow(item)
                _set_raw_content(item, texts + plain)
            parts.append(encode_item(item, charset))
        return b"".join(parts)

    def _group(self, source: SourceContext, finding: tuple[str, float, float, bool],
               region: Region) -> MeasurementsAndQualitativeEvaluations:
        label, _, _, positive = finding
        uid = tracking_uid(source.sop_uid, self.model.sha256, label)
        return region_group(self.code(label), self.algorithm, label, uid, region, positive,
                            source.sop_class_uid, source.sop_uid)

    def _stand_in(self) -> MeasurementsAndQualitativeEvaluations:
        """A group for highdicom's report to hold where the document has none (removed)."""
        if self._stand_in_group is None:
            self._stand_in_group = image_group(
                codes.PRESENT, self.algorithm, "stand-in", _STAND_IN_UID, 0.0, 0.0, False,
                _STAND_IN_UID, _STAND_IN_UID)
        return self._stand_in_group

    def finding(self, label: str, probability: float, threshold: float, positive: bool
                ) -> Dataset:
        """One finding without a region, built by highdicom (what the stencils hold)."""
        return finding_item(self.code(label), probability, threshold, positive)

    def _stencils(self, labels: list[str]) -> dict[str, FindingStencils] | None:
        """Each label's finding stencils (made on first use); None where one cannot be made.

        Stencils are encoded once, so their constant text must encode the same in every
        character set: labels in ASCII (else highdicom builds it all).
        """
        if not all(label.isascii() for label in labels):
            return None
        out = {}
        for label in labels:
            stencil = self._finding_stencils.get(label)
            if stencil is None:
                if label in self._no_stencil:
                    return None
                try:
                    stencil = FindingStencils(partial(self.finding, label))
                except StencilError as e:  # highdicom changed: build everything with it
                    logger.warning("no SR stencil for label %r (%s): highdicom builds it",
                                   label, e)
                    self._no_stencil.add(label)
                    return None
                self._finding_stencils[label] = stencil
            out[label] = stencil
        return out


__all__ = ["FindingsReportTemplate", "finding_values"]
