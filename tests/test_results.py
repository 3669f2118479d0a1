"""Results as standard DICOM: TID 1500 SR, heat-map secondary capture, parametric map.

Sources: the NEMA CR (MONOCHROME1, invalid Pixel Spacing), a DX made from its pixels
(MONOCHROME2, Imager Pixel Spacing, a frame of reference, signed heat map), a sparse CR
(MONOCHROME1, optional attributes removed) and a one-frame grayscale Secondary Capture of it
(a multi-frame IOD). Heat maps are Gaussian blobs built here.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import subprocess
import types
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import require_tool
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import dicom_io
from dicom_io.errors import DeclinedError, ResultBuildError
from dicom_io.gate import check_acceptable, is_own_result
from dicom_io.results import (
    FINDING_CODES,
    PRIVATE_SCHEME,
    ResultBuilder,
    build_results,
    builder_for,
    device_uid,
    finding_code,
    instance_uid,
    series_uid,
)
from dicom_io.results import codes as rcodes
from dicom_io.results._common import node_version
from dicom_io.results.source import source_context
from dicom_io.uids import NODE_MANUFACTURER
from domain import FILE_NAMES, Finding, HeatMap, Prediction, Region, ResultSet, SourceImage
from explain.regions import region_of
from inference.card import PADCHEST_LABELS

T1 = datetime.datetime(2024, 5, 6, 7, 8, 9)
T2 = datetime.datetime(2025, 1, 2, 3, 4, 5)
PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
#: Elements that carry the build time and may differ between two builds.
TIME_KEYWORDS = frozenset({
    "InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime",
    "SeriesDate", "SeriesTime", "DateOfSecondaryCapture", "TimeOfSecondaryCapture",
    "ContributionDateTime",
})  # fmt: skip


def gaussian(shape: tuple[int, int], centre: tuple[int, int], sigma: float) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    d2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    return np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)


def hot_spot(image: SourceImage) -> tuple[int, int]:
    """A spot off centre and off the diagonal: a transposed or flipped map misses it."""
    return int(image.rows * 0.25), int(image.columns * 0.7)


def heat_map(image: SourceImage, signed: bool = False, **kw) -> HeatMap:
    values = gaussian((image.rows, image.columns), hot_spot(image), sigma=image.rows / 40)
    if signed:  # a negative blob mirrored left-right as well
        r, c = hot_spot(image)
        values -= gaussian((image.rows, image.columns), (r, image.columns - c), image.rows / 40)
    return HeatMap(values, "Cardiomegaly", "gradcam", signed=signed, **kw)


def prediction(seed: int = 0) -> Prediction:
    rng = np.random.default_rng(seed)
    return Prediction(tuple(
        Finding(label, float(p), float(t))
        for label, p, t in zip(PADCHEST_LABELS, rng.random(26), rng.uniform(0.2, 0.8, 26),
                               strict=True)
    ))


def _half_size(ds: Dataset, photometric: str) -> np.ndarray:
    arr = ds.pixel_array[::2, ::2]
    if photometric != ds.PhotometricInterpretation:
        arr = (2**ds.BitsStored - 1) - arr
    return np.ascontiguousarray(arr.astype(np.uint16))


def _save(ds: Dataset, arr: np.ndarray, path: Path) -> Path:
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def sources(cr_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``name -> SourceImage`` of the three inputs."""
    folder = tmp_path_factory.mktemp("sources")
    dx = pydicom.dcmread(cr_path)
    arr = _half_size(dx, "MONOCHROME2")
    dx.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    dx.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node test dx instance"])
    dx.SeriesInstanceUID = generate_uid(entropy_srcs=["cxr-node test dx series"])
    dx.FrameOfReferenceUID = generate_uid(entropy_srcs=["cxr-node test dx frame"])
    dx.Modality = "DX"
    dx.PresentationIntentType = "FOR PRESENTATION"
    dx.PhotometricInterpretation = "MONOCHROME2"
    dx.ImagerPixelSpacing = [0.2, 0.25]
    del dx.PixelSpacing
    dx.PatientOrientation = ["R", "F"]
    dx.ViewPosition = "AP"
    dx.InstanceNumber = 7
    dx_path = _save(dx, arr, folder / "dx.dcm")

    sparse = pydicom.dcmread(cr_path)
    arr = _half_size(sparse, "MONOCHROME1")
    sparse.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node test sparse instance"])
    for keyword in (
        "PatientBirthDate", "AccessionNumber", "PixelSpacing", "PatientOrientation",
        "BodyPartExamined", "ReferringPhysicianName", "Manufacturer", "InstanceNumber",
        "StudyID", "PatientSex", "StudyTime", "ViewPosition",
    ):
        if keyword in sparse:
            delattr(sparse, keyword)
    sparse_path = _save(sparse, arr, folder / "sparse.dcm")

    mfsc = pydicom.dcmread(cr_path)  # one-frame grayscale SC of a CR: a multi-frame IOD
    arr = _half_size(mfsc, "MONOCHROME2")
    mfsc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    mfsc.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node test mfsc instance"])
    mfsc.PhotometricInterpretation = "MONOCHROME2"
    mfsc.NumberOfFrames = 1
    mfsc.PixelSpacing = [0.3, 0.3]
    mfsc_path = _save(mfsc, arr, folder / "mfsc.dcm")
    return {
        "cr": dicom_io.load(cr_path),
        "dx": dicom_io.load(dx_path),
        "sparse": dicom_io.load(sparse_path),
        "mfsc": dicom_io.load(mfsc_path),
    }


