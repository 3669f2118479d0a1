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


@pytest.mark.system  # the installed console script, as a process
def test_console_script_runs(tmp_path: Path, cr_path: Path, whole_model_path: Path) -> None:
    exe = Path(sys.executable).with_name("cxr-node")
    proc = subprocess.run(
        [str(exe), "predict", str(cr_path), "--model", str(whole_model_path), "--out",
         str(tmp_path), "--explain", "none"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) written" in proc.stderr


# --- one bad input never stops the others ---------------------------------------------------


def _failure_lines(err: str) -> dict[str, str]:
    """``PATH: CODE: REASON`` lines by the file name of PATH (summary line left out)."""
    lines = {}
    for line in err.splitlines():
        if " image(s) written to " in line:
            continue
        path, sep, rest = line.partition(": ")
        assert sep, line
        name = Path(path).name
        assert name not in lines, f"two lines for {name}"
        lines[name] = rest
    return lines


def test_predict_over_broken_real_world_files(
    tmp_path: Path, whole_model_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder of broken files, the empty SOP Instance UID first and good files after:
    each input gets its own line with its specific code, or a result folder; exit 1."""
    import pydicom
    from broken_files import BROKEN

    inputs = tmp_path / "in"
    inputs.mkdir()
    order = ["empty-sop-instance-uid", *(n for n in BROKEN if n != "empty-sop-instance-uid")]
    cases = {}
    for i, name in enumerate(order):
        case = BROKEN[name]()
        path = inputs / f"{i:02d}-{name}.dcm"
        path.write_bytes(case.data)
        cases[path.name] = case
    (inputs / "99-good-last.dcm").write_bytes(BROKEN["good"]().data)
    cases["99-good-last.dcm"] = BROKEN["good"]()
    out = tmp_path / "out"
    rc = main(["predict", str(inputs), "--model", str(whole_model_path), "--out", str(out),
               "--batch-size", "4"])  # the default explanation: Grad-CAM, and every result
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err and "cxr-node predict:" not in err
    lines = _failure_lines(err)
    refused = {n for n, c in cases.items() if c.refused}
    assert set(lines) == refused, err
    for name in refused:
        code = lines[name].partition(": ")[0]
        assert code == cases[name].code, (name, lines[name])
    scored = [n for n in cases if n not in refused]
    assert len(scored) == 6
    folders = {p.name for p in out.iterdir()}
    assert not any(f.startswith(".") for f in folders), folders  # no half-written folder
    assert len(folders) == len(scored)
    for name in scored:
        ds = pydicom.dcmread(inputs / name, stop_before_pixels=True)
        result = _result(out, str(ds.SOPInstanceUID).rstrip("\x00"))
        assert len(result["findings"]) == 26
        assert set(result["dicom"]) == {"sr", "sc"}, (name, result.get("dicom"))  # map: opt-in
        assert "heatmap.png" in result["explanation"]["files"]
    assert f"{len(scored)} image(s) written to {out}, {len(refused)} failed" in err


class _BoomError(RuntimeError):
    pass


def _images(tmp_path: Path, count: int) -> list[Path]:
    from broken_files import good_file

    paths = []
    for i in range(count):
        path = tmp_path / f"good{i}.dcm"
        path.write_bytes(good_file().data)
        paths.append(path)
    return paths


def test_error_after_scoring_costs_that_image_only(
    tmp_path: Path, loaded_model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any exception while explaining or building results for one image is its line, and
    leaves no half-written folder; the images after it are written."""
    import io

    from dicom_io import ResultBuildError
    from inference import Predictor
    from node.cli.outputs import output_extras
    from node.cli.predict import ResultWriter, run_batch

    paths = _images(tmp_path, 4)
    [extra] = output_extras(loaded_model, "none")
    keys = {}

    def flaky(scored, folder, result):
        extra(scored, folder, result)  # writes sr.dcm into the folder first
        keys.setdefault(scored.image.key, len(keys))
        if keys[scored.image.key] == 0:
            raise _BoomError("explainer\nfell over")
        if keys[scored.image.key] == 2:
            raise ResultBuildError("result-build", "highdicom said no")

    out = tmp_path / "out"
    errors = io.StringIO()
    report = run_batch(paths, Predictor(loaded_model, 3), ResultWriter(loaded_model, out,
                       [flaky]), errors=errors, progress=False)
    lines = errors.getvalue().splitlines()
    assert len(report.written) == 2 and len(report.failed) == 2
    assert lines == [f"{paths[0]}: result-failed: _BoomError: explainer fell over",
                     f"{paths[2]}: result-build: highdicom said no"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.parent.name
                                                           for p in report.written)


def test_model_failing_on_one_image_costs_that_image_only(tmp_path: Path, loaded_model) -> None:
    """A batch the model cannot take is scored image by image: only the bad one fails."""
    import io

    from inference import Predictor
    from node.cli.predict import ResultWriter, run_batch

    calls: list[list[str]] = []

    class Picky(Predictor):
        def __call__(self, images):
            calls.append([image.name for image in images])
            if any(image.name == "good1.dcm" for image in images):
                raise ValueError("cannot\nresize")
            return super().__call__(images)

    paths = _images(tmp_path, 3)
    errors = io.StringIO()
    report = run_batch(paths, Picky(loaded_model, 3), ResultWriter(loaded_model,
                       tmp_path / "out"), errors=errors, progress=False)
    assert calls == [["good0.dcm", "good1.dcm", "good2.dcm"], ["good0.dcm"],
                           ["good1.dcm"], ["good2.dcm"]]
    assert errors.getvalue().splitlines() == [
        f"{paths[1]}: predict-failed: ValueError: cannot resize"]
    assert len(report.written) == 2


def test_duplicate_and_unreadable_inputs_get_their_line(
    tmp_path: Path, whole_model_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The same image twice (its result would be replaced) and a FIFO among the files."""
    import os

    inputs = tmp_path / "in"
    inputs.mkdir()
    [first] = _images(inputs, 1)
    (inputs / "copy.dcm").write_bytes(first.read_bytes())
    os.mkfifo(inputs / "pipe.dcm")
    rc = main(["predict", str(inputs), "--model", str(whole_model_path), "--out",
               str(tmp_path / "out"), "--explain", "none"])
    lines = _failure_lines(capsys.readouterr().err)
    assert rc == 1
    assert lines["good0.dcm"].startswith("duplicate: ") and "copy.dcm" in lines["good0.dcm"]
    assert lines["pipe.dcm"].startswith("unreadable: ")
    assert len(lines) == 2


def test_folder_that_cannot_be_listed_gets_its_line(
    tmp_path: Path, loaded_model, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io
    import os

    from inference import Predictor
    from node.cli.predict import ResultWriter, iter_inputs, run_batch

    inputs = tmp_path / "in"
    (inputs / "locked").mkdir(parents=True)
    [good] = _images(inputs, 1)
    real = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    paths = list(iter_inputs([inputs]))
    assert paths == [good, inputs / "locked"] or paths == [inputs / "locked", good]
    errors = io.StringIO()
    report = run_batch(paths, Predictor(loaded_model), ResultWriter(loaded_model,
                       tmp_path / "out"), errors=errors, progress=False)
    assert errors.getvalue().splitlines() == [
        f"{inputs / 'locked'}: unreadable: a folder that cannot be listed"]
    assert len(report.written) == 1
