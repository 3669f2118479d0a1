"""The root attributes of PS3.3's Patient, Study and Specimen modules, by module.

Written out from the standard's module tables (DICOM PS3.3, as of 2024), so that the result
builders know which source elements highdicom puts into a new object as they are (its
``copy_patient_and_study_information``) without reading its private tables.
"""

from __future__ import annotations

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