@pytest.fixture(scope="module")
def builder(loaded_model) -> ResultBuilder:
    """With the parametric map, which is off by default, so that it is checked too."""
    return ResultBuilder(loaded_model, parametric_map=True)


def region(heatmap: HeatMap, pred: Prediction) -> Region:
    finding = next(f for f in pred.findings if f.label == heatmap.label)
    return region_of(heatmap, finding.probability, finding.threshold)


@pytest.fixture(scope="module")
def results(sources: dict, builder: ResultBuilder, tmp_path_factory) -> dict:
    """``name -> (ResultSet, {kind: path})``, the DX one with a signed heat map; the heat
    map's finding outlined."""
    out = {}
    for name, image in sources.items():
        heatmap = heat_map(image, signed=name == "dx")
        rs = builder.build(image, prediction(), heatmap,
                           regions=[region(heatmap, prediction())], timestamp=T1)
        out[name] = (rs, rs.write(tmp_path_factory.mktemp(name)))
    return out


NAMES = ("cr", "dx", "sparse", "mfsc")
CASES = [(name, kind) for name in NAMES for kind in ("sr", "sc", "pm")]


# -- the reference tools --

@pytest.mark.parametrize(("name", "kind"), CASES)
def test_dciodvfy_reports_no_errors(results: dict, name: str, kind: str) -> None:
    tool = require_tool("dciodvfy")
    path = results[name][1][kind]
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)


def test_with_no_positive_finding_the_sr_says_so_and_has_no_region(
    sources: dict, builder: ResultBuilder, tmp_path: Path
) -> None:
    image = sources["cr"]
    negative = Prediction(tuple(Finding(label, 0.01, 0.5) for label in PADCHEST_LABELS))
    rs = builder.build(image, negative, heat_map(image), timestamp=T1)
    path = rs.write(tmp_path)["sr"]
    sr = hd.sr.srread(path)
    concepts = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.ContentSequence]
    assert "126010" not in concepts  # no Imaging Measurements container, no region
    assert set(findings_without_region(sr)) == set(PADCHEST_LABELS)
    texts = [item.TextValue for item in _walk(sr) if item.get("ValueType") == "TEXT"]
    assert "No finding is above its threshold" in texts
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True,
                          text=True, timeout=60)
    assert not [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith("Error")], proc.stderr


