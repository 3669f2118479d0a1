"""``cxr-node predict`` as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.main import main


def _result(out: Path, key: str) -> dict:
    return json.loads((out / key / "result.json").read_text())


def test_predict_writes_result_per_image_and_one_line_per_failure(
    tmp_path: Path, cr_path: Path, cr_j2k_lossless_path: Path, whole_model_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(cr_path, inputs / "cr.dcm")
    shutil.copy(cr_j2k_lossless_path, inputs / "cr_j2k.dcm")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "half.dcm").write_bytes(cr_path.read_bytes()[:4000])
    out = tmp_path / "out"
    rc = main(["predict", str(inputs), str(tmp_path / "missing.dcm"), "--model",
               str(whole_model_path), "--out", str(out), "--explain", "none"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    failures = [line for line in err if ": " in line and not line.startswith("2 image")]
    assert len(failures) == 3, err
    assert any(line.startswith(f"{inputs / 'notes.txt'}: not-dicom:") for line in failures)
    assert any(line.startswith(f"{inputs / 'half.dcm'}: ") for line in failures)
    assert any(line.startswith(f"{tmp_path / 'missing.dcm'}: missing:") for line in failures)
    assert "Traceback" not in "\n".join(err)
    import pydicom

    for name in ("cr.dcm", "cr_j2k.dcm"):
        ds = pydicom.dcmread(inputs / name, stop_before_pixels=True)
        result = _result(out, ds.SOPInstanceUID)
        assert result["source"]["sop_instance_uid"] == ds.SOPInstanceUID
        assert result["source"]["study_instance_uid"] == ds.StudyInstanceUID
        assert result["model"]["sha256"] and result["model"]["name"]
        assert len(result["findings"]) == 26
        assert len(result["top_three_labels"]) == 3
        for f in result["findings"]:
            assert f["positive"] == (f["probability"] >= f["threshold"])


def test_predict_all_good_exits_zero(tmp_path: Path, cr_path: Path, whole_model_path: Path) -> None:
    rc = main(["predict", str(cr_path), "--model", str(whole_model_path), "--out",
               str(tmp_path), "--explain", "none"])
    assert rc == 0


def test_predict_bad_model_is_one_line_exit_2(
    tmp_path: Path, cr_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"garbage")
    rc = main(["predict", str(cr_path), "--model", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("cxr-node predict: ")


def test_console_script_runs(tmp_path: Path, cr_path: Path, whole_model_path: Path) -> None:
    exe = Path(sys.executable).with_name("cxr-node")
    proc = subprocess.run(
        [str(exe), "predict", str(cr_path), "--model", str(whole_model_path), "--out",
         str(tmp_path), "--explain", "none"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) written" in proc.stderr
