"""Every coded concept the result objects use, and the one label-to-code mapping table.

Finding labels map to SNOMED CT (``SCT``) where a concept exists that we are sure of, to a
DICOM (``DCM``) concept where DICOM defines the finding (PS3.16 CID 6102-6105, chest
radiograph findings), and to the node's private coding scheme :data:`PRIVATE_SCHEME`
otherwise. The private scheme is declared in every SR that uses it (Coding Scheme
Identification Sequence, :data:`CODING_SCHEMES`).

Decisions (see also the table): ``Edema`` is pulmonary edema, ``Effusion`` pleural effusion,
``Hernia`` hiatal hernia (PadChest/NIH label ``hiatal hernia``), ``Fracture`` the generic
fracture of bone, ``Tuberculosis`` pulmonary tuberculosis, ``Mass``/``Nodule`` the
morphologic abnormalities DICOM uses for chest findings (CID 6104), ``Infiltration`` and
``Lung Opacity`` DICOM's own chest codes, ``Air Trapping`` SNOMED's ``Air-trapping`` (CID
6105). PadChest labels without a concept we are sure of (aortic atheromatosis and
elongation, costophrenic angle blunting, flattened diaphragm, hemidiaphragm elevation, hilar
enlargement, pleural thickening) get private codes; any label not in the table gets a stable
private code made from its name (:func:`finding_code`).
"""

from __future__ import annotations

import hashlib

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

#: Designator of the node's private coding scheme (PS3.16 Section 8: "99" prefix).
PRIVATE_SCHEME = "99CXRNODE"

#: Coding Scheme Identification Sequence items declaring :data:`PRIVATE_SCHEME`.
CODING_SCHEMES: tuple[CodingSchemeIdentificationItem, ...] = (
    CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="cxr-node private codes",
        version="1",
        responsible_organization="cxr-node",
    ),
)


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "DCM", meaning)


def private(value: str, meaning: str) -> CodedConcept:
    """A concept of the node's private scheme (``value`` at most 16 characters)."""
    if not value or len(value) > 16:
        raise ValueError(f"private code value {value!r} must have 1 to 16 characters")
    return CodedConcept(value, PRIVATE_SCHEME, meaning[:64])


#: The mapping table: normalised label (see :func:`normalise_label`) -> concept.
FINDING_CODES: dict[str, CodedConcept] = {
    # -- the 26 PadChest labels of the seed checkpoint --
    "air trapping": _sct("76171001", "Air-trapping"),
    "aortic atheromatosis": private("AORTATHEROMA", "Aortic atheromatosis"),
    "aortic elongation": private("AORTELONG", "Aortic elongation"),
    "atelectasis": _sct("46621007", "Atelectasis"),
    "bronchiectasis": _sct("12295008", "Bronchiectasis"),
    "cardiomegaly": _sct("8186001", "Cardiomegaly"),
    "consolidation": _sct("95436008", "Lung consolidation"),
    "costophrenic angle blunting": private("CPANGLEBLUNT", "Costophrenic angle blunting"),
    "edema": _sct("19242006", "Pulmonary edema"),
    "effusion": _sct("60046008", "Pleural effusion"),
    "emphysema": _sct("87433001", "Pulmonary emphysema"),
    "fibrosis": _sct("51615001", "Fibrosis of lung"),
    "flattened diaphragm": private("FLATDIAPHRAGM", "Flattened diaphragm"),
    "fracture": _sct("125605004", "Fracture of bone"),
    "granuloma": _sct("45647009", "Granuloma"),
    "hemidiaphragm elevation": private("HEMIDIAPHELEV", "Hemidiaphragm elevation"),
    "hernia": _sct("84089009", "Hiatal hernia"),
    "hilar enlargement": private("HILARENLARGE", "Hilar enlargement"),
    "infiltration": _dcm("112121", "Infiltrate"),
    "mass": _sct("4147007", "Mass"),
    "nodule": _sct("27925004", "Nodule"),
    "pleural thickening": private("PLEURALTHICK", "Pleural thickening"),
    "pneumonia": _sct("233604007", "Pneumonia"),
    "pneumothorax": _sct("36118008", "Pneumothorax"),
    "scoliosis": _sct("298382003", "Scoliosis deformity of spine"),
    "tuberculosis": _sct("154283005", "Pulmonary tuberculosis"),
    # -- further torchxrayvision labels (NIH, CheXpert, MIMIC, RSNA) --
    "pleural effusion": _sct("60046008", "Pleural effusion"),
    "pulmonary edema": _sct("19242006", "Pulmonary edema"),
    "lung opacity": _dcm("112001", "Opacity"),
    "lung lesion": private("LUNGLESION", "Lung lesion"),
    "enlarged cardiomediastinum": private("ENLCARDIOMED", "Enlarged cardiomediastinum"),
    "support devices": private("SUPPORTDEVICES", "Support devices"),
    "no finding": private("NOFINDING", "No finding"),
}


