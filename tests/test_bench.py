"""``cxr-node bench`` runs every phase once and reports: the table, then one JSON line.

Timings are never asserted (they belong to the machine); only that every figure was measured.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.bench import scale
from node.bench.common import SCALE_RAW_KEYS
from node.bench.postgres import postgres_missing
from node.bench.report import RAW_KEYS
from node.cli.main import main

pytestmark = pytest.mark.system  # starts the node as a process (twice)

RATIOS = ("http_vs_model", "dimse_vs_model", "dimse_noexplain_vs_model",
          "gradcam_over_predict", "shap_over_predict", "score_p50_vs_reference")


@pytest.fixture(scope="module")
def small_cr(tmp_path_factory: pytest.TempPathFactory, cr_path: Path) -> Path:
    """The NEMA CR chest, a quarter of its size each way (still MONOCHROME1, 15 bits)."""
    ds = pydicom.dcmread(cr_path)
    arr = np.ascontiguousarray(ds.pixel_array[::4, ::4])
    ds.PixelData = arr.tobytes()
    ds.Rows, ds.Columns = arr.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path_factory.mktemp("bench") / "cr-small.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_bench_reports_every_figure(whole_model_path: Path, small_cr: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--model", str(whole_model_path), "--images", str(small_cr),
               "--count", "4", "--clients", "2", "--repeat", "1", "--min-time", "0",
               "--shap-nsamples", "2", "--skip", "scale",  # the scale phase: its own test
               "--timeout", "120"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    lines = out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["errors"] == []
    for name in RATIOS:
        value = report["ratios"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    for name in RAW_KEYS:
        if name in SCALE_RAW_KEYS:
            continue
        value = report["raw"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    for name, check in report["targets"].items():
        assert check["pass"] in ((None,) if name.startswith("scale_") else (True, False))
    assert 0 <= report["machine"]["steal"] <= 1  # the host's share of this run's CPU time
    dimse = report["dimse"]
    assert dimse["dimse_gradcam"]["with_results"] == dimse["dimse_gradcam"]["sent"] == 4
    assert "Comprehensive SR Storage" in dimse["dimse_none"]["received"]
    captures = dimse["dimse_gradcam"]["received"]["Secondary Capture Image Storage"]
    assert captures["count"] == 4 and captures["mean_mb"] < 2  # JPEG, under its own UIDs
    table = "\n".join(lines[:-1])
    for heading in ("Model only", "PyTorch eager, batch 8", "ONNX Runtime, batch 1",
                    "HTTP /score", "DIMSE in/out, Grad-CAM", "CPU per image",
                    "node: DIMSE, explain none (SR)", "Targets", "http_vs_model"):
        assert heading in table


def test_bench_png_folder_json_only(whole_model_path: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG is wrapped as DX; ``--skip`` leaves phases out and ``--json-only`` the table;
    without RabbitMQ the scale phase is skipped with a note, not an error."""
    monkeypatch.setattr(scale, "rabbitmq_missing", lambda: "RabbitMQ is not installed (test)")
    import skimage.io

    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    skimage.io.imsave(folder / "a.png", rng.integers(0, 255, (256, 240), dtype=np.uint8),
                      check_contrast=False)
    rc = main(["bench", "--model", str(whole_model_path), "--images", str(folder),
               "--repeat", "1", "--min-time", "0", "--skip", "http,dimse", "--skip", "shap",
               "--json-only"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    [line] = out.strip().splitlines()
    report = json.loads(line)
    assert report["images"]["distinct"] == 1 and report["images"]["rows"] == 256
    assert report["raw"]["onnx_batch_ips"] > 0 and report["raw"]["gradcam_s"] > 0
    assert report["raw"]["http_single_ips"] is None and report["ratios"]["http_vs_model"] is None
    assert report["settings"]["skipped"] == ["dimse", "http", "shap"]
    assert report["scale"] == {"skipped": "RabbitMQ is not installed (test)"}
    assert report["ratios"]["scale_speedup"] is None


def test_bench_usage_errors(whole_model_path: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(whole_model_path), "--skip", "nothing"]) == 2
    assert "--skip nothing" in capsys.readouterr().err
    assert main(["bench", "--model", str(whole_model_path), "--min-time", "-1"]) == 2
    assert "--min-time -1" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--model", str(whole_model_path), "--images", str(empty)]) == 2
    assert "no usable radiograph" in capsys.readouterr().err


def _processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (nodes, brokers, servers)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in args:
            found.append(args)
    return found


@pytest.mark.timeout(900)
def test_bench_scale_phase(whole_model_path: Path, small_cr: Path,
                           monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """A scaled node (RabbitMQ, PostgreSQL, roles as processes), one worker then two: the JSON
    line carries the speed-up and the smaller worker's share as numbers (their values are the
    machine's: never asserted), and nothing it started is left running."""
    why = scale.missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{why} although CI should have installed it")
        pytest.skip(why)
    assert postgres_missing() is None
    # every folder of the phase (its work folder, PostgreSQL's) under one we can search for;
    # not under pytest's tmp_path, which PostgreSQL's own user may not enter
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-scale-"))
    folder.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        rc = main(["bench", "--model", str(whole_model_path), "--images", str(small_cr),
                   "--skip", "http,dimse,shap", "--repeat", "1", "--min-time", "0",
                   "--scale-count", "8", "--timeout", "240", "--json-only"])
        out, err = capsys.readouterr()
        left = _processes_under(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert rc == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == []
    assert not left, left
    for value in (report["ratios"]["scale_speedup"], report["raw"]["scale_1_worker_ips"],
                  report["raw"]["scale_2_workers_ips"]):
        assert isinstance(value, float) and math.isfinite(value) and value > 0, report["raw"]
    share = report["raw"]["scale_min_worker_share"]
    assert isinstance(share, float) and 0 <= share <= 0.5, share
    for name in ("scale_speedup", "scale_min_worker_share"):
        assert report["targets"][name]["pass"] in (True, False)
    shares = report["scale"]["shares_2_workers"]
    assert sorted(shares) == ["worker0", "worker1"]
    assert math.isclose(sum(shares.values()), 1, abs_tol=1e-3)
    assert report["settings"]["scale_count"] == 8
