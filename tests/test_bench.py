"""``cxr-node bench`` runs every phase once and reports: the table, then one JSON line.

Timings are never asserted (they belong to the machine); only that every figure was measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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
               "--shap-nsamples", "2",
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
        value = report["raw"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    for check in report["targets"].values():
        assert check["pass"] in (True, False)
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
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG is wrapped as DX; ``--skip`` leaves phases out and ``--json-only`` the table."""
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
