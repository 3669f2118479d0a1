"""Every transfer syntax the node accepts, made by real dcmtk tools from the NEMA CR radiograph.

Lossless encodings must give the *identical* display image and model input; lossy ones a close
one, within a bound stated per codec. Tolerances are in model-input units: the model sees
``[-1024, 1024]``, so one display step (of 65535) is 2048/65535 = 0.031 units, and under a
LINEAR window of width ``w`` one stored level is ``2048 / (w - 1)`` units (:func:`level`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_tool
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

import dicom_io
from domain import SourceImage
from inference import Preprocessing, pre_process

# dcmtk tool and options -> the transfer syntax it must write.
LOSSLESS: dict[str, tuple[list[str], str]] = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], JPEGLosslessSV1),
    "jpeg-lossless-p14-sv6": (["dcmcjpeg", "+el"], JPEGLossless),
    "jpeg-lossless-p14-sv4": (["dcmcjpeg", "+el", "+sv", "4"], JPEGLossless),
    "jpeg-lossless-fragmented": (["dcmcjpeg", "+e1", "+fs", "64"], JPEGLosslessSV1),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], JPEGLSLossless),
    "rle": (["dcmcrle"], RLELossless),
    "deflated": (["dcmconv", "+td"], DeflatedExplicitVRLittleEndian),
    "explicit-big-endian": (["dcmconv", "+tb"], ExplicitVRBigEndian),
    "implicit-little-endian": (["dcmconv", "+ti"], ImplicitVRLittleEndian),
    "explicit-little-endian": (["dcmconv", "+te"], ExplicitVRLittleEndian),
}
NEAR = 2  # JPEG-LS near-lossless: every stored value within +-NEAR of the original


def encode(source: Path, out: Path, command: list[str]) -> Path:
    """Run a real dcmtk encoder; PixelSpacing 0\\0 in the NEMA file makes it warn, harmless."""
    tool = require_tool(command[0])
    subprocess.run([tool, *command[1:], str(source), str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def transfer_syntax(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def model_input(image: SourceImage) -> np.ndarray:
    x, _ = pre_process(image.pixels, image.maxval, Preprocessing())
    return x


def level(path: Path) -> float:
    """Model-input units per stored level of ``path`` under its own (first, LINEAR) window."""
    width = float(pydicom.dcmread(path, stop_before_pixels=True).WindowWidth)
    return 2048.0 / (width - 1.0)


@pytest.fixture(scope="module")
def reference(cr_path: Path) -> tuple[SourceImage, np.ndarray, np.ndarray]:
    """Display image, model input and stored values of the uncompressed RG1_UNCR.

    Its window (15000/30000) spans every stored value (874..26479) at 2.2 display steps per
    level, so equal display images mean equal stored values: comparing them is enough.
    """
    image = dicom_io.load(cr_path)
    stored = pydicom.dcmread(cr_path).pixel_array
    assert stored.min() >= 0 and stored.max() < 30000
    return image, model_input(image), stored


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codecs")


# --- lossless: identical ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_reencoding_is_identical(name: str, cr_path: Path, workdir: Path, reference):
    command, expected_ts = LOSSLESS[name]
    path = encode(cr_path, workdir / f"{name}.dcm", command)
    assert transfer_syntax(path) == expected_ts
    image = dicom_io.load(path)
    ref_image, ref_input, _ = reference
    assert image.pixels.dtype == np.uint16 and image.maxval == 65535
    assert np.array_equal(image.pixels, ref_image.pixels)
    assert image.steps == ref_image.steps
    assert np.array_equal(model_input(image), ref_input)


def test_j2k_lossless_is_identical(cr_j2k_lossless_path: Path, reference):
    assert transfer_syntax(cr_j2k_lossless_path) == JPEG2000Lossless
    ref_image, ref_input, _ = reference
    image = dicom_io.load(cr_j2k_lossless_path)
    assert np.array_equal(image.pixels, ref_image.pixels)
    assert np.array_equal(model_input(image), ref_input)


def test_lossless_from_bytes(cr_path: Path, workdir: Path, reference):
    """The network path: a received deflated object, read from bytes, not a file."""
    path = encode(cr_path, workdir / "deflated-bytes.dcm", ["dcmconv", "+td"])
    image = dicom_io.from_dataset(dicom_io.read_dataset(path.read_bytes()), "bytes")
    assert np.array_equal(image.pixels, reference[0].pixels)


# Other sample depths: the display of every lossless encoding equals that of the native source.


def crop(ds: Dataset, stored: np.ndarray) -> None:
    """Keep a 400 x 360 window of the lungs (fast), native explicit VR little endian."""
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def make_8_bit(ds: Dataset, stored: np.ndarray) -> None:
    crop(ds, (stored >> 7).astype(np.uint8))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.WindowCenter, ds.WindowWidth = 15000 / 128, 30000 / 128


def make_12_bit(ds: Dataset, stored: np.ndarray) -> None:
    crop(ds, (stored >> 3).astype("<u2"))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = 15000 / 8, 30000 / 8


def make_signed_16_bit(ds: Dataset, stored: np.ndarray) -> None:
    """Stored values minus 20000 (negative ones included), window moved with them."""
    crop(ds, (stored.astype(np.int32) - 20000).astype("<i2"))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    ds.WindowCenter = 15000 - 20000


def make_signed_12_bit(ds: Dataset, stored: np.ndarray) -> None:
    crop(ds, ((stored >> 3).astype(np.int32) - 2048).astype("<i2"))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.WindowCenter, ds.WindowWidth = 15000 / 8 - 2048, 30000 / 8


DEPTHS: dict[str, Callable[[Dataset, np.ndarray], None]] = {
    "8-bit": make_8_bit,
    "12-bit": make_12_bit,
    "signed-12-bit": make_signed_12_bit,
    "signed-16-bit": make_signed_16_bit,
}


def make_source(cr_path: Path, out: Path, depth: str, full: bool = False) -> Path:
    if out.exists():  # made by an earlier test of this module
        return out
    ds = pydicom.dcmread(cr_path)
    stored = ds.pixel_array if full else ds.pixel_array[700:1100, 700:1060]
    DEPTHS[depth](ds, stored)
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("depth", list(DEPTHS))
@pytest.mark.parametrize("name", ["jpeg-lossless-sv1", "jpeg-lossless-p14-sv6",
                                  "jpeg-ls-lossless", "rle", "explicit-big-endian"])
def test_lossless_other_depths(name: str, depth: str, cr_path: Path, workdir: Path):
    source = make_source(cr_path, workdir / f"source-{depth}.dcm", depth)
    native = dicom_io.load(source)
    assert native.pixels.std() > 1000, "the crop must hold a real image"
    command, expected_ts = LOSSLESS[name]
    path = encode(source, workdir / f"{name}-{depth}.dcm", command)
    assert transfer_syntax(path) == expected_ts
    assert np.array_equal(pydicom.dcmread(path).pixel_array, pydicom.dcmread(source).pixel_array)
    assert np.array_equal(dicom_io.load(path).pixels, native.pixels)


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_j2k_lossless_other_depths(depth: str, cr_path: Path, workdir: Path):
    """dcmtk has no JPEG 2000 encoder: pydicom's (OpenJPEG) makes these, signed ones included."""
    source = make_source(cr_path, workdir / f"source-{depth}.dcm", depth)
    ds = pydicom.dcmread(source)
    ds.compress(JPEG2000Lossless)
    path = workdir / f"j2k-{depth}.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert transfer_syntax(path) == JPEG2000Lossless
    assert np.array_equal(dicom_io.load(path).pixels, dicom_io.load(source).pixels)


