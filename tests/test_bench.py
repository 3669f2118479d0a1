"""``cxr-node bench`` runs every phase once and reports: the table, then one JSON line.

Timings are never asserted (they belong to the machine); only that every figure was measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.bench import baseline, image_set, scale
from node.bench.common import BASELINE_RAW_KEYS, SCALE_RAW_KEYS
from node.bench.images import bench_images
from node.bench.postgres import postgres_missing
from node.bench.report import RAW_KEYS
from node.cli.main import main

pytestmark = pytest.mark.system  # starts the node as a process (twice)

#: Ratios of the baseline phase (naive script and deploy/score.py under azmlinfsrv).
BASELINE_RATIOS = ("node_vs_baseline", "deploy_vs_baseline", "p50_vs_baseline")

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
               "--skip", "scale,baseline",  # the scale and baseline phases: their own tests
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
        if name in SCALE_RAW_KEYS or name in BASELINE_RAW_KEYS:
            continue
        value = report["raw"][name]
        assert isinstance(value, float) and math.isfinite(value), (name, value)
        # a difference of two measurements (node - model) may come out below zero
        assert value > 0 or name.endswith("_overhead_ms"), (name, value)
    for name, check in report["targets"].items():
        left_out = name.startswith("scale_") or name in BASELINE_RATIOS
        assert check["pass"] in ((None,) if left_out else (True, False))
    assert report["image_set"]["source"] == "--images" and report["image_set"]["count"] == 1
    assert report["image_set"]["transfer_syntaxes"] == {"Explicit VR Little Endian": 1}
    assert report["image_set"]["overhead_image"] == "RG1_UNCR.dcm"
    assert report["settings"]["count"] == 4
    assert 0 <= report["machine"]["steal"] <= 1  # the host's share of this run's CPU time
    dimse = report["dimse"]
    assert dimse["dimse_gradcam"]["with_results"] == dimse["dimse_gradcam"]["sent"] == 4
    assert "Comprehensive SR Storage" in dimse["dimse_none"]["received"]
    captures = dimse["dimse_gradcam"]["received"]["Secondary Capture Image Storage"]
    assert captures["count"] == 4 and captures["mean_mb"] < 2  # JPEG, under its own UIDs
    table = "\n".join(lines[:-1])
    for heading in ("Model only", "PyTorch eager, batch 8", "ONNX Runtime, batch 1",
                    "HTTP /score", "DIMSE in/out, Grad-CAM", "CPU per image",
                    "node: DIMSE, explain none (SR)", "Targets", "http_vs_model",
                    "Pipeline overhead (NEMA CR alone)", "DIMSE in and out, SR only"):
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
               "--repeat", "1", "--min-time", "0", "--skip", "http,dimse,baseline",
               "--skip", "shap", "--json-only"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    [line] = out.strip().splitlines()
    report = json.loads(line)
    assert report["images"]["distinct"] == 1 and report["images"]["rows"] == 256
    assert report["raw"]["onnx_batch_ips"] > 0 and report["raw"]["gradcam_s"] > 0
    assert report["raw"]["http_single_ips"] is None and report["ratios"]["http_vs_model"] is None
    assert report["settings"]["skipped"] == ["baseline", "dimse", "http", "shap"]
    assert report["settings"]["count"] == 32  # not given: the set once, at least 32
    assert report["image_set"]["photometric"] == {"MONOCHROME2": 1}
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
    """Command lines of running processes that name ``folder`` or run in it (nodes, brokers,
    servers)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        cwd = ""
        with contextlib.suppress(OSError):  # another user's process: its command line only
            cwd = os.readlink(proc / "cwd")
        if str(folder) in args or cwd.startswith(str(folder)):
            found.append(args)
    return found


