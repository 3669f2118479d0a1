"""The root attributes of PS3.3's Patient, Study and Specimen modules, by module, and what
the standard requires of them beyond their value representations.

Written out from the standard's module tables (DICOM PS3.3, as of 2024), so that the result
builders know which source elements highdicom puts into a new object as they are (its
``copy_patient_and_study_information``) without reading its private tables, and so that
:mod:`~dicom_io.results.sanitize` can keep what a result copies conformant to the result's
IOD: enumerated values (:data:`ENUMERATED`), the items of the sequences results may carry
(:data:`ITEMS`) and the conditions between root attributes (:func:`conform_modules`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

logger = logging.getLogger(__name__)

_CHARSET_TAG = 0x00080005

MODULE_KEYWORDS: dict[str, tuple[str, ...]] = {
    # Patient (C.7.1.1)
    "patient": (
        "BreedRegistrationSequence", "DeidentificationMethod",
        "DeidentificationMethodCodeSequence", "EthnicGroupCodeSequence",
        "GeneticModificationsSequence", "GroupOfPatientsIdentificationSequence",
        "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence",
        "OtherPatientNames", "PatientAlternativeCalendar", "PatientBirthDate",
        "PatientBirthDateInAlternativeCalendar", "PatientBirthTime", "PatientBreedCodeSequence",
        "PatientBreedDescription", "PatientComments", "PatientDeathDateInAlternativeCalendar",
        "PatientID", "PatientIdentityRemoved", "PatientName", "PatientSex",
        "PatientSpeciesCodeSequence", "PatientSpeciesDescription", "QualityControlSubject",
        "ReferencedPatientPhotoSequence", "ReferencedPatientSequence", "ResponsibleOrganization",
        "ResponsiblePerson", "ResponsiblePersonRole", "SourcePatientGroupIdentificationSequence",
        "StrainAdditionalInformation", "StrainCodeSequence", "StrainDescription",
        "StrainNomenclature", "StrainStockSequence", "TypeOfPatientID",
    ),
    # Clinical Trial Subject (C.7.1.3)
    "clinical-trial-subject": (
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolID",
        "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
        "ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
        "IssuerOfClinicalTrialProtocolID", "IssuerOfClinicalTrialSiteID",
        "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID",
        "OtherClinicalTrialProtocolIDsSequence",
    ),
    # General Study (C.7.2.1)
    "general-study": (
        "AccessionNumber", "ConsultingPhysicianIdentificationSequence", "ConsultingPhysicianName",
        "IssuerOfAccessionNumberSequence", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
        "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence",
        "ReferencedStudySequence", "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianName", "RequestingService", "RequestingServiceCodeSequence",
        "StudyDate", "StudyDescription", "StudyID", "StudyInstanceUID", "StudyTime",
    ),
    # Patient Study (C.7.2.2)
    "patient-study": (
        "AdditionalPatientHistory", "AdmissionID", "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription", "Allergies", "IssuerOfAdmissionIDSequence",
        "IssuerOfServiceEpisodeIDSequence", "LastMenstrualDate", "MeasuredAPDimension",
        "MeasuredLateralDimension", "MedicalAlerts", "Occupation", "PatientAge",
        "PatientBodyMassIndex", "PatientSexNeutered", "PatientSize", "PatientSizeCodeSequence",
        "PatientState", "PatientWeight", "PregnancyStatus", "ReasonForVisit",
        "ReasonForVisitCodeSequence", "ServiceEpisodeDescription", "ServiceEpisodeID",
        "SmokingStatus",
    ),
    # Clinical Trial Study (C.7.2.3)
    "clinical-trial-study": (
        "ClinicalTrialTimePointDescription", "ClinicalTrialTimePointID",
        "ClinicalTrialTimePointTypeCodeSequence", "ConsentForClinicalTrialUseSequence",
        "IssuerOfClinicalTrialTimePointID", "LongitudinalTemporalEventType",
        "LongitudinalTemporalOffsetFromEvent",
    ),
    # Specimen (C.7.6.22)
    "specimen": (
        "AlternateContainerIdentifierSequence", "ContainerComponentSequence",
        "ContainerDescription", "ContainerIdentifier", "ContainerTypeCodeSequence",
        "IssuerOfTheContainerIdentifierSequence", "SpecimenDescriptionSequence",
    ),
}

#: Every keyword above: what highdicom copies from a source into a result.
PATIENT_STUDY_SPECIMEN_KEYWORDS: frozenset[str] = frozenset(
    keyword for keywords in MODULE_KEYWORDS.values() for keyword in keywords)


YES_NO = frozenset({"YES", "NO"})
#: Enumerated Values (PS3.3) of the attributes above and of the items results carry: any
#: other value is not one of the attribute's (Defined Terms may be extended: not listed).
ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PatientIdentityRemoved": YES_NO,
    "QualityControlSubject": YES_NO,
    "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
    "PregnancyStatus": frozenset({"1", "2", "3", "4"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
    "TypeOfPatientID": frozenset({"TEXT", "RFID", "BARCODE"}),
    "UniversalEntityIDType": frozenset({"DNS", "EUI64", "ISO", "URI", "UUID", "X400", "X500"}),
    "LossyImageCompression": frozenset({"00", "01"}),
}

#: Attributes of these modules that PS3.6 added after the dictionaries of the validators
#: and archives results meet (dicom3tools' ``dciodvfy`` calls them unknown, an error):
#: optional (Type 3) issuers and codes of clinical trials and ethnic groups, left out.
NEWER_THAN_VALIDATORS = (
    "EthnicGroupCodeSequence", "IssuerOfClinicalTrialProtocolID",
    "OtherClinicalTrialProtocolIDsSequence", "IssuerOfClinicalTrialSiteID",
    "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
)


@dataclass(frozen=True)
class Items:
    """What each item of a sequence must hold to be carried: its Type 1 attributes
    (``required``), the sequences it may hold (checked by their own :data:`ITEMS` entry; any
    other is left out of the item), and the conditions of a macro (``macro``: ``code``, the
    Code Sequence Macro; ``hl7v2``, the HL7v2 Hierarchic Designator Macro; ``universal``,
    Universal Entity ID Type exactly where there is a Universal Entity ID)."""

    required: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    macro: str = ""


CODE_ITEMS = Items(macro="code")
_HL7V2 = Items(macro="hl7v2")
_REFERENCE = Items(("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"))
_QUALIFIERS = ("IssuerOfPatientIDQualifiersSequence",)
#: The sequences results carry (besides code sequences, :data:`CODE_ITEMS`): those whose
#: items' macros are checked here. Others (person identification, photographs, consent,
#: specimens) are left out: nothing here vouches for their items.
ITEMS: dict[str, Items] = {
    "OtherPatientIDsSequence": Items(("PatientID", "TypeOfPatientID"), _QUALIFIERS),
    "GroupOfPatientsIdentificationSequence": Items(("PatientID",), _QUALIFIERS),
    "SourcePatientGroupIdentificationSequence": Items(("PatientID",), _QUALIFIERS),
    "IssuerOfPatientIDQualifiersSequence": Items(
        sequences=("AssigningFacilitySequence", "AssigningJurisdictionCodeSequence",
                   "AssigningAgencyOrDepartmentCodeSequence"),
        macro="universal",
    ),
    "AssigningFacilitySequence": _HL7V2,
    "IssuerOfAccessionNumberSequence": _HL7V2,
    "IssuerOfAdmissionIDSequence": _HL7V2,
    "IssuerOfServiceEpisodeIDSequence": _HL7V2,
    "ReferencedStudySequence": _REFERENCE,
    "ReferencedPatientSequence": _REFERENCE,
    "BreedRegistrationSequence": Items(
        ("BreedRegistrationNumber", "BreedRegistryCodeSequence"), ("BreedRegistryCodeSequence",)),
    "StrainStockSequence": Items(
        ("StrainStockNumber", "StrainSource", "StrainSourceRegistryCodeSequence"),
        ("StrainSourceRegistryCodeSequence",)),
    "GeneticModificationsSequence": Items(
        ("GeneticModificationsDescription", "GeneticModificationsNomenclature"),
        ("GeneticModificationsCodeSequence",)),
}


#: Sequences of one item at most (PS3.3, as dciodvfy checks them): more is left out.
SINGLE_ITEM = frozenset({
    "PatientSpeciesCodeSequence", "BreedRegistryCodeSequence", "StrainStockSequence",
    "StrainSourceRegistryCodeSequence", "GeneticModificationsSequence",
    "GeneticModificationsCodeSequence", "ReferencedPatientSequence",
    "SourcePatientGroupIdentificationSequence", "IssuerOfPatientIDQualifiersSequence",
    "AssigningFacilitySequence", "AssigningJurisdictionCodeSequence",
    "AssigningAgencyOrDepartmentCodeSequence", "IssuerOfAccessionNumberSequence",
    "RequestingServiceCodeSequence", "IssuerOfAdmissionIDSequence",
    "IssuerOfServiceEpisodeIDSequence",
})


def items_of(keyword: str) -> Items | None:
    """What the items of sequence ``keyword`` must hold, or None: not carried."""
    rule = ITEMS.get(keyword)
    if rule is None and keyword.endswith("CodeSequence"):
        return CODE_ITEMS
    return rule


def filled(ds: Dataset, keyword: str) -> bool:
    """Whether ``ds`` has ``keyword`` with a value (an empty sequence has none)."""
    value = ds.get(keyword)
    if value is None or isinstance(value, str | bytes):
        return bool(value)
    try:
        return len(value) > 0
    except TypeError:  # a number
        return True


def item_problem(item: Dataset, rule: Items) -> str | None:
    """What ``item`` lacks for ``rule`` (attribute keywords only, never values), or None."""
    for keyword in rule.required:
        if not filled(item, keyword):
            return f"an item lacks {keyword}"
    if rule.macro == "code":
        values = [k for k in ("CodeValue", "LongCodeValue", "URNCodeValue") if filled(item, k)]
        if len(values) != 1 or not filled(item, "CodeMeaning"):
            return "an item is not a code (one code value and a meaning)"
        if values[0] != "URNCodeValue" and not filled(item, "CodingSchemeDesignator"):
            return "an item lacks CodingSchemeDesignator"
    if rule.macro in ("hl7v2", "universal"):
        universal = filled(item, "UniversalEntityID")
        if rule.macro == "hl7v2" and not (universal or filled(item, "LocalNamespaceEntityID")):
            return "an item has neither LocalNamespaceEntityID nor UniversalEntityID"
        if universal != filled(item, "UniversalEntityIDType") or (
            not universal and "UniversalEntityIDType" in item
        ):
            return "an item has UniversalEntityIDType without UniversalEntityID or the reverse"
    return None


def check_items(elem: DataElement, check: Callable[[Dataset, BaseTag], tuple[
        DataElement | None, str]]) -> str | None:
    """Check sequence ``elem``'s items in place, each element with ``check`` (which returns it,
    a corrected copy, or None and why); what makes the sequence unfit to carry, or None."""
    rule = items_of(elem.keyword)
    if rule is None:
        return "results carry no sequence whose items they do not check"
    if elem.keyword in SINGLE_ITEM and len(elem.value) > 1:
        return "more than the one item allowed"
    for item in elem.value:
        for tag in list(item.keys()):
            name = keyword_for_tag(tag) or str(tag)
            if tag == _CHARSET_TAG:
                return "an item has its own SpecificCharacterSet"
            if dictionary_has_tag(tag) and dictionary_VR(tag) == "SQ" and (
                name not in rule.sequences
            ):
                del item[tag]  # Type 3 in the item's macro (the Type 1 ones are listed)
                continue
            cleaned, why = check(item, tag)
            if cleaned is None:
                return f"{name} in an item: {why}"
            if cleaned is not item.get_item(tag):
                item[tag] = cleaned
        problem = item_problem(item, rule)
        if problem:
            return problem
    return None


def _leave_out(ds: Dataset, keywords: tuple[str, ...] | list[str], why: str) -> None:
    for keyword in keywords:
        if keyword in ds:
            del ds[keyword]
            logger.debug("source %s left out: %s", keyword, why)


def _add_empty(ds: Dataset, keywords: tuple[str, ...], why: str) -> None:
    for keyword in keywords:
        if keyword not in ds:
            setattr(ds, keyword, [] if keyword.endswith("Sequence") else None)
            logger.debug("source %s added empty: %s", keyword, why)


#: Type 2C attributes of a patient who is an animal (PS3.3 C.7.1.1, C.7.2.2).
ANIMAL_TYPE_2C = (
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientSexNeutered",
)
#: Attributes that say the patient is an animal, which then needs a species (Type 1C):
#: without one they are left out.
ANIMAL_ONLY = (
    "PatientBreedDescription", "PatientBreedCodeSequence", "BreedRegistrationSequence",
    "StrainDescription", "StrainNomenclature", "StrainAdditionalInformation",
    "StrainCodeSequence", "StrainStockSequence",
)


def conform_modules(ds: Dataset) -> None:
    """Keep the conditions between root attributes of the modules above (``ds`` holds each
    attribute valid for its VR already). An attribute whose condition fails is left out; a
    Type 2C one a condition requires is added empty; a user-optional module missing its Type 1
    attributes is left out whole. Each change is logged at DEBUG, by keyword."""
    _leave_out(ds, MODULE_KEYWORDS["specimen"], "radiograph results carry no Specimen module")
    _leave_out(ds, NEWER_THAN_VALIDATORS, "newer than the validators' dictionaries")
    if filled(ds, "PatientIdentityRemoved") and str(ds.PatientIdentityRemoved) == "YES" and not (
        filled(ds, "DeidentificationMethod") or filled(ds, "DeidentificationMethodCodeSequence")
    ):
        _leave_out(ds, ("PatientIdentityRemoved",), "YES without a de-identification method")
    dates = ("PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar")
    if not filled(ds, "PatientAlternativeCalendar"):
        _leave_out(ds, dates, "no PatientAlternativeCalendar")
    if not any(k in ds for k in dates):
        _leave_out(ds, ("PatientAlternativeCalendar",), "no date in an alternative calendar")
    if filled(ds, "ResponsiblePerson") and not filled(ds, "ResponsiblePersonRole"):
        _leave_out(ds, ("ResponsiblePerson",), "no ResponsiblePersonRole")
    if not filled(ds, "ResponsiblePerson"):
        _leave_out(ds, ("ResponsiblePersonRole",), "no ResponsiblePerson")
    if filled(ds, "PatientSpeciesDescription") or filled(ds, "PatientSpeciesCodeSequence"):
        _add_empty(ds, ANIMAL_TYPE_2C, "Type 2C for an animal")
    else:
        _leave_out(ds, ANIMAL_ONLY, "an animal's, without a species")

    subject = [k for k in MODULE_KEYWORDS["clinical-trial-subject"] if k in ds]
    if subject:
        if not (filled(ds, "ClinicalTrialSponsorName") and filled(ds, "ClinicalTrialProtocolID")
                and (filled(ds, "ClinicalTrialSubjectID")
                     or filled(ds, "ClinicalTrialSubjectReadingID"))):
            _leave_out(ds, subject, "the Clinical Trial Subject module lacks a Type 1 attribute")
        else:
            _add_empty(ds, ("ClinicalTrialProtocolName", "ClinicalTrialSiteID",
                            "ClinicalTrialSiteName"), "Type 2 of the Clinical Trial Subject module")
            if not filled(ds, "ClinicalTrialProtocolEthicsCommitteeName"):
                _leave_out(ds, ("ClinicalTrialProtocolEthicsCommitteeApprovalNumber",),
                           "no ClinicalTrialProtocolEthicsCommitteeName")
            if "ClinicalTrialProtocolEthicsCommitteeApprovalNumber" not in ds:
                _leave_out(ds, ("ClinicalTrialProtocolEthicsCommitteeName",),
                           "no ClinicalTrialProtocolEthicsCommitteeApprovalNumber")
    if not filled(ds, "LongitudinalTemporalEventType"):
        _leave_out(ds, ("LongitudinalTemporalOffsetFromEvent",), "no LongitudinalTemporalEventType")
    if "LongitudinalTemporalOffsetFromEvent" not in ds:
        _leave_out(ds, ("LongitudinalTemporalEventType",), "no LongitudinalTemporalOffsetFromEvent")
    if any(k in ds for k in MODULE_KEYWORDS["clinical-trial-study"]):
        _add_empty(ds, ("ClinicalTrialTimePointID",), "Type 2 of the Clinical Trial Study module")
