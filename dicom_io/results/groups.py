"""The SR's findings: a region group (TID 1410) per outlined finding, an item per other one.

An outlined finding is a planar ROI group under Imaging Measurements: a viewer (OHIF 3 turns
groups that carry an image region into annotations) draws the outline and labels it from the
group's NUM items (concept name meaning, value, unit code), so its measurements are named for
the finding, in percent: "Nodule probability: 91.00 %", "Nodule threshold: 50.00 %". Every
other finding is a Present/Absent item in Qualitative Evaluations (:func:`finding_item` says
why not an image-level group). :func:`image_group` (TID 1501) serves only as the stand-in
highdicom's report needs when nothing is outlined (the container is then removed).
"""

from __future__ import annotations

import math

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    NumContentItem,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)

from dicom_io.results import codes
from domain import Finding, Prediction, Region


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


def image_group(code: CodedConcept, algorithm: AlgorithmIdentification, label: str, uid: str,
                probability: float, threshold: float, positive: bool, sop_class_uid: str,
                sop_uid: str) -> MeasurementsAndQualitativeEvaluations:
    """One label's image-level group (TID 1501): probability, threshold, present/absent."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=label),
        finding_type=code,
        algorithm_id=algorithm,
        measurements=[
            Measurement(name=codes.PROBABILITY, value=probability,
                        unit=codes.UNIT_PROBABILITY),
            Measurement(name=codes.THRESHOLD, value=threshold,
                        unit=codes.UNIT_PROBABILITY),
        ],
        qualitative_evaluations=[QualitativeEvaluation(
            name=code, value=codes.PRESENT if positive else codes.ABSENT,
        )],
        source_images=[SourceImageForMeasurementGroup(
            referenced_sop_class_uid=sop_class_uid, referenced_sop_instance_uid=sop_uid,
        )],
    )


def region_group(code: CodedConcept, algorithm: AlgorithmIdentification, label: str, uid: str,
                 region: Region, positive: bool, sop_class_uid: str, sop_uid: str
                 ) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """One outlined finding's planar ROI group (TID 1410): a closed POLYLINE on the source
    image, the finding's probability and threshold in percent, present/absent."""
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=label),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=region.points,
            source_image=SourceImageForRegion(referenced_sop_class_uid=sop_class_uid,
                                              referenced_sop_instance_uid=sop_uid),
        ),
        finding_type=code,
        algorithm_id=algorithm,
        measurements=[
            Measurement(name=codes.probability_of(label),
                        value=round(100 * region.probability, 4), unit=codes.UNIT_PERCENT),
            Measurement(name=codes.threshold_of(label),
                        value=round(100 * region.threshold, 4), unit=codes.UNIT_PERCENT),
        ],
        qualitative_evaluations=[QualitativeEvaluation(
            name=code, value=codes.PRESENT if positive else codes.ABSENT,
        )],
    )


def finding_item(code: CodedConcept, probability: float, threshold: float, positive: bool
                 ) -> CodeContentItem:
    """A finding without a region, in the report's Qualitative Evaluations: ``<finding> =
    Present | Absent``, with its probability and threshold as properties.

    Not an image-level measurement group (TID 1501) in Imaging Measurements: OHIF 3.13
    makes every group there an annotation and fails ("Cannot read properties of undefined
    (reading 'ReferencedSOPSequence')", so the viewer shows an error page) on a group that
    has no image coordinates. The findings the viewer should draw are the region groups.
    """
    item = CodeContentItem(name=code, value=codes.PRESENT if positive else codes.ABSENT,
                           relationship_type=RelationshipTypeValues.CONTAINS)
    item.ContentSequence = [
        NumContentItem(name=codes.PROBABILITY, value=probability, unit=codes.UNIT_PROBABILITY,
                       relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
        NumContentItem(name=codes.THRESHOLD, value=threshold, unit=codes.UNIT_PROBABILITY,
                       relationship_type=RelationshipTypeValues.HAS_PROPERTIES),
    ]
    return item