def normalise_label(label: str) -> str:
    """Table key of a label: case, underscores and repeated blanks ignored."""
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, not {type(label).__name__}")
    return " ".join(label.replace("_", " ").split()).lower()


def finding_code(label: str) -> CodedConcept:
    """The concept of a finding label: the table's, else a private code stable per label."""
    key = normalise_label(label)
    if not key:
        raise ValueError(f"label {label!r} is empty")
    code = FINDING_CODES.get(key)
    if code is not None:
        return code
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12].upper()
    return private(f"L{digest}", label.strip())


def _label_digest(label: str) -> str:
    return hashlib.sha256(normalise_label(label).encode("utf-8")).hexdigest()[:12].upper()


def probability_of(label: str) -> CodedConcept:
    """"<label> probability": the region group's NUM concept, named so that a viewer that
    labels an outline with its NUM items' meanings names the finding (private code)."""
    return private(f"P{_label_digest(label)}", f"{label.strip()[:52]} probability")


def threshold_of(label: str) -> CodedConcept:
    """"<label> threshold": the region group's threshold NUM concept (private code)."""
    return private(f"T{_label_digest(label)}", f"{label.strip()[:54]} threshold")


# -- fixed concepts of the SR --
#: Document title (CID 7021).
REPORT_TITLE = CodedConcept.from_code(codes.DCM.ImagingMeasurementReport)
#: Procedure reported: a plain chest radiograph.
PROCEDURE_CHEST_XRAY = _sct("399208008", "Plain chest X-ray")
#: Name of the numeric measurement of each label.
PROBABILITY = CodedConcept.from_code(codes.DCM.Probability)
#: Name of the operating threshold stated beside each probability.
THRESHOLD = CodedConcept.from_code(codes.DCM.ThresholdValue)
#: Unit of probabilities and thresholds (UCUM annotation, dimensionless).
UNIT_PROBABILITY = CodedConcept("{probability}", "UCUM", "probability")
#: Unit of the region groups' measurements, which a viewer prints after the value.
UNIT_PERCENT = CodedConcept("%", "UCUM", "percent")
#: Values of each label's qualitative evaluation.
PRESENT = CodedConcept.from_code(codes.SCT.Present)
ABSENT = CodedConcept.from_code(codes.SCT.Absent)
#: TID 1500 "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: TEXT items of the qualitative evaluations container.
HEAT_MAP = private("HEATMAP", "Heat map")
HEAT_MAP_SUPPRESSED = private("HEATMAPSUPPR", "Heat map suppressed")
SUMMARY = private("SUMMARY", "Summary")
INTENDED_USE = private("INTENDEDUSE", "Intended use")
#: Observer type of the device observer context.
DEVICE_OBSERVER = CodedConcept.from_code(codes.DCM.Device)
#: Contributing equipment purpose (CID 7005): the model processed the source image.
PROCESSING_EQUIPMENT = CodedConcept.from_code(codes.DCM.ProcessingEquipment)
#: Purpose of reference of the source image in derived images.
SOURCE_IMAGE_FOR_PROCESSING = CodedConcept.from_code(
    codes.DCM.SourceImageForImageProcessingOperation
)
#: Modality codes of source images (CID 29).
MODALITIES: dict[str, CodedConcept] = {
    "CR": CodedConcept.from_code(codes.DCM.ComputedRadiography),
    "DX": CodedConcept.from_code(codes.DCM.DigitalRadiography),
}