@pytest.fixture
def search_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The bench's temporary folders under one we can search for processes left running;
    not under pytest's tmp_path, which PostgreSQL's own user may not enter."""
    folder = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
    folder.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
                   "--skip", "http,dimse,shap,baseline", "--repeat", "1", "--min-time", "0",
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


@pytest.mark.timeout(900)
def test_bench_baseline_phase(whole_model_path: Path, small_cr: Path, search_folder: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """The naive script and deploy/score.py under azmlinfsrv, then the node, on the same
    images: every baseline figure and ratio is a number (never judged here), the JSON says
    what each server was given, and neither server is left running."""
    if baseline.azmlinfsrv() is None:
        if os.environ.get("CI"):
            pytest.fail("azmlinfsrv is not installed although the test extra installs it")
        pytest.skip("azmlinfsrv (azureml-inference-server-http) is not installed")
    rc = main(["bench", "--model", str(whole_model_path), "--images", str(small_cr),
               "--skip", "dimse,shap,scale", "--count", "3", "--clients", "2", "--repeat", "1",
               "--min-time", "0", "--timeout", "300", "--json-only"])
    out, err = capsys.readouterr()
    left = _processes_under(search_folder)
    assert rc == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == []
    assert not left, left
    for name in BASELINE_RAW_KEYS:
        value = report["raw"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    for name in BASELINE_RATIOS:
        value = report["ratios"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
        assert report["targets"][name]["pass"] in (True, False)
    info = report["baseline"]
    assert info["baseline_outputs"] == 26  # the naive script scored: a probability per label
    assert info["deploy_settings"]["WORKER_COUNT"]  # from deploy/Dockerfile
    assert info["baseline_settings"] == {"WORKER_COUNT": "1"}


def test_bench_baseline_skipped_without_a_weights_file(tmp_path: Path) -> None:
    """A named model (no file for torch.load): the phase says why it did not run."""
    from node.bench.common import Options, Results

    res = Results()
    baseline.measure_baseline(Options(model="densenet121-res224-all"), [], res, tmp_path)
    assert "not a weights file" in res.info["baseline"]["skipped"] and not res.errors


def test_dockerfile_settings(tmp_path: Path) -> None:
    """deploy/Dockerfile's service settings, as the baseline phase gives them to the
    deployment: ENV in both forms, continued lines; paths and build arguments left out."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG X=1\n"
        "ENV OMP_WAIT_POLICY=PASSIVE \\\n    PIP_NO_CACHE_DIR=1\n"
        "ENV AZUREML_MODEL_DIR=/var/azureml-app/model \\\n"
        "    WORKER_COUNT=1 \\\n"
        "    GUNICORN_CMD_ARGS=\"--threads 4\" \\\n"
        "    CXR_NODE_BATCH_SIZE=${X}\n"
        "ENV CXR_NODE_HTTP_MAX_BODY_MB 64\n")
    assert baseline.dockerfile_env(dockerfile) == {
        "OMP_WAIT_POLICY": "PASSIVE", "WORKER_COUNT": "1", "GUNICORN_CMD_ARGS": "--threads 4",
        "CXR_NODE_HTTP_MAX_BODY_MB": "64"}
    assert baseline.dockerfile_env(tmp_path / "missing") is None
    # the project's own, and the copy an installed bench (no Dockerfile) uses, in step
    assert baseline.dockerfile_env() == baseline.DOCKERFILE_ENV


def _nih_like(folder: Path, count: int) -> Path:
    """A stand-in for ../shared/data/cxr14: small 8-bit PNGs and their labels."""
    import skimage.io

    folder.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(count):
        name = f"0000{i}_000.png"
        skimage.io.imsave(folder / name, rng.integers(0, 255, (256, 240), dtype=np.uint8),
                          check_contrast=False)
        rows.append(f"{name},No Finding,{'PA' if i % 2 else 'AP'},{40 + i},F,2500,2048,"
                    "0.143,0.143")
    (folder / "labels.csv").write_text(
        "Image Index,Finding Labels,View Position,Patient Age,Patient Gender,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n" + "\n".join(rows) + "\n")
    return folder


def test_default_image_set_mixes_encodings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Without --images: the NEMA CR as it is (the overhead image) and re-encoded, the NIH
    images as CR and DX, MONOCHROME1 and 2, 8 and 16 bits, in every encoding; made once, then
    read from the cache; the set's make-up is recorded."""
    monkeypatch.setattr(image_set, "CXR14", _nih_like(tmp_path / "cxr14", 3))
    monkeypatch.setattr(image_set, "TARGET", 20)  # the CR's 6, then each encoding twice
    made: list[str] = []
    first = bench_images([], tmp_path / "cache", made.append)
    assert len(made) == 1 and len(first.images) == 20
    info = first.info
    assert info["source"] == "default" and info["count"] == 20
    expected = {"Explicit VR Little Endian", "JPEG Baseline (Process 1)",
                "JPEG 2000 Image Compression (Lossless Only)", "JPEG-LS Lossless Image Compression",
                "RLE Lossless", "Deflated Explicit VR Little Endian"}
    if shutil.which("dcmcjpeg"):
        expected.add("JPEG Lossless, Non-Hierarchical, First-Order Prediction "
                     "(Process 14 [Selection Value 1])")
    assert set(info["transfer_syntaxes"]) == expected, info
    assert set(info["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    assert set(info["modality"]) == {"CR", "DX"} and set(info["bits_allocated"]) == {"8", "16"}
    assert first.overhead is not None and first.overhead.name == "RG1_UNCR.dcm"
    assert first.images[0].data == first.overhead.data  # the overhead image leads the set
    again = bench_images([], tmp_path / "cache", made.append)
    assert len(made) == 1  # from the cache
    assert [i.data for i in again.images] == [i.data for i in first.images]


def test_default_image_set_without_dcmtk_or_nih(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No dcmtk: pydicom (and Pillow) encode what they can, JPEG lossless is left out and
    named; no NIH sample: the CR alone in the encodings, at 8 bits for JPEG baseline."""
    monkeypatch.setattr(image_set, "CXR14", tmp_path / "absent")
    monkeypatch.setattr(image_set.shutil, "which", lambda name: None)
    found = bench_images([], tmp_path / "cache")
    info = found.info
    assert set(info["modality"]) == {"CR"} and info["count"] == 7
    assert "JPEG Baseline (Process 1)" in info["transfer_syntaxes"]
    assert "JPEG-LS Lossless Image Compression" in info["transfer_syntaxes"]
    assert any(note.startswith("jpeg-lossless:") for note in info["left_out"])
    assert any("NIH chest X-rays" in note for note in info["left_out"])
    assert set(info["made_by"]) <= {"pydicom", "pillow", "as pydicom-data has it"}
