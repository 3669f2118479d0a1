"""Bad input never hurts: hostile variants of a real radiograph get a typed error or a result."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import record_figure
from hypothesis import HealthCheck, given, settings
from mutations import mutated, small_radiograph

import dicom_io
from inference import Predictor

CASES = {"count": 0, "declined": 0, "invalid": 0, "read": 0}


@pytest.fixture(scope="module")
def base(cr_path: Path) -> bytes:
    return small_radiograph(cr_path)


def test_reader_survives_mutated_radiographs(base: bytes, tmp_path_factory, loaded_model) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    predictor = Predictor(loaded_model, batch_size=1)

    @settings(max_examples=200, deadline=5000, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=mutated(base))
    def check(data: bytes) -> None:
        path = folder / "case.dcm"
        path.write_bytes(data)
        CASES["count"] += 1
        try:
            image = dicom_io.load(path)
        except dicom_io.DeclinedError:
            CASES["declined"] += 1
            return
        except dicom_io.DicomIOError as e:
            CASES["invalid"] += 1
            assert e.code and e.reason
            return
        CASES["read"] += 1
        [scored] = predictor([image])  # what was read must also go through the model
        assert len(scored.prediction.findings) == 26

    check()
    record_figure(f"fuzz (reader + model): {CASES['count']} cases: {CASES['read']} read, "
                  f"{CASES['declined']} declined, {CASES['invalid']} refused with a reason")
    assert CASES["declined"] and CASES["invalid"] and CASES["read"]
