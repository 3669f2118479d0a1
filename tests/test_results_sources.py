"""Results of real-world sources are valid DICOM, whatever the source got wrong.

Each kind of broken source is built here, from the NEMA CR (``cr_path``, downsampled; its
Pixel Spacing is ``0\\0``) or from a DX made from scratch, gated and loaded as the node loads
it, and scored into an SR, a capture and a parametric map once. Every result must pass
``dciodvfy`` with no error; what was broken must be corrected where it has one reading and
left out (or emptied, where results need it) otherwise; the log names the attribute and
never its value.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import logging
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_tool
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.image import from_dataset, read_dataset
from dicom_io.results import build_results
from dicom_io.results.sanitize import declared_character_set, sanitize
from dicom_io.results.source import checked_pixel_spacing, source_context
from domain import Finding, HeatMap, Prediction, SourceImage
from inference.card import PADCHEST_LABELS

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
KINDS_OF_RESULT = ("sr", "sc", "pm")
LONG_NAME = "Zzyzxwvutsrqponm^Longfamilynamethatgoesonandonandon^Beyond^Sixtyfour^Chars"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Undecoded bytes in an element, as a file with a broken value holds them."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _uids(ds: Dataset, seed: str) -> Dataset:
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sources {seed} sop"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"sources {seed} series"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"sources {seed} study"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _cr(cr_path: Path, seed: str) -> Dataset:
    """The NEMA CR (ISO_IR 100, Pixel Spacing 0\\0), downsampled by 8, with its own UIDs."""
    ds = pydicom.dcmread(cr_path)
    arr = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _uids(ds, seed)


def _dx(seed: str) -> Dataset:
    """A DX for presentation made here, not read from a file: 64 x 64, 12 bits, no
    Specific Character Set."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.PatientName, ds.PatientID, ds.PatientSex = "Synthetic^Patient", "SYN-1", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240102", "101500", "ACC1"
    ds.ViewPosition, ds.BodyPartExamined, ds.Manufacturer = "PA", "CHEST", "Maker"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rows, columns = np.mgrid[0:64, 0:64]
    ds.PixelData = ((rows * 64 + columns) % 4096).astype(np.uint16).tobytes()
    return _uids(ds, seed)


# -- the broken sources: name -> what breaks them ----------------------------------------


def age(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "age")
    _raw(ds, "PatientAge", "AS", b"62")
    return ds


def dates_and_times(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "dates")
    _raw(ds, "StudyDate", "DA", b"2020-01-02")
    _raw(ds, "PatientBirthDate", "DA", b"1962-13-45")
    _raw(ds, "StudyTime", "TM", b"12:30:00")
    _raw(ds, "PatientBirthTime", "TM", b"25:61")
    _raw(ds, "AcquisitionDateTime", "DT", b"2020-01-02T03:04:05")
    return ds


def numbers(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "numbers")
    _raw(ds, "PatientWeight", "DS", b"70,5")
    _raw(ds, "PatientSize", "DS", b"1.75000000000000000001")
    _raw(ds, "InstanceNumber", "IS", b"99999999999 ")
    ds.PregnancyStatus = 7
    return ds


def long_text(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "long")
    _raw(ds, "PatientName", "PN", LONG_NAME.encode())
    _raw(ds, "PatientID", "LO", b"P" * 65 + b" ")
    _raw(ds, "AccessionNumber", "SH", b"A" * 17 + b" ")
    _raw(ds, "StudyDescription", "LO", b"D" * 70)
    _raw(ds, "InstitutionName", "LO", b"I" * 66)
    _raw(ds, "StudyID", "SH", b"S\x01D ")
    _raw(ds, "PatientComments", "LT", b"tab\tinside")
    return ds


def vm(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "vm")
    _raw(ds, "PatientID", "LO", b"ONE\\TWO ")
    _raw(ds, "PatientSex", "CS", b"M\\F ")
    _raw(ds, "PatientOrientation", "CS", b"L\\F\\H ")
    _raw(ds, "PixelSpacing", "DS", b"0.2 ")
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.OtherPatientNames = ["Other^One", "Other^Two"]
    return ds