@pytest.mark.parametrize("name", NAMES)
def test_dsrdump_parses_the_sr(results: dict, name: str) -> None:
    tool = require_tool("dsrdump")
    proc = subprocess.run([tool, str(results[name][1]["sr"])], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "E:" not in proc.stderr and "W:" not in proc.stderr, proc.stderr
    assert "Imaging Measurement Report" in proc.stdout
    assert "Cardiomegaly" in proc.stdout


def test_written_files_are_the_three_names(results: dict) -> None:
    paths = results["cr"][1]
    assert {p.name for p in paths.values()} == {"sr.dcm", "heatmap_sc.dcm", "heatmap_pm.dcm"}
    assert FILE_NAMES == {"sr": "sr.dcm", "sc": "heatmap_sc.dcm", "pm": "heatmap_pm.dcm"}


# -- the SR's content --

def findings_without_region(sr: Dataset) -> dict[str, Dataset]:
    """The SR's CODE items of findings in Qualitative Evaluations, by label."""
    labels = {finding_code(label).value: label for label in PADCHEST_LABELS}
    [evaluations] = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0]
                     .CodeValue == rcodes.QUALITATIVE_EVALUATIONS.value]
    return {labels[item.ConceptNameCodeSequence[0].CodeValue]: item
            for item in evaluations.ContentSequence if item.ValueType == "CODE"}


@pytest.mark.parametrize("name", ["cr", "dx"])
def test_sr_reads_back_every_probability_and_the_source(
    results: dict, sources: dict, loaded_model, name: str
) -> None:
    image = sources[name]
    sr = hd.sr.srread(results[name][1]["sr"])
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.content.get_image_measurement_groups() == []  # OHIF fails on them
    [outlined] = sr.content.get_planar_roi_measurement_groups()
    expected = {f.label: f for f in prediction().findings}
    assert outlined.tracking_identifier == "Cardiomegaly"
    plain = findings_without_region(sr)
    assert set(plain) == set(expected) - {"Cardiomegaly"}
    for label, item in plain.items():
        finding = expected[label]
        present = rcodes.PRESENT if finding.positive else rcodes.ABSENT
        assert item.ConceptCodeSequence[0].CodeValue == present.value
        values = {num.ConceptNameCodeSequence[0].CodeValue:
                  float(num.MeasuredValueSequence[0].NumericValue) for num in item.ContentSequence}
        assert values == pytest.approx({rcodes.PROBABILITY.value: finding.probability,
                                        rcodes.THRESHOLD.value: finding.threshold}, abs=1e-6)
        assert {num.RelationshipType for num in item.ContentSequence} == {"HAS PROPERTIES"}
    finding = expected["Cardiomegaly"]
    # What a viewer prints from the NUM items: "Cardiomegaly probability: 43.21 %".
    [probability] = outlined.get_measurements(name=rcodes.probability_of("Cardiomegaly"))
    assert probability.name.meaning == "Cardiomegaly probability"
    assert probability.value == pytest.approx(100 * finding.probability, abs=1e-3)
    assert probability.unit == rcodes.UNIT_PERCENT and probability.unit.value == "%"
    [threshold] = outlined.get_measurements(name=rcodes.threshold_of("Cardiomegaly"))
    assert threshold.value == pytest.approx(100 * finding.threshold, abs=1e-3)
    region = outlined.roi
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = region.value
    assert np.array_equal(points[0], points[-1]) and 5 <= len(points) <= 40
    r, c = hot_spot(image)
    assert Region("x", 0.5, 0.5, points, 0.5).contains(r + 0.5, c + 0.5)
    [selected_from] = region.ContentSequence[0].ReferencedSOPSequence
    assert selected_from.ReferencedSOPInstanceUID == image.sop_uid
    assert (image.study_uid, image.series_uid, image.sop_uid, image.sop_class_uid) in [
        tuple(str(u) for u in e) for e in sr.get_evidence()
    ]
    [observer] = [
        item for item in sr.content.get_observer_contexts()
        if item.observer_type == rcodes.DEVICE_OBSERVER
    ]
    attributes = observer.observer_identifying_attributes
    assert attributes.uid == device_uid(loaded_model.sha256)
    assert attributes.name == loaded_model.card.name
    schemes = [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence]
    assert PRIVATE_SCHEME in schemes


def test_sr_states_intended_use_and_heat_map(results: dict, loaded_model) -> None:
    ds = pydicom.dcmread(results["cr"][1]["sr"])
    texts = _text_items(ds)
    assert texts[rcodes.INTENDED_USE.value] == loaded_model.card.intended_use
    assert "gradcam heat map for Cardiomegaly" in texts[rcodes.HEAT_MAP.value]


