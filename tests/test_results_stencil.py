"""SRs filled from byte stencils are the SRs highdicom builds, byte for byte.

The node builds each label's measurement group once (from synthetic values) and fills it per
image. These tests build the same SR both ways, for varied sources, predictions, character
sets and heat-map states, and compare the encoded files; and check that nothing of one
patient reaches the next patient's report.
"""

from __future__ import annotations

import datetime
import io
import struct

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_io.image import from_dataset
from dicom_io.results import ResultBuilder
from dicom_io.results._common import source_context
from dicom_io.results.stencil import Stencil, StencilError, encode_item
from domain import Finding, HeatMap, Prediction
from explain.regions import region_of
from inference.card import PADCHEST_LABELS

WHEN = datetime.datetime(2026, 3, 4, 5, 6, 7)


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _source(cr_path, name: str = "Doe^Jane", charset: str | None = None, seed: str = "a",
            drop: tuple[str, ...] = (), **attrs):
    """A small image with the CR's header, its own UIDs and the attributes given."""
    ds = pydicom.dcmread(cr_path)
    arr = np.ascontiguousarray(ds.pixel_array[::16, ::16])
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"stencil {seed} sop"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"stencil {seed} series"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"stencil {seed} study"])
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    for keyword in drop:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return from_dataset(pydicom.dcmread(io.BytesIO(_encode(ds))))


def _prediction(probabilities, thresholds) -> Prediction:
    return Prediction(tuple(Finding(label, float(p), float(t)) for label, p, t in
                            zip(PADCHEST_LABELS, probabilities, thresholds, strict=True)))


def _both(builder: ResultBuilder, image, prediction, heatmap=None) -> tuple[bytes, bytes]:
    """(stencil-filled, highdicom-built) encoded SRs of the same input; a shown heat map's
    finding outlined (its group a planar ROI group, built by highdicom in both)."""
    source = source_context(image)
    heatmaps = [heatmap] if heatmap is not None else []
    regions = {}
    if heatmap is not None and not heatmap.suppressed:
        finding = next(f for f in prediction.findings if f.label == heatmap.label)
        regions = {finding.label: region_of(heatmap, finding.probability, finding.threshold)}
    kwargs = dict(when=WHEN, series_description=builder.series_description("sr"),
                  regions=regions, **builder._uids("sr", source))
    fast = builder.template.build(source, prediction, heatmaps, **kwargs)
    slow = builder.template.build(source, prediction, heatmaps, stencil=False, **kwargs)
    return _encode(fast), _encode(slow)


@pytest.fixture(scope="module")
def builder(loaded_model) -> ResultBuilder:
    return ResultBuilder(loaded_model)


def _heatmaps(image) -> dict:
    values = np.zeros((image.rows, image.columns), np.float32)
    values[2:5, 3:7] = 1.0
    return {
        "none": None,
        "shown": HeatMap(values, "Cardiomegaly", "gradcam"),
        "suppressed": HeatMap(values, "Effusion", "gradcampp", suppressed=True,
                              suppressed_reason="randomisation check failed"),
    }


SOURCES = {
    "cr": {},
    "dx-oriented": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1", "Modality": "DX",
                    "PatientOrientation": ["L", "F"], "ImagerPixelSpacing": [0.15, 0.15],
                    "InstanceNumber": 12},
    "sparse": {"drop": ("PatientBirthDate", "AccessionNumber", "PixelSpacing", "StudyID",
                        "ReferringPhysicianName", "Manufacturer", "InstanceNumber",
                        "PatientSex", "StudyTime")},
    "utf8": {"charset": "ISO_IR 192", "name": "Müller^Zoë=山田^太郎"},
    "latin1": {"charset": "ISO_IR 100", "name": "Gómez^Iñés", "PatientID": "ÄÖ-17"},
}