def wrong_vr(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "vr")
    _raw(ds, "PatientAge", "LO", b"62")
    _raw(ds, "PatientBirthDate", "LO", b"19620102")
    _raw(ds, "PatientSex", "CS", b"m ")
    return ds


def uids_in_sequences(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "uids")
    study = _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1")
    _raw(study, "ReferencedSOPInstanceUID", "UI", b"1.2.abc\x00")
    ds.ReferencedStudySequence = [study]
    ds.ReferencedPatientSequence = [_item(ReferencedSOPInstanceUID="1.2.3.4")]
    ds.OtherPatientIDsSequence = [_item(PatientID="OTHER-1", TypeOfPatientID="TEXT")]
    ds.ProcedureCodeSequence = [_item(CodeValue="399208008")]  # no scheme, no meaning
    ds.RequestingServiceCodeSequence = [
        _item(CodeValue="394591006", CodingSchemeDesignator="SCT", CodeMeaning="Radiology")]
    ds.ReferringPhysicianIdentificationSequence = [_item(InstitutionName="Somewhere")]
    return ds


def identity_vr(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "identity")
    uid = str(ds.StudyInstanceUID)
    _raw(ds, "StudyInstanceUID", "LO", (uid + " " * (len(uid) % 2)).encode())
    return ds


def conditions(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "conditions")
    ds.PatientIdentityRemoved = "YES"  # without a method
    ds.SmokingStatus = "SOMETIMES"
    ds.QualityControlSubject = "MAYBE"
    ds.ResponsiblePersonRole = "OWNER"  # without a person
    ds.PatientBirthDateInAlternativeCalendar = "1390"  # without a calendar
    ds.ClinicalTrialSponsorName = "Sponsor"  # Type 1 protocol ID, subject ID missing
    ds.LongitudinalTemporalEventType = "BASELINE"  # without an offset
    ds.ClinicalTrialTimePointDescription = "visit 1"
    ds.ContainerIdentifier = "C-1"  # a specimen, in a radiograph
    ds.IssuerOfAccessionNumberSequence = [_item(LocalNamespaceEntityID="RIS",
                                                UniversalEntityIDType="ISO")]
    return ds


def animal(cr_path: Path) -> Dataset:
    ds = _cr(cr_path, "animal")
    ds.PatientSpeciesDescription = "Canis lupus familiaris"
    ds.ResponsiblePerson = "Owner^Olga"  # without a role
    return ds


def no_character_set(cr_path: Path) -> Dataset:
    ds = _dx("no-charset")
    _raw(ds, "PatientName", "PN", b"M\xfcller^Hans ")
    _raw(ds, "InstitutionName", "LO", b"Klinik M\xfcnchen ")
    _raw(ds, "ReferringPhysicianName", "PN", b"Ward^A ")
    return ds


def extension_character_set(cr_path: Path) -> Dataset:
    ds = _dx("iso2022")
    ds.SpecificCharacterSet = "ISO 2022 IR 100"  # alone: ISO_IR 100 (highdicom refuses it)
    _raw(ds, "PatientName", "PN", b"M\xfcller^Hans ")
    return ds


def unknown_character_set(cr_path: Path) -> Dataset:
    ds = _dx("latin1")
    ds.SpecificCharacterSet = "LATIN1"
    _raw(ds, "PatientName", "PN", b"M\xfcller^Hans ")
    _raw(ds, "PatientID", "LO", b"ID-7 ")
    return ds


def japanese(cr_path: Path) -> Dataset:
    ds = _dx("japanese")
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # first value empty: highdicom refuses
    ds.PatientName = JAPANESE_NAME
    return ds