def _text_items(ds: Dataset) -> dict[str, str]:
    out = {}
    for item in _walk(ds):
        if item.get("ValueType") == "TEXT":
            out[item.ConceptNameCodeSequence[0].CodeValue] = item.TextValue
    return out


def _walk(ds: Dataset):
    yield ds
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def test_contributing_equipment_names_the_model(results: dict, loaded_model) -> None:
    for kind, ds in results["cr"][0].items():
        [item] = [i for i in ds.ContributingEquipmentSequence
                  if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
                  and i.Manufacturer == loaded_model.card.manufacturer]
        assert item.ManufacturerModelName == loaded_model.card.name, kind
        assert item.DeviceUID == device_uid(loaded_model.sha256)
        assert item.DeviceSerialNumber == loaded_model.sha256
        assert f"{loaded_model.card.name} {loaded_model.card.version}" in item.SoftwareVersions


# -- every object: study, patient, equipment, series --

@pytest.mark.parametrize(("name", "kind"), CASES)
def test_results_join_the_source_study_in_their_own_series(
    results: dict, sources: dict, loaded_model, name: str, kind: str
) -> None:
    image = sources[name]
    ds = pydicom.dcmread(results[name][1][kind])
    assert ds.StudyInstanceUID == image.study_uid
    assert ds.SeriesInstanceUID != image.series_uid
    for keyword in PATIENT_STUDY:
        assert keyword in ds, keyword
        assert str(ds.get(keyword) or "") == str(image.header.get(keyword) or ""), keyword
    assert ds.Manufacturer == NODE_MANUFACTURER
    assert ds.ManufacturerModelName == loaded_model.card.name
    assert f"{NODE_MANUFACTURER} {node_version()}" in ds.SoftwareVersions
    assert any(loaded_model.card.version in v for v in ds.SoftwareVersions)
    assert ds.DeviceSerialNumber == loaded_model.sha256
    assert ds.DeviceUID == device_uid(loaded_model.sha256)
    assert ds.ContentDate == "20240506" and ds.ContentTime == "070809"
    assert "not for diagnostic use" in ds.SeriesDescription
    assert ds.SeriesNumber == {"sr": 9001, "sc": 9002, "pm": 9003}[kind]
    assert ds.SOPInstanceUID == instance_uid(kind, image.sop_uid, loaded_model.sha256)
    assert ds.SeriesInstanceUID == series_uid(kind, image.series_uid, loaded_model.sha256)
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.SeriesInstanceUID.startswith("2.25.")
    assert is_own_result(ds)
    with pytest.raises(DeclinedError) as e:
        check_acceptable(ds)
    assert e.value.code == "own-result"


# -- heat map geometry --

@pytest.mark.parametrize("name", NAMES)
def test_capture_and_map_lie_on_the_source_grid_with_the_hot_spot(
    results: dict, sources: dict, name: str
) -> None:
    image = sources[name]
    r, c = hot_spot(image)
    paths = results[name][1]
    sc, pm = pydicom.dcmread(paths["sc"]), pydicom.dcmread(paths["pm"])
    assert (pm.Rows, pm.Columns) == (image.rows, image.columns)
    assert sc.Columns == image.columns and sc.Rows > image.rows  # the legend band below
    pm_spacing = pm.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].get(
        "PixelSpacing"
    )
    spacing = source_context(image).pixel_spacing  # checked: tests/test_results_sources.py
    if spacing is None:
        assert "PixelSpacing" not in sc and pm_spacing is None
    else:
        assert [float(v) for v in sc.PixelSpacing] == pytest.approx(spacing)
        assert [float(v) for v in pm_spacing] == pytest.approx(spacing)

    values = pm.pixel_array
    assert values.dtype == np.float32
    assert np.unravel_index(int(np.argmax(values)), values.shape) == (r, c)
    assert values[r, c] == pytest.approx(1.0, abs=1e-6)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    low = -1.0 if name == "dx" else 0.0
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == low
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == 1.0

    rgb = sc.pixel_array.astype(int)
    # JPEG baseline (the default): colour as YBR_FULL_422; the legend is burnt in.
    assert sc.PhotometricInterpretation == "YBR_FULL_422" and sc.BurnedInAnnotation == "YES"
    hot = rgb[r, c]
    assert hot[0] - hot[2] > 60, hot  # red where the map is 1
    far = rgb[image.rows - 5, 5]
    assert far.max() - far.min() <= 6  # the source, grey, where the map is 0 (JPEG noise)
    gray = np.rint(image.pixels[image.rows - 5, 5] * 255.0 / image.maxval)
    assert abs(far.mean() - gray) <= 6
    if name == "dx":  # the negative blob is blue
        neg = rgb[r, image.columns - c]
        assert neg[2] - neg[0] > 60, neg