def test_voi_lut_ow_survives_big_endian(cr_path: Path, workdir: Path):
    """An OW VOI LUT (16-bit words) is byte-swapped by dcmconv +tb and read back the same."""
    ds = pydicom.dcmread(cr_path)
    item = Dataset()
    item.LUTDescriptor = [32768, 0, 16]
    table = (65535 * np.sqrt(np.arange(32768) / 32767)).astype("<u2")
    item.add_new("LUTData", "OW", table.tobytes())
    ds.VOILUTSequence = Sequence([item])
    little = workdir / "voi-lut-le.dcm"
    ds.save_as(little, enforce_file_format=True)
    big = encode(little, workdir / "voi-lut-be.dcm", ["dcmconv", "+tb"])
    assert transfer_syntax(big) == ExplicitVRBigEndian
    a, b = dicom_io.load(little), dicom_io.load(big)
    assert any("VOI LUT" in step for step in a.steps)
    expected = 65535 - table[pydicom.dcmread(cr_path).pixel_array]  # MONOCHROME1
    assert np.array_equal(a.pixels, expected)
    assert np.array_equal(b.pixels, expected)


# --- lossy: close -------------------------------------------------------------------------


def differences(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.mean()), float(d.max())


def test_jpeg_ls_near_lossless_within_near(cr_path: Path, workdir: Path, reference):
    """NEAR=2 bounds every stored value to +-2; through the window (width 30000) that is
    2 levels + 1 display rounding step in the model input: an exact guarantee, not a fit."""
    path = encode(cr_path, workdir / "jpeg-ls-near.dcm",
                  ["dcmcjpls", "+en", "+md", str(NEAR)])
    assert transfer_syntax(path) == JPEGLSNearLossless
    ref_image, ref_input, ref_stored = reference
    stored = pydicom.dcmread(path).pixel_array.astype(np.int64)
    assert np.abs(stored - ref_stored).max() <= NEAR
    image = dicom_io.load(path)
    bound = NEAR * level(path) + 2048 / 65535
    _, worst = differences(model_input(image), ref_input)
    assert 0 < worst <= bound
    display_bound = NEAR * 65535 / (30000 - 1) + 1
    assert differences(image.pixels, ref_image.pixels)[1] <= display_bound