def gb18030(cr_path: Path) -> Dataset:
    ds = _dx("gb18030")
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName = "Wang^XiaoDong=王^小东"
    ds.InstitutionName = "医院閈"  # 閈 is E9 5C: a backslash byte, a second value to readers
    return ds


def synthetic_dx(cr_path: Path) -> Dataset:
    ds = _dx("synthetic")
    _raw(ds, "ImagerPixelSpacing", "DS", b"-0.1\\0.1 ")
    _raw(ds, "PatientAge", "AS", b"7M")
    _raw(ds, "StudyDate", "DA", b"2021.03.04")
    _raw(ds, "PatientSex", "CS", b"MALE")
    _raw(ds, "Manufacturer", "LO", b"Maker\x00")
    return ds


SOURCES: dict[str, Callable[[Path], Dataset]] = {
    "nema-cr": lambda cr_path: _cr(cr_path, "nema"),
    "age": age, "dates-and-times": dates_and_times, "numbers": numbers,
    "long-text": long_text, "vm": vm, "wrong-vr": wrong_vr,
    "uids-in-sequences": uids_in_sequences, "identity-vr": identity_vr,
    "conditions": conditions, "animal": animal,
    "no-character-set": no_character_set, "extension-character-set": extension_character_set,
    "unknown-character-set": unknown_character_set, "japanese": japanese,
    "gb18030": gb18030, "synthetic-dx": synthetic_dx,
}