def test_building_leaves_the_source_alone(cr_path: Path, builder: ResultBuilder) -> None:
    image = dicom_io.load(cr_path)
    header, pixels = copy.deepcopy(image.header), image.pixels.copy()
    rs = builder.build(image, prediction(), heat_map(image), timestamp=T1)
    assert image.header == header and image.header.PixelSpacing == [0, 0]
    assert np.array_equal(image.pixels, pixels)
    rs.sr.PatientName = "Changed^Here"  # results share no elements with each other
    assert rs.sc.PatientName == rs.pm.PatientName == image.header.PatientName


def _rich_source(cr_path: Path, folder: Path) -> SourceImage:
    """The CR with more of what highdicom copies whole (patient and study sequences, a
    clinical trial attribute) and lossy compression details."""
    ds = pydicom.dcmread(cr_path)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["cxr-node test rich instance"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    other, study = Dataset(), Dataset()
    other.PatientID, other.TypeOfPatientID = "OTHER-1", "TEXT"
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=["cxr-node test rich study"])
    ds.OtherPatientIDsSequence, ds.ReferencedStudySequence = [other], [study]
    ds.PatientAge, ds.ClinicalTrialSponsorName = "062Y", "Sponsor"
    ds.LossyImageCompression, ds.LossyImageCompressionRatio = "01", [10, 12.5]
    ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_10918_1"]
    ds.save_as(folder / "rich.dcm", enforce_file_format=True)
    return dicom_io.load(folder / "rich.dcm")


def _ids(ds: Dataset, out: dict | None = None) -> dict[int, str]:
    """``id -> keyword`` of every element, item and multi-value in ``ds``, all levels (raw
    elements, such as the SR's stencil-encoded content, are left raw)."""
    out = {} if out is None else out
    for tag in ds.keys():  # noqa: SIM118 (a Dataset iterates its elements, converting them)
        elem = ds.get_item(tag)
        if not isinstance(elem, pydicom.DataElement):
            continue
        out[id(elem)] = elem.keyword
        if elem.VR == "SQ":
            for item in elem.value:
                out[id(item)] = f"{elem.keyword} item"
                _ids(item, out)
        elif isinstance(elem.value, pydicom.multival.MultiValue):
            out[id(elem.value)] = f"{elem.keyword} value"
    return out