@pytest.mark.parametrize(("option", "expected_ts", "bits"),
                         [("+ee", JPEGExtended12Bit, 12), ("+eb", JPEGBaseline8Bit, 8)])
def test_dcmtk_lossy_jpeg_of_15_bit_source(option: str, expected_ts: str, bits: int,
                                           cr_path: Path, workdir: Path, reference):
    """dcmcjpeg requantises the 15-bit source to 12 (extended) or 8 (baseline) bits itself and
    rewrites the window to match. Requantisation costs up to half a level of the new depth,
    DCT at quality 90 a little more; the resize to 224 averages both down. Bound: mean error
    at most half a level, worst pixel at most two levels (level = 0.55 units at 12 bits,
    8.8 units at 8 bits, see :func:`level`)."""
    path = encode(cr_path, workdir / f"jpeg{option}.dcm", ["dcmcjpeg", option])
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == expected_ts
    assert header.BitsStored == bits and header.LossyImageCompression == "01"
    image = dicom_io.load(path)
    mean, worst = differences(model_input(image), reference[1])
    assert mean <= 0.5 * level(path) and worst <= 2 * level(path), (mean, worst, level(path))


@pytest.mark.parametrize(("depth", "option", "expected_ts", "psnr"),
                         [("12-bit", "+ee", JPEGExtended12Bit, 55.0),
                          ("8-bit", "+eb", JPEGBaseline8Bit, 45.0)])
def test_lossy_jpeg_against_its_own_depth(depth: str, option: str, expected_ts: str,
                                          psnr: float, cr_path: Path, workdir: Path):
    """The same codecs on a 12-/8-bit source made here: no requantisation, only the DCT error,
    against the uncompressed source of the same depth. Bounds: in the model input mean error
    at most a quarter level and worst at most one level (the 224 resize averages the 8x8
    block error); at full resolution the PSNR of a quality-90 JPEG, at least 55 dB at 12 bits
    and 45 dB at 8 bits (display scale 65535)."""
    source = make_source(cr_path, workdir / f"lossy-source-{depth}.dcm", depth, full=True)
    path = encode(source, workdir / f"lossy-{depth}.dcm", ["dcmcjpeg", option])
    assert transfer_syntax(path) == expected_ts
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.BitsStored == pydicom.dcmread(source, stop_before_pixels=True).BitsStored
    lossy, native = dicom_io.load(path), dicom_io.load(source)
    mean, worst = differences(model_input(lossy), model_input(native))
    assert 0 < mean <= 0.25 * level(path) and worst <= level(path), (mean, worst, level(path))
    mse = np.mean((lossy.pixels.astype(np.float64) - native.pixels) ** 2)
    assert 10 * np.log10(65535**2 / mse) >= psnr


def test_j2k_lossy_close(cr_j2k_lossy_path: Path, reference):
    """RG1_J2KI is about 10:1 irreversible J2K of the same image. Bound: mean error at most 1
    and worst pixel at most 4 model-input units, i.e. 0.05 % and 0.2 % of the 2048 span."""
    assert transfer_syntax(cr_j2k_lossy_path) == JPEG2000
    image = dicom_io.load(cr_j2k_lossy_path)
    assert image.pixels.shape == reference[0].pixels.shape
    mean, worst = differences(model_input(image), reference[1])
    assert 0 < mean <= 1.0 and worst <= 4.0, (mean, worst)
    assert np.corrcoef(model_input(image).ravel(), reference[1].ravel())[0, 1] > 0.9999