def _load(ds: Dataset, name: str) -> SourceImage:
    """The source as the node gets it: written as a broken sender writes it, gated, decoded."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return from_dataset(read_dataset(buffer.getvalue()), f"{name}.dcm")


def _prediction() -> Prediction:
    rng = np.random.default_rng(0)
    return Prediction(tuple(
        Finding(label, float(p), 0.5) for label, p in zip(PADCHEST_LABELS, rng.random(26),
                                                          strict=True)))


def _heat_map(image: SourceImage) -> HeatMap:
    rows, columns = np.mgrid[0:image.rows, 0:image.columns]
    d2 = (rows - image.rows / 3) ** 2 + (columns - image.columns / 2) ** 2
    return HeatMap(np.exp(-d2 / (2 * (image.rows / 8) ** 2)).astype(np.float32),
                   "Cardiomegaly", "gradcam")


def _build(image: SourceImage, model) -> object:
    return build_results(image, _prediction(), model, _heat_map(image), parametric_map=True,
                         timestamp=WHEN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pydicom warns of the broken values it reads: expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def sources(cr_path: Path) -> dict[str, SourceImage]:
    with _quiet():
        return {name: _load(make(cr_path), name) for name, make in SOURCES.items()}


@pytest.fixture(scope="module")
def results(sources: dict[str, SourceImage], loaded_model,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Dataset]]:
    """``kind of source -> {sr, sc, pm: the written object, read back}``."""
    out = {}
    for name, image in sources.items():
        with _quiet():  # pydicom warns of the unknown character set again
            rs = _build(image, loaded_model)
        paths = rs.write(tmp_path_factory.mktemp(name))
        assert set(paths) == set(KINDS_OF_RESULT), name
        out[name] = {kind: pydicom.dcmread(path) for kind, path in paths.items()}
        out[name]["paths"] = paths
    return out


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                          errors="replace", timeout=60)  # it quotes values in their own bytes
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("kind", KINDS_OF_RESULT)
@pytest.mark.parametrize("name", list(SOURCES))
def test_every_result_of_every_source_passes_dciodvfy(results: dict, name: str, kind: str
                                                      ) -> None:
    errors = _dciodvfy_errors(results[name]["paths"][kind])
    assert not errors, "\n".join(errors)


def _each(results: dict, name: str):
    return [results[name][kind] for kind in KINDS_OF_RESULT]


def test_age_62_becomes_062y(sources: dict, results: dict) -> None:
    assert sources["age"].header.PatientAge == "62"
    for name in ("age", "wrong-vr"):
        for ds in _each(results, name):
            assert ds.PatientAge == "062Y" and ds["PatientAge"].VR == "AS", name
    for ds in _each(results, "synthetic-dx"):
        assert ds.PatientAge == "007M"


def test_dates_and_times_are_corrected_or_emptied(results: dict) -> None:
    for ds in _each(results, "dates-and-times"):
        assert ds.StudyDate == "20200102" and ds.StudyTime == "123000"
        assert "PatientBirthDate" in ds and not ds.PatientBirthDate  # Type 2: emptied
        assert "PatientBirthTime" not in ds
        for item in ds.ContributingEquipmentSequence:  # the source's acquisition equipment
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109101":
                assert item.ContributionDateTime == "20200102030405"
    sr = results["dates-and-times"]["sr"]
    assert any(item.get("ContributionDateTime") == "20200102030405"
               for item in sr.ContributingEquipmentSequence)
    for ds in _each(results, "synthetic-dx"):
        assert ds.StudyDate == "20210304"
        assert ds.PatientSex == ""  # MALE: not one of M, F, O
    equipment = results["synthetic-dx"]["sr"].ContributingEquipmentSequence
    assert "Maker" in [item.Manufacturer for item in equipment]  # NUL padding removed


def test_numbers_are_corrected_or_left_out(results: dict) -> None:
    for ds in _each(results, "numbers"):
        assert "PatientWeight" not in ds and "PregnancyStatus" not in ds
        assert ds["PatientSize"].value == pytest.approx(1.75)
        assert len(str(ds["PatientSize"].value)) <= 16
        assert 1 <= ds.InstanceNumber <= 2**31 - 1


def test_text_is_never_cut_but_left_out(results: dict) -> None:
    for ds in _each(results, "long-text"):
        for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyID"):
            assert keyword in ds and not ds[keyword].value, keyword  # Type 2: emptied
        for keyword in ("StudyDescription", "PatientComments"):
            assert keyword not in ds, keyword
        for item in ds.ContributingEquipmentSequence:
            assert "IIII" not in str(item.get("InstitutionName", ""))


def test_wrong_value_multiplicity_is_left_out(results: dict, sources: dict) -> None:
    for ds in _each(results, "vm"):
        assert ds.PatientID == "" and ds.PatientSex == ""
        assert [str(n) for n in ds.OtherPatientNames] == ["Other^One", "Other^Two"]
    assert source_context(sources["vm"]).patient_orientation is None
    assert not results["vm"]["sc"].get("PatientOrientation")


def test_code_strings_are_upper_cased(results: dict) -> None:
    for ds in _each(results, "wrong-vr"):
        assert ds.PatientSex == "M" and ds.PatientBirthDate == "19620102"
        assert ds["PatientBirthDate"].VR == "DA"


def test_sequences_with_a_bad_item_are_left_out(results: dict) -> None:
    for ds in _each(results, "uids-in-sequences"):
        for keyword in ("ReferencedStudySequence", "ReferencedPatientSequence",
                        "ProcedureCodeSequence", "ReferringPhysicianIdentificationSequence"):
            assert keyword not in ds, keyword
        assert ds.OtherPatientIDsSequence[0].PatientID == "OTHER-1"
        assert ds.RequestingServiceCodeSequence[0].CodeValue == "394591006"


def test_identity_uids_are_written_as_ui(results: dict, sources: dict) -> None:
    assert sources["identity-vr"].header["StudyInstanceUID"].VR == "LO"
    for ds in _each(results, "identity-vr"):
        assert ds["StudyInstanceUID"].VR == "UI"
        assert ds.StudyInstanceUID == sources["identity-vr"].study_uid


def test_module_conditions_are_kept(results: dict) -> None:
    for ds in _each(results, "conditions"):
        for keyword in ("PatientIdentityRemoved", "SmokingStatus", "QualityControlSubject",
                        "ResponsiblePersonRole", "PatientBirthDateInAlternativeCalendar",
                        "ClinicalTrialSponsorName", "LongitudinalTemporalEventType",
                        "ContainerIdentifier", "IssuerOfAccessionNumberSequence"):
            assert keyword not in ds, keyword
        assert ds.ClinicalTrialTimePointDescription == "visit 1"
        assert "ClinicalTrialTimePointID" in ds  # Type 2 of the module it now has
    for ds in _each(results, "animal"):
        assert ds.PatientSpeciesDescription == "Canis lupus familiaris"
        assert "ResponsiblePerson" in ds and not ds.ResponsiblePerson  # no role: emptied
        for keyword in ("PatientBreedDescription", "PatientBreedCodeSequence",
                        "BreedRegistrationSequence", "ResponsibleOrganization"):
            assert keyword in ds, keyword


def test_non_ascii_text_needs_a_character_set(results: dict, sources: dict) -> None:
    header = sources["no-character-set"].header
    assert "SpecificCharacterSet" not in header and not str(header.PatientName).isascii()
    for ds in _each(results, "no-character-set"):
        assert "SpecificCharacterSet" not in ds
        assert ds.PatientName == "" and ds.ReferringPhysicianName == "Ward^A"
        for item in ds.ContributingEquipmentSequence:
            assert "InstitutionName" not in item or str(item.InstitutionName).isascii()
    for ds in _each(results, "extension-character-set"):
        assert ds.SpecificCharacterSet == "ISO_IR 100" and ds.PatientName == "Müller^Hans"
    for ds in _each(results, "unknown-character-set"):
        assert "SpecificCharacterSet" not in ds
        assert ds.PatientName == "" and ds.PatientID == "ID-7"
    for ds in _each(results, "japanese"):
        assert ds.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
        assert ds.PatientName == JAPANESE_NAME
    for ds in _each(results, "gb18030"):
        assert ds.SpecificCharacterSet == "GB18030" and ds.PatientName == "Wang^XiaoDong=王^小东"
        for item in ds.ContributingEquipmentSequence:
            assert "InstitutionName" not in item or item.InstitutionName != "医院閈"
    for name in ("gb18030", "no-character-set"):
        assert "InstitutionName" not in source_context(sources[name]).reference, name


def test_invalid_pixel_spacing_is_none_and_never_copied(sources: dict, results: dict) -> None:
    assert [float(v) for v in sources["nema-cr"].header.PixelSpacing] == [0.0, 0.0]
    assert source_context(sources["nema-cr"]).pixel_spacing is None
    assert source_context(sources["synthetic-dx"]).pixel_spacing is None  # negative
    assert source_context(sources["vm"]).pixel_spacing == (0.15, 0.15)  # one value: Imager
    for name in ("nema-cr", "synthetic-dx"):
        sc, pm = results[name]["sc"], results[name]["pm"]
        assert "PixelSpacing" not in sc, name
        measures = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert "PixelSpacing" not in measures, name
    assert [float(v) for v in results["vm"]["sc"].PixelSpacing] == [0.15, 0.15]


def _header(**values: bytes) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        _raw(ds, keyword, "DS", value)
    return ds


@pytest.mark.parametrize(("values", "expected"), [
    ({"PixelSpacing": b"0\\0 "}, None),
    ({"PixelSpacing": b"-0.1\\0.1 "}, None),
    ({"PixelSpacing": b"abc\\0.1 "}, None),
    ({"PixelSpacing": b"0.2 "}, None),
    ({"PixelSpacing": b"0.1\\0.1\\0.1 "}, None),
    ({"PixelSpacing": b"nan\\0.1 "}, None),
    ({}, None),
    ({"PixelSpacing": b"0.2\\0.25"}, (0.2, 0.25)),
    ({"PixelSpacing": b" 0.14300000000000001\\0.143 "}, (0.143, 0.143)),
    ({"PixelSpacing": b"0\\0 ", "ImagerPixelSpacing": b"0.15\\0.16"}, (0.15, 0.16)),
    ({"PixelSpacing": b"0.1\\0.1 ", "ImagerPixelSpacing": b"0.15\\0.16"}, (0.1, 0.1)),
])
def test_pixel_spacing_is_two_positive_numbers(values: dict, expected) -> None:
    assert checked_pixel_spacing(_header(**values)) == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([], None),
    (["ISO_IR 100"], "ISO_IR 100"),
    (["ISO_IR 192"], "ISO_IR 192"),
    (["ISO 2022 IR 100"], "ISO_IR 100"),
    (["ISO_IR 6"], None),
    (["ISO 2022 IR 6"], None),
    (["LATIN1"], None),
    (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    (["ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    (["ISO 2022 IR 6", "ISO 2022 IR 100"], ["ISO 2022 IR 6", "ISO 2022 IR 100"]),
    (["ISO-IR 100"], "ISO_IR 100"),  # pydicom decodes it as ISO_IR 100
    (["ISO_IR 100", "ISO_IR 192"], "ISO_IR 100"),  # pydicom decodes with the first alone
])
def test_declared_character_set_is_what_highdicom_takes(values: list, expected) -> None:
    with _quiet():  # pydicom warns of the non-standard terms
        assert declared_character_set(values)[0] == expected


def test_valid_values_are_left_as_they_are(cr_path: Path) -> None:
    """A conformant header (the CR's patient and study, set right here) comes out equal."""
    ds = pydicom.dcmread(cr_path, stop_before_pixels=True)
    ds.PatientAge, ds.PatientWeight, ds.OtherPatientIDsSequence = "062Y", 70.5, [
        _item(PatientID="X-1", TypeOfPatientID="RFID")]
    header = Dataset()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
                    "PatientSex", "PatientAge", "PatientWeight", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "OtherPatientIDsSequence",
                    "Manufacturer", "InstitutionName", "StationName", "SoftwareVersions"):
        if keyword in ds:
            header[keyword] = ds[keyword]
    assert len(header) == 16
    expected = copy.deepcopy(header)
    assert sanitize(header) == expected


