"""The heat-map capture speaks for itself: outlines, a legend band, a compact transfer syntax.

Built with ``build_sc`` directly on the NEMA CR (1955 x 1841, invalid ``0\\0`` Pixel Spacing):
a Gaussian heat map, its half-maximum circle as the first region and a box as the second.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_tool
from pydicom.dataset import Dataset

import dicom_io
from dicom_io.results import legend
from dicom_io.results._common import ModelIdentity
from dicom_io.results.sc import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    SC_TRANSFER_SYNTAXES,
    build_sc,
    capture_pixels,
)
from dicom_io.results.source import SourceContext, source_context
from domain import Region

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9)
MODEL = ModelIdentity("PadChest DenseNet", "1.2", "cxr-node tests", "ab" * 32)
SIGMA = 60.0


def _centre(source: SourceContext) -> tuple[int, int]:
    return int(source.rows * 0.25), int(source.columns * 0.7)


def _values(source: SourceContext) -> np.ndarray:
    r0, c0 = _centre(source)
    rows, cols = np.mgrid[0:source.rows, 0:source.columns]
    d2 = (rows - r0) ** 2 + (cols - c0) ** 2
    return np.exp(-d2 / (2.0 * SIGMA**2)).astype(np.float32)


def _circle(source: SourceContext) -> np.ndarray:
    """The map's half-maximum outline: (column, row), pixel centres at + 0.5, closed."""
    r0, c0 = _centre(source)
    radius = SIGMA * np.sqrt(2.0 * np.log(2.0))
    angles = np.linspace(0.0, 2.0 * np.pi, 65)
    points = np.stack([c0 + 0.5 + radius * np.cos(angles), r0 + 0.5 + radius * np.sin(angles)],
                      axis=1)
    points[-1] = points[0]
    return points.astype(np.float32)


BOX = np.array([[200.5, 1400.5], [700.5, 1400.5], [700.5, 1800.5], [200.5, 1800.5],
                [200.5, 1400.5]], np.float32)


@pytest.fixture(scope="module")
def source(cr_path: Path) -> SourceContext:
    return source_context(dicom_io.load(cr_path))


@pytest.fixture(scope="module")
def regions(source: SourceContext) -> list[Region]:
    return [Region("Nodule", 0.91, 0.5, _circle(source), 0.5),
            Region("Pleural effusion", 0.72, 0.4, BOX, 0.5)]


def _build(source: SourceContext, **kw) -> Dataset:
    args = {
        "label": "Nodule", "method": "gradcam", "signed": False, "model": MODEL, "when": WHEN,
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_number": 9002, "sop_instance_uid": "1.2.826.0.1.3680043.8.498.2",
        "series_description": "AI heat map Nodule - not for diagnostic use",
    }
    return build_sc(source, _values(source), **{**args, **kw})


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def positive(source: SourceContext, regions: list[Region]) -> bytes:
    return _part10(_build(source, regions=regions, probability=0.91))