def test_one_source_context_and_header_copy_per_image(
    monkeypatch: pytest.MonkeyPatch, cr_path: Path, tmp_path: Path, builder: ResultBuilder
) -> None:
    """SR, capture and map of one image share one source context: the header trimmed and
    copied once, the findings checked once; each object has its own copy only of the few
    elements highdicom puts into it whole, and nothing of the source or of another object."""
    from dicom_io.results import builder as builder_module
    from dicom_io.results import source as source_module
    from dicom_io.results import sr as sr_module

    image = _rich_source(cr_path, tmp_path)
    header = copy.deepcopy(image.header)
    copied, contexts, snapshots, checked = [], [], [], []
    finding_values = sr_module.finding_values

    def counted_deepcopy(value, memo=None):
        copied.append(value)
        return copy.deepcopy(value, memo)

    def context(img):
        contexts.append(source_module.source_context(img))
        snapshots.append(copy.deepcopy(contexts[-1].reference))
        return contexts[-1]

    def findings(pred):
        checked.append(pred)
        return finding_values(pred)

    monkeypatch.setattr(source_module, "copy", types.SimpleNamespace(deepcopy=counted_deepcopy))
    monkeypatch.setattr(builder_module, "source_context", context)
    monkeypatch.setattr(builder_module, "finding_values", findings)
    monkeypatch.setattr(sr_module, "finding_values", findings)
    rs = builder.build(image, prediction(), heat_map(image), timestamp=T1)

    assert len(contexts) == len(checked) == 1
    [reference] = contexts
    datasets = [value for value in copied if isinstance(value, Dataset)]
    assert len(datasets) == 1 and len(datasets[0]) < len(image.header) / 2  # trimmed, once
    taken = source_module.taken_tags()
    elements = [value for value in copied if not isinstance(value, Dataset)]
    assert {elem.tag for elem in elements} <= taken
    # each result's own copy of those elements, and of the Patient's Name once more (its
    # constructor got a placeholder: see SourceContext.for_result)
    expected = 3 * sum(tag in taken for tag in reference.reference.keys())  # noqa: SIM118
    assert len(elements) == expected + 3 * ("PatientName" in reference.reference)
    assert image.header == header and reference.reference == snapshots[0]  # nothing changed

    source_ids = _ids(image.header) | _ids(reference.reference)
    owned = {}
    for kind in ("sr", "sc", "pm"):
        ds = getattr(rs, kind)
        assert ds.OtherPatientIDsSequence[0].PatientID == "OTHER-1", kind
        ids = _ids(ds)
        assert not ids.keys() & source_ids, (kind, {ids[i] for i in ids.keys() & source_ids})
        own = Dataset()
        own.update({tag: ds.get_item(tag) for tag in ds.keys() if tag in taken})  # noqa: SIM118
        owned[kind] = _ids(own)
    assert not owned["sr"].keys() & owned["sc"].keys()
    assert not owned["sr"].keys() & owned["pm"].keys()
    assert not owned["sc"].keys() & owned["pm"].keys()


@pytest.mark.parametrize("name", [*NAMES, "rich", "lossy"])
def test_results_of_the_trimmed_header_are_those_of_the_whole_header(
    monkeypatch: pytest.MonkeyPatch, builder: ResultBuilder, sources: dict, cr_path: Path,
    cr_j2k_lossy_path: Path, tmp_path: Path, name: str,
) -> None:
    """The source context keeps only what results read of the header: results built from the
    whole header, and with every element copied per result, are byte for byte the same."""
    from dicom_io.results import source as source_module

    class Every:
        def __contains__(self, tag: object) -> bool:
            return True

    image = {"rich": lambda: _rich_source(cr_path, tmp_path),
             "lossy": lambda: dicom_io.load(cr_j2k_lossy_path)}.get(name, lambda: sources[name])()
    args = (image, prediction(), heat_map(image, signed=name == "dx"))
    trimmed = builder.build(*args, timestamp=T1)
    monkeypatch.setattr(source_module, "reference_tags", Every)
    whole = builder.build(*args, timestamp=T1)
    monkeypatch.setattr(source_module, "taken_tags", Every)
    untabled = builder.build(*args, timestamp=T1)
    for kind in ("sr", "sc", "pm"):
        expected = _to_bytes(getattr(trimmed, kind))
        assert _to_bytes(getattr(whole, kind)) == expected, kind
        assert _to_bytes(getattr(untabled, kind)) == expected, kind


def test_lossy_source_gives_lossy_results(
    cr_j2k_lossy_path: Path, builder: ResultBuilder
) -> None:
    image = dicom_io.load(cr_j2k_lossy_path)
    rs = builder.build(image, prediction(), heat_map(image), timestamp=T1)
    assert rs.pm.LossyImageCompression == "01"
    assert rs.pm.LossyImageCompressionRatio == image.header.LossyImageCompressionRatio
    assert rs.sc.LossyImageCompression == "01"  # the source's loss, then its own JPEG's
    assert rs.sc.LossyImageCompressionRatio[0] == image.header.LossyImageCompressionRatio
    assert rs.sc.LossyImageCompressionMethod[-1] == "ISO_10918_1"


def test_capture_says_what_it_shows(results: dict, sources: dict) -> None:
    sc = pydicom.dcmread(results["cr"][1]["sc"])
    assert "Cardiomegaly" in sc.SeriesDescription
    assert "not for diagnostic use" in sc.SeriesDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sources["cr"].sop_uid
    assert list(sc.PatientOrientation) == list(sources["cr"].header.PatientOrientation)