def test_the_log_names_attributes_never_values(cr_path: Path, loaded_model,
                                               caplog: pytest.LogCaptureFixture) -> None:
    ds = _cr(cr_path, "log")
    _raw(ds, "PatientAge", "AS", b"62")
    _raw(ds, "PatientName", "PN", LONG_NAME.encode())
    _raw(ds, "StudyDate", "DA", b"1999-12-31")
    _raw(ds, "PatientWeight", "DS", b"81,25")
    with _quiet():
        image = _load(ds, "log")
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        rs = _build(image, loaded_model)
    assert rs.sr.PatientAge == "062Y"
    ours = [r for r in caplog.records if r.name.startswith("dicom_io")]
    text = "\n".join(r.getMessage() for r in ours)
    for keyword in ("PatientAge", "PatientName", "StudyDate", "PatientWeight", "PixelSpacing"):
        assert keyword in text, keyword
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for value in ("62", "Zzyzx", "Longfamilyname", "1999", "81,25", "81.25"):
        assert value not in text, value
    for value in ("Zzyzx", "Longfamilyname", "1999-12-31", "81,25"):
        assert value not in everything, value


def test_a_one_part_patient_name_reaches_no_log(cr_path: Path, loaded_model,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """highdicom logs a Patient's Name without "^" as potentially invalid, quoting it; the
    results still carry the name, and no log line does."""
    ds = _cr(cr_path, "one-part name")
    ds.PatientName = "Phionasentinel"
    with _quiet():
        image = _load(ds, "one-part-name")
    with caplog.at_level(logging.DEBUG):
        rs = _build(image, loaded_model)
    assert "Phionasentinel" not in caplog.text
    assert {kind: str(obj.PatientName) for kind, obj in rs.items()} == dict.fromkeys(
        KINDS_OF_RESULT, "Phionasentinel")
