"""The raw heat map as a Parametric Map (float values, real-world value mapping).

Geometry: the map has the source's rows, columns and pixel spacing, and pixel (r, c) of
the map is pixel (r, c) of the source (the Derivation Image Sequence says spatial locations
are preserved). The Parametric Map IOD requires a Frame of Reference and patient plane
position/orientation, which a projection radiograph does not have: the map gets its own
frame of reference (derived from the source SOP Instance UID, so maps of one image from any
model share it, and never the source's), positioned at its origin (0, 0, 0) and oriented by
the source's Patient Orientation (e.g. ``L\\F`` -> row direction +x, column direction -z;
a coronal plane ``1\\0\\0\\0\\0\\-1`` when the source does not say). That geometry is
nominal: it places the map relative to the patient's axes, not in any scanner space.
Without a valid source pixel spacing, the Pixel Measures carry no Pixel Spacing.
"""

from __future__ import annotations

import datetime

import numpy as np
from highdicom import (
    PixelMeasuresSequence,
    PlaneOrientationSequence,
    PlanePositionSequence,
    VOILUTTransformation,
)
from highdicom.pm import ParametricMap, RealWorldValueMapping
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.results._common import ModelIdentity, clip_lo, date_time_kwargs, finish
from dicom_io.results.source import SourceContext
from dicom_io.results.uids import dimension_organization_uid, frame_of_reference_uid

#: Patient axes of the Patient Orientation letters (PS3.3 C.7.6.1.1.1).
_AXES = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}
#: Coronal plane of a PA chest radiograph (Patient Orientation L\F).
DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
#: Label of the real-world value mapping and content label of the map.
LUT_LABEL = "HEATMAP"
#: The map's source geometry (set by :func:`build_pm`, never the source's).
GEOMETRY = (
    "FrameOfReferenceUID", "PositionReferenceIndicator", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "NumberOfFrames",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
)


def orientation_cosines(patient_orientation: tuple[str, str] | None) -> tuple[float, ...]:
    """Image Orientation (Patient) that matches a Patient Orientation pair, if orthogonal."""
    if patient_orientation is None:
        return DEFAULT_ORIENTATION
    vectors = []
    for letters in patient_orientation:
        v = np.sum([_AXES[c] for c in letters], axis=0)
        vectors.append(v / np.linalg.norm(v))
    if abs(float(np.dot(vectors[0], vectors[1]))) > 1e-6:
        return DEFAULT_ORIENTATION
    return tuple(round(float(x), 6) + 0.0 for x in np.concatenate(vectors))


def build_pm(
    source: SourceContext,
    values: np.ndarray,
    *,
    label: str,
    method: str,
    signed: bool,
    model: ModelIdentity,
    when: datetime.datetime,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    series_description: str,
) -> ParametricMap:
    """The parametric map of checked heat-map ``values`` (float32, source grid)."""
    spacing = source.pixel_spacing
    cosines = orientation_cosines(source.patient_orientation)
    # highdicom derives the map's frame of reference and checks its geometry against the
    # first source image: give it the source with the nominal geometry described above
    # (new elements, set here: any the source has are shared with the other objects).
    geometry = source.for_result(*GEOMETRY)
    geometry.FrameOfReferenceUID = frame_of_reference_uid(source.sop_uid)
    geometry.PositionReferenceIndicator = None
    geometry.ImagePositionPatient = [0.0, 0.0, 0.0]
    geometry.ImageOrientationPatient = list(cosines)
    geometry.PixelSpacing = list(spacing or (1.0, 1.0))
    geometry.SliceThickness = None
    # Sources of a multi-frame IOD (one-frame grayscale Secondary Capture): the same
    # geometry as functional groups, where highdicom looks for it in such images.
    shared, frame = Dataset(), Dataset()
    shared.PixelMeasuresSequence = PixelMeasuresSequence(
        pixel_spacing=geometry.PixelSpacing, slice_thickness=None
    )
    shared.PlaneOrientationSequence = PlaneOrientationSequence("PATIENT", list(cosines))
    frame.PlanePositionSequence = PlanePositionSequence("PATIENT", [0.0, 0.0, 0.0])
    geometry.SharedFunctionalGroupsSequence = [shared]
    geometry.PerFrameFunctionalGroupsSequence = [frame]
    if "NumberOfFrames" in source.reference:
        geometry.NumberOfFrames = 1

    low, high = (-1.0, 1.0) if signed else (0.0, 1.0)
    mapping = RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=clip_lo(f"{method} attribution of {label}"),
        unit=dcm_codes.UCUM.NoUnits,
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
    )
    pm = ParametricMap(
        source_images=[geometry],
        pixel_array=values,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=source.instance_number,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            VOILUTTransformation(window_center=(low + high) / 2, window_width=high - low)
        ],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        content_label=LUT_LABEL,
        content_description=clip_lo(f"{method} heat map of {label}; not for diagnostic use"),
        pixel_measures=PixelMeasuresSequence(
            pixel_spacing=list(spacing or (1.0, 1.0)), slice_thickness=None
        ),
        plane_orientation=PlaneOrientationSequence("PATIENT", list(cosines)),
        plane_positions=[PlanePositionSequence("PATIENT", [0.0, 0.0, 0.0])],
        series_description=clip_lo(series_description),
        contributing_equipment=[model.contributing_equipment(when)],
        **model.equipment_kwargs(),
        **date_time_kwargs(when),
    )
    source.name(pm)
    measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if spacing is None and "PixelSpacing" in measures:
        del measures.PixelSpacing  # unknown: not 1 mm
    if "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices  # highdicom's guess; one projection has no slices
    organization = dimension_organization_uid(sop_instance_uid)
    for item in pm.get("DimensionIndexSequence", []) or []:
        item.DimensionOrganizationUID = organization
    for item in pm.get("DimensionOrganizationSequence", []) or []:
        item.DimensionOrganizationUID = organization
    pm.BodyPartExamined = source.body_part
    if source.lossy:  # the map was computed from lossy pixels
        pm.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in geometry:
                pm[keyword] = geometry[keyword]
    pm.DerivationDescription = clip_lo(
        f"{method} attribution of {label} by {model.name} {model.version}"
    )
    finish(pm, model, when)
    return pm