# -- determinism --

def _without_times(ds: Dataset) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_to_bytes(ds)))
    for item in _walk(ds):
        for keyword in TIME_KEYWORDS:
            if keyword in item:
                delattr(item, keyword)
    return _to_bytes(ds)


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_same_input_twice_gives_the_same_objects(
    results: dict, sources: dict, loaded_model, tmp_path: Path
) -> None:
    image = sources["sparse"]
    first = results["sparse"][0]
    heatmap = heat_map(image)
    kwargs = {"regions": [region(heatmap, prediction())], "parametric_map": True}
    again = build_results(image, prediction(), loaded_model, heatmap, timestamp=T2, **kwargs)
    for (kind, a), (_, b) in zip(first.items(), again.items(), strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID, kind
        assert a.SeriesInstanceUID == b.SeriesInstanceUID, kind
        assert _to_bytes(a) != _to_bytes(b), kind  # the dates differ...
        assert _without_times(a) == _without_times(b), kind  # ...and nothing else
    same = build_results(image, prediction(), loaded_model, heatmap, timestamp=T1, **kwargs)
    written = same.write(tmp_path)
    for kind, path in written.items():
        assert path.read_bytes() == results["sparse"][1][kind].read_bytes(), kind


def test_other_weights_give_other_uids(results: dict, sources: dict, loaded_model) -> None:
    other = dataclasses.replace(loaded_model, sha256="0123456789abcdef" * 4)
    image = sources["cr"]
    rs = build_results(image, prediction(), other, heat_map(image), timestamp=T1,
                       parametric_map=True)
    for (kind, a), (_, b) in zip(results["cr"][0].items(), rs.items(), strict=True):
        assert a.SOPInstanceUID != b.SOPInstanceUID, kind
        assert a.SeriesInstanceUID != b.SeriesInstanceUID, kind
        assert a.StudyInstanceUID == b.StudyInstanceUID
        assert b.DeviceUID == device_uid(other.sha256) != a.DeviceUID


def test_a_new_result_format_gets_new_uids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changed content never reuses a UID (a PACS keeping the first instance of a UID would
    keep the old result); format 1, before versions were numbered, keeps its UIDs."""
    from dicom_io.results import uids

    sha = "ab" * 32
    now = {kind: (instance_uid(kind, "1.2.3.4", sha), series_uid(kind, "1.2.3", sha))
           for kind in uids.OBJECT_TYPES}
    for kind in uids.OBJECT_TYPES:
        monkeypatch.setitem(uids.FORMAT_VERSIONS, kind, 1)
        before = (instance_uid(kind, "1.2.3.4", sha), series_uid(kind, "1.2.3", sha))
        assert before == (uids.derive_uid("instance", kind, "1.2.3.4", sha),
                          uids.derive_uid("series", kind, "1.2.3", sha))
        assert before[0] != now[kind][0] and before[1] != now[kind][1]
        monkeypatch.setitem(uids.FORMAT_VERSIONS, kind, 3)
        assert instance_uid(kind, "1.2.3.4", sha) not in (before[0], now[kind][0])


def test_one_result_series_per_source_series_and_type() -> None:
    sha = "ab" * 32
    assert series_uid("sr", "1.2.3", sha) == series_uid("sr", "1.2.3", sha)
    assert series_uid("sr", "1.2.3", sha) != series_uid("sc", "1.2.3", sha)
    assert series_uid("sr", "1.2.3", sha) != series_uid("sr", "1.2.4", sha)
    assert instance_uid("sr", "1.2.3.1", sha) != instance_uid("sr", "1.2.3.2", sha)
    for uid in (series_uid("pm", "1.2.3", sha), instance_uid("pm", "1.2.3.1", sha)):
        assert uid.startswith("2.25.") and len(uid) <= 64
        assert pydicom.uid.UID(uid).is_valid


def test_builder_is_cached_per_model(loaded_model) -> None:
    assert builder_for(loaded_model) is builder_for(loaded_model)
    other = dataclasses.replace(loaded_model, sha256="f" * 64)
    assert builder_for(other) is not builder_for(loaded_model)


# -- heat map absent or suppressed --

def test_suppressed_heat_map_writes_only_the_sr_saying_why(
    builder: ResultBuilder, sources: dict, tmp_path: Path
) -> None:
    image = sources["sparse"]
    reason = "randomised-weights check failed: maps correlate 0.93"
    hm = heat_map(image, suppressed=True, suppressed_reason=reason)
    rs = builder.build(image, prediction(), hm, timestamp=T1)
    assert rs.sc is None and rs.pm is None
    assert rs.heatmap_note == f"heat map suppressed: {reason}"
    written = rs.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.dcm"] == [
        p.name for p in written.values()
    ]
    text = _text_items(pydicom.dcmread(written["sr"]))[rcodes.HEAT_MAP_SUPPRESSED.value]
    assert reason in text and "gradcam" in text and "Cardiomegaly" in text


def test_no_heat_map_writes_only_the_sr(builder: ResultBuilder, sources: dict) -> None:
    rs = builder.build(sources["sparse"], prediction(), None, timestamp=T1)
    assert isinstance(rs, ResultSet)
    assert [k for k, _ in rs.items()] == ["sr"]
    assert rs.heatmap_note == "no heat map"
    assert rcodes.HEAT_MAP.value not in _text_items(rs.sr)


# -- bad arguments --

def test_bad_heat_maps_are_refused_naming_the_value(builder, sources: dict) -> None:
    image = sources["sparse"]
    wrong = HeatMap(np.zeros((image.columns, image.rows), np.float32), "Mass", "gradcam")
    with pytest.raises(ValueError, match=rf"shape \({image.columns}, {image.rows}\)"):
        builder.build(image, prediction(), wrong)
    nan = heat_map(image)
    nan.values[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        builder.build(image, prediction(), nan)
    hot = heat_map(image)
    hot.values *= 3
    with pytest.raises(ValueError, match=r"unsigned map must lie in \[0, 1\]"):
        builder.build(image, prediction(), hot)
    with pytest.raises(ValueError, match="label"):
        builder.build(image, prediction(), dataclasses.replace(heat_map(image), label=""))
    with pytest.raises(TypeError, match="HeatMap"):
        builder.build(image, prediction(), np.zeros((image.rows, image.columns)))


def test_bad_predictions_and_sources_are_refused(builder, sources: dict) -> None:
    image = sources["sparse"]
    bad = Prediction((Finding("Mass", 1.5, 0.5),))
    with pytest.raises(ValueError, match=r"probability 1\.5 of 'Mass'"):
        builder.build(image, bad)
    with pytest.raises(ValueError, match="no findings"):
        builder.build(image, Prediction(()))
    with pytest.raises(TypeError, match="Prediction"):
        builder.build(image, {"Mass": 0.3})
    with pytest.raises(TypeError, match="SourceImage"):
        builder.build(image.header, prediction())
    png = SourceImage("chest.png", image.pixels, image.maxval, None)
    with pytest.raises(ResultBuildError) as e:
        builder.build(png, prediction())
    assert e.value.code == "no-dicom-source"
    with pytest.raises(TypeError, match="LoadedModel"):
        ResultBuilder(object())
    with pytest.raises(TypeError, match="timestamp"):
        builder.build(image, prediction(), timestamp="2024-01-01")


# -- the codes table --

def test_every_padchest_label_has_a_code_and_the_table_is_sane() -> None:
    for label in PADCHEST_LABELS:
        code = finding_code(label)
        assert code.scheme_designator in {"SCT", "DCM", PRIVATE_SCHEME}, label
        assert 1 <= len(code.value) <= 16 and code.meaning, label
        if code.scheme_designator == "SCT":
            assert code.value.isdigit(), label
    for key, code in FINDING_CODES.items():
        assert key == key.lower().strip(), key
        assert len(code.meaning) <= 64
    assert finding_code("Pleural_Thickening") == finding_code("pleural thickening")
    assert finding_code("Effusion") == finding_code("Pleural Effusion")
    odd = finding_code("Widened Mediastinum")
    assert odd.scheme_designator == PRIVATE_SCHEME and odd.meaning == "Widened Mediastinum"
    assert odd == finding_code("widened  mediastinum")