@pytest.fixture(scope="module")
def negative(source: SourceContext) -> bytes:
    below = Region("Nodule", 0.31, 0.5, _circle(source), 0.5)
    return _part10(_build(source, regions=[below], probability=np.float32(0.31),
                          findings_above_threshold=np.bool_(False)))


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def _jpeg_sampling(frame: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of each component, from the SOF0 marker."""
    at = frame.index(b"\xff\xc0")
    count = frame[at + 9]
    return [(frame[at + 11 + 3 * i] >> 4, frame[at + 11 + 3 * i] & 15) for i in range(count)]


# -- geometry, syntax, size --

def test_capture_keeps_the_columns_and_grows_by_the_legend(
    source: SourceContext, positive: bytes, regions: list[Region]
) -> None:
    ds = _read(positive)
    band = legend.legend_band(
        source.columns, regions=regions, colours=legend.region_colours(2), label="Nodule",
        method="gradcam", probability=0.91, findings_above_threshold=True,
        scale=np.zeros((2, 3), np.uint8), scale_ends=("0", "1"), model="PadChest DenseNet 1.2",
    )
    assert ds.Columns == source.columns
    assert ds.Rows == source.rows + len(band) > source.rows
    assert "PixelSpacing" not in ds  # the CR's is 0\0: never copied
    assert ds.BurnedInAnnotation == "YES" and ds.RecognizableVisualFeatures == "NO"


def test_default_syntax_is_compact_jpeg_baseline(positive: bytes) -> None:
    ds = _read(positive)
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE == SC_TRANSFER_SYNTAXES[0]
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"  # one step: the capture's
    ratio = float(ds.LossyImageCompressionRatio)
    assert ratio == pytest.approx(ds.Rows * ds.Columns * 3 / len(positive), rel=0.01)
    assert len(positive) < 1_000_000  # 10.8 MB uncompressed
    [frame] = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)
    assert _jpeg_sampling(frame) == [(2, 1), (1, 1), (1, 1)]  # 4:2:2, as YBR_FULL_422 says


@pytest.mark.parametrize("plugin", ["pylibjpeg", "pillow"])
def test_the_jpeg_decodes_to_the_drawn_capture(
    source: SourceContext, regions: list[Region], positive: bytes, plugin: str
) -> None:
    ds = _read(positive)
    ds.pixel_array_options(decoding_plugin=plugin)
    decoded = ds.pixel_array
    assert decoded.shape == (ds.Rows, ds.Columns, 3) and decoded.dtype == np.uint8
    drawn = capture_pixels(source, _values(source), label="Nodule", method="gradcam",
                           signed=False, model=MODEL, regions=regions, probability=0.91)
    error = np.abs(decoded.astype(np.int16) - drawn.astype(np.int16))
    assert float(error.mean()) < 3.0  # RGB, not YCbCr read as RGB


def test_lossy_source_history_comes_first(cr_j2k_lossy_path: Path) -> None:
    source = source_context(dicom_io.load(cr_j2k_lossy_path))
    ds = _build(source)
    assert str(ds.LossyImageCompressionRatio[0]) == "10"
    assert list(ds.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]


@pytest.mark.parametrize("spacing", [(0.2, 0.25), (0.0, 0.0), (-0.2, 0.2), None])
def test_pixel_spacing_is_kept_only_when_valid(cr_path: Path, spacing) -> None:
    """From the source's header, as the node reads it (the NEMA CR has ``0\\0``)."""
    header = pydicom.dcmread(cr_path)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in header:
            delattr(header, keyword)
    if spacing is not None:
        header.PixelSpacing = list(spacing)
    source = source_context(dicom_io.from_dataset(header, "spacing.dcm"))
    ds = _build(source, transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)
    if spacing == (0.2, 0.25):
        assert [float(v) for v in ds.PixelSpacing] == [0.2, 0.25]
    else:
        assert "PixelSpacing" not in ds


@pytest.mark.parametrize("syntax", SC_TRANSFER_SYNTAXES)
def test_dciodvfy_accepts_each_syntax(
    source: SourceContext, regions: list[Region], positive: bytes, tmp_path: Path, syntax: str
) -> None:
    if syntax == JPEG_BASELINE:
        data = positive
    else:
        spaced = dataclasses.replace(source, pixel_spacing=(0.2, 0.25))
        ds = _build(spaced, regions=regions, probability=0.91, transfer_syntax=syntax)
        data = _part10(ds)
        drawn = capture_pixels(source, _values(source), label="Nodule", method="gradcam",
                               signed=False, model=MODEL, regions=regions, probability=0.91)
        assert np.array_equal(_read(data).pixel_array, drawn)  # lossless
        assert _read(data).LossyImageCompression == "00"
    path = tmp_path / "sc.dcm"
    path.write_bytes(data)
    assert _dciodvfy_errors(path) == []


# -- what the pixels say --

def _near(rgb: np.ndarray, column: float, row: float, colour, tolerance: int) -> bool:
    c, r = int(column), int(row)
    patch = rgb[r - 1:r + 2, c - 1:c + 2].astype(int)
    return bool(np.any(np.abs(patch - np.array(colour)).max(axis=-1) <= tolerance))


def test_each_region_is_outlined_in_its_colour(
    source: SourceContext, regions: list[Region], positive: bytes
) -> None:
    drawn = capture_pixels(source, _values(source), label="Nodule", method="gradcam",
                           signed=False, model=MODEL, regions=regions, probability=0.91)
    decoded = _read(positive).pixel_array
    colours = legend.region_colours(len(regions))
    assert len(set(colours)) == len(colours)
    for region, colour in zip(regions, colours, strict=True):
        middles = (region.points[:-1] + region.points[1:]) / 2.0
        for column, row in middles:
            assert _near(drawn, column, row, colour, 0), (region.label, column, row)
            assert _near(decoded, column, row, colour, 60), (region.label, column, row)
    inside = drawn[_centre(source)]
    assert tuple(inside) not in colours  # outlined, not filled
    assert legend.outline_thickness(source.columns) >= 2


def _band(data: bytes, source: SourceContext) -> np.ndarray:
    return _read(data).pixel_array[source.rows:]


def test_legend_band_names_the_findings_or_says_none_is_positive(
    source: SourceContext, positive: bytes, negative: bytes
) -> None:
    yes, no = _band(positive, source), _band(negative, source)
    for band in (yes, no):
        lit = np.count_nonzero(band.max(axis=-1) > 100)
        assert lit > 0.02 * band.shape[0] * band.shape[1]  # text and the colour bar
    magenta = np.array(legend.PALETTE[0])
    notice = np.array(legend.NOTICE)

    def count(band: np.ndarray, colour: np.ndarray) -> int:
        return int(np.count_nonzero(np.abs(band.astype(int) - colour).max(axis=-1) < 40))

    assert count(yes, magenta) > 100 and count(yes, notice) == 0
    assert count(no, notice) > 100
    assert yes.shape != no.shape or not np.array_equal(yes, no)
    assert 16 <= legend.text_height(source.columns) <= 0.025 * source.columns


def test_legend_wraps_in_narrow_images_and_draws_any_label() -> None:
    box = Region("Épanchement pleural très long", 0.2, 0.5, BOX, 0.5)
    band = legend.legend_band(
        256, regions=[box], colours=legend.region_colours(1), label="Épanchement",
        method="gradcam", probability=None, findings_above_threshold=False,
        scale=np.zeros((2, 3), np.uint8), scale_ends=("-1", "+1"), model="Modèle 1",
    )
    assert band.shape[1] == 256 and band.dtype == np.uint8
    assert band.shape[0] > 6 * legend.text_height(256)  # wrapped onto several lines
    assert legend.ascii_text("Épanchement → x") == "Epanchement ? x"
    assert legend.percent(0.004) == "<1 %" and legend.percent(0.996) == ">99 %"
    assert legend.percent(0.913) == "91 %"


# -- refusals --

@pytest.mark.parametrize(("kw", "error", "named"), [
    ({"transfer_syntax": "1.2.840.10008.1.2.5"}, ValueError, "1.2.840.10008.1.2.5"),
    ({"transfer_syntax": 50}, TypeError, "int"),
    ({"regions": ["Nodule"]}, TypeError, "'Nodule'"),
    ({"regions": "Nodule"}, TypeError, "str"),
    ({"probability": 1.5}, ValueError, "1.5"),
    ({"probability": float("nan")}, ValueError, "nan"),
    ({"findings_above_threshold": "no"}, TypeError, "str"),
])
def test_bad_arguments_are_refused_naming_the_value(
    source: SourceContext, kw: dict, error: type, named: str
) -> None:
    with pytest.raises(error, match=named):
        _build(source, **kw)


def test_outline_refuses_what_it_cannot_draw_on(regions: list[Region]) -> None:
    with pytest.raises(ValueError, match="uint16"):
        legend.outline(np.zeros((10, 10, 3), np.uint16), regions[:1], legend.region_colours(1))
    with pytest.raises(ValueError, match="1 colours for 2 regions"):
        legend.outline(np.zeros((10, 10, 3), np.uint8), regions, legend.region_colours(1))
    with pytest.raises(ValueError, match="300"):
        legend.outline(np.zeros((10, 10, 3), np.uint8), regions[:1], [(300, 0, 0)])