@pytest.mark.parametrize("state", ["none", "shown", "suppressed"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_stencil_sr_is_the_highdicom_sr(builder, cr_path, name: str, state: str) -> None:
    image = _source(cr_path, seed=name, **SOURCES[name])
    rng = np.random.default_rng(len(name))
    prediction = _prediction(rng.random(26), rng.uniform(0.2, 0.8, 26))
    fast, slow = _both(builder, image, prediction, _heatmaps(image)[state])
    assert fast == slow


@pytest.mark.parametrize("name", list(SOURCES))
def test_stencil_content_is_written_as_it_was_encoded(builder, cr_path, name: str) -> None:
    """The SR's content tree, encoded by the stencils, reaches the file as it is: pydicom
    would parse and re-encode it, were its original character set not the SR's own."""
    image = _source(cr_path, seed=f"raw {name}", **SOURCES[name])
    pred = _prediction(np.linspace(0.05, 0.95, 26), np.full(26, 0.4))
    sr = builder.build(image, pred, timestamp=WHEN).sr
    assert isinstance(sr.get_item(0x0040A730), RawDataElement)
    _encode(sr)
    assert isinstance(sr.get_item(0x0040A730), RawDataElement)


probability = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-7, 0.9999995, 1 / 3]),
                        st.floats(0.0, 1.0, allow_nan=False))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ps=st.lists(probability, min_size=26, max_size=26),
       ts=st.lists(probability, min_size=26, max_size=26),
       patient=st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF,
                                     exclude_characters="\\^="), min_size=1, max_size=30))
def test_stencil_sr_matches_for_any_prediction_and_name(builder, cr_path, ps, ts,
                                                         patient: str) -> None:
    name = (patient.strip() or "x") + "^Given"
    image = _source(cr_path, name=name, charset="ISO_IR 192", seed=patient)
    fast, slow = _both(builder, image, _prediction(ps, ts))
    assert fast == slow


def test_no_value_of_one_patient_reaches_the_next_report(builder, cr_path) -> None:
    first = _source(cr_path, name="Firstpatient^Alpha", seed="first", PatientID="PID-FIRST-1",
                    AccessionNumber="ACC-FIRST-1")
    second = _source(cr_path, name="Secondpatient^Beta", seed="second",
                     PatientID="PID-SECOND-2", AccessionNumber="ACC-SECOND-2")
    pred = _prediction(np.linspace(0.01, 0.99, 26), np.full(26, 0.5))
    a = builder.build(first, pred, timestamp=WHEN).part10("sr")
    b = builder.build(second, pred, timestamp=WHEN).part10("sr")
    for value in ("Firstpatient", "PID-FIRST-1", "ACC-FIRST-1",
                  first.sop_uid, first.series_uid, first.study_uid):
        assert value.encode() in a
        assert value.encode() not in b
    assert b"Secondpatient" in b and second.sop_uid.encode() in b
    back = pydicom.dcmread(io.BytesIO(b))
    refs = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for group in back.ContentSequence if group.get("ContentSequence")
            for item in _walk(group) if "ReferencedSOPSequence" in item}
    assert refs == {second.sop_uid}


def _walk(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_part10_of_the_result_set_reads_back_as_the_dataset(builder, cr_path) -> None:
    image = _source(cr_path, seed="readback")
    pred = _prediction(np.linspace(0.05, 0.95, 26), np.full(26, 0.4))
    results = builder.build(image, pred, timestamp=WHEN)
    back = pydicom.dcmread(io.BytesIO(results.part10("sr")))
    assert back.SOPInstanceUID == results.sr.SOPInstanceUID
    findings = [item for item in _walk(back) if item.ValueType == "CODE"
                and len(item.get("ContentSequence", [])) == 2]  # a finding and its two NUMs
    assert len(findings) == 26
    assert results.part10("sr") is results.part10("sr")  # encoded once
    with pytest.raises(KeyError, match="'sc'"):
        results.part10("sc")


def ui_element(tag: tuple[int, int], uid: str) -> bytes:
    """An Explicit VR LE UI element (value padded with NUL to even length)."""
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HH", *tag) + b"UI" + struct.pack("<H", len(value)) + value


def test_stencil_refuses_a_template_without_its_slot() -> None:
    item = Dataset()
    item.ValueType = "UIDREF"
    item.UID = "1.2.3.4"
    slots = {"tracking": ui_element((0x0040, 0xA124), "1.2.3.5")}
    with pytest.raises(StencilError, match="'tracking' found 0 times"):
        Stencil.make(item, slots)
    stencil = Stencil.make(item, {"tracking": ui_element((0x0040, 0xA124), "1.2.3.4")})
    filled = stencil.fill({"tracking": ui_element((0x0040, 0xA124), "1.2.345.6")})
    item.UID = "1.2.345.6"
    assert filled == encode_item(item)
    with pytest.raises(KeyError, match="tracking"):
        stencil.fill({})


def test_prepare_makes_every_label_stencil_up_front(loaded_model) -> None:
    builder = ResultBuilder(loaded_model)
    assert builder.template._finding_stencils == {}
    assert builder.prepare() is True
    assert set(builder.template._finding_stencils) == set(loaded_model.card.labels)
