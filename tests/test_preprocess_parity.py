"""The pixels the model sees from a DICOM equal what training saw from a PNG of the same image.

The training side is written out here literally as torchxrayvision's PadChest (16-bit PNG,
maxval 65535) and NIH (8-bit PNG, maxval 255) datasets do it: ``skimage.io.imread``,
``xrv.datasets.normalize(img, maxval, reshape=True)``, ``XRayCenterCrop()``,
``XRayResizer(224)``. The node's side is :func:`inference.pre_process` on ``dicom_io``
output: within two float32 rounding steps of training's values by default, bit for bit with
``resize="skimage-reference"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage.io
import torchxrayvision as xrv

import dicom_io
from domain import SourceImage
from inference import Preprocessing, pre_process
from inference.preprocess import Geometry

SIZE = 224


def training_input(png: Path, maxval: int) -> np.ndarray:
    """torchxrayvision's dataset __getitem__ plus its transform, step by step."""
    img = skimage.io.imread(str(png))
    img = xrv.datasets.normalize(img, maxval, reshape=True)
    img = xrv.datasets.XRayCenterCrop()(img)
    return xrv.datasets.XRayResizer(SIZE)(img)


def write_png16(pixels: np.ndarray, path: Path) -> Path:
    """A 16-bit grayscale PNG (PIL, light compression for speed) that must read back exactly."""
    from PIL import Image

    assert pixels.dtype == np.uint16
    Image.fromarray(pixels).save(path, compress_level=1)
    back = skimage.io.imread(str(path))
    assert back.dtype == np.uint16 and np.array_equal(back, pixels), "PNG did not round-trip"
    return path


#: The node computes training's resize in float64 where skimage rounds to float32 between its
#: passes: at most two float32 steps apart at the ends of [-1024, 1024] (2**-13 each).
TRAINING_ATOL = 2 * 2.0**-13


def assert_training(x: np.ndarray, expected: np.ndarray) -> None:
    assert x.shape == expected.shape and x.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=0, atol=TRAINING_ATOL)


def node_input(image: SourceImage) -> np.ndarray:
    x, geometry = pre_process(image.pixels, image.maxval, Preprocessing())
    assert geometry == Geometry.for_source(image.rows, image.columns, SIZE)
    return x


@pytest.fixture(scope="module")
def cr_image(cr_path: Path) -> SourceImage:
    return dicom_io.load(cr_path)


def test_dicom_matches_padchest_training_path(cr_image, tmp_path: Path):
    assert cr_image.maxval == 65535 and cr_image.pixels.dtype == np.uint16
    assert cr_image.pixels.shape == (1955, 1841)
    png = write_png16(cr_image.pixels, tmp_path / "rg1.png")
    expected = training_input(png, 65535)
    assert expected.shape == (1, SIZE, SIZE) and expected.dtype == np.float32
    from_dicom = node_input(cr_image)
    assert from_dicom.dtype == np.float32
    assert_training(from_dicom, expected)
    reference, _ = pre_process(cr_image.pixels, 65535, Preprocessing(resize="skimage-reference"))
    assert np.array_equal(reference, expected)  # torchxrayvision's own calls: bit for bit
    from_png = dicom_io.load(png)
    assert np.array_equal(node_input(from_png), from_dicom)
    assert from_png.maxval == 65535 and np.array_equal(from_png.pixels, cr_image.pixels)
    assert_training(node_input(from_png), expected)
    assert expected.min() >= -1024 and expected.max() <= 1024


def test_wide_dicom_matches_training_path(cr_path: Path, tmp_path: Path):
    """The radiograph stored transposed (1841 rows x 1955 columns): the crop cuts columns."""
    ds = pydicom.dcmread(cr_path)
    stored = np.ascontiguousarray(ds.pixel_array.T)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    wide = dicom_io.from_dataset(ds, "wide")
    assert wide.pixels.shape == (1841, 1955)
    png = write_png16(wide.pixels, tmp_path / "wide.png")
    expected = training_input(png, 65535)
    assert_training(node_input(wide), expected)
    assert_training(node_input(dicom_io.load(png)), expected)


@pytest.mark.parametrize("shape", [(600, 1001), (1001, 600), (333, 334), (512, 512)])
def test_odd_shapes_match_training_path(cr_image, tmp_path: Path, shape: tuple[int, int]):
    """Odd sides exercise the centre crop's integer rounding (dim // 2 - side // 2)."""
    rows, columns = shape
    pixels = np.ascontiguousarray(cr_image.pixels[200:200 + rows, 100:100 + columns])
    assert pixels.shape == shape
    png = write_png16(pixels, tmp_path / "crop.png")
    x, _ = pre_process(pixels, 65535, Preprocessing())
    assert_training(x, training_input(png, 65535))


# --- Geometry -------------------------------------------------------------------------------

GEOMETRIES = [(1955, 1841), (1841, 1955), (1024, 1024), (601, 1000), (3000, 2500), (224, 300)]


@pytest.mark.parametrize("shape", GEOMETRIES)
def test_geometry_matches_center_crop(shape: tuple[int, int]):
    rows, columns = shape
    g = Geometry.for_source(rows, columns, SIZE)
    probe = np.arange(rows * columns, dtype=np.float64).reshape(1, rows, columns)
    cropped = xrv.datasets.XRayCenterCrop()(probe)[0]
    assert cropped.shape == (g.side, g.side)
    assert cropped[0, 0] == probe[0, g.top, g.left]
    assert g.scale == g.side / SIZE


@pytest.mark.parametrize("shape", GEOMETRIES)
def test_model_and_source_coordinates_invert(shape: tuple[int, int]):
    g = Geometry.for_source(*shape, SIZE)
    for row, column in [(0, 0), (223, 223), (111.5, 17.25), (0, 223), (56, 180)]:
        back = g.source_to_model(*g.model_to_source(row, column))
        assert back == pytest.approx((row, column), abs=1e-9)
    for row, column in [(g.top, g.left), (g.top + g.side - 1, g.left + 3.5)]:
        back = g.model_to_source(*g.source_to_model(row, column))
        assert back == pytest.approx((row, column), abs=1e-9)
    # The model grid's outer edges are the crop square's outer edges.
    assert g.model_to_source(-0.5, -0.5) == pytest.approx((g.top - 0.5, g.left - 0.5))
    far = g.model_to_source(SIZE - 0.5, SIZE - 0.5)
    assert far == pytest.approx((g.top + g.side - 0.5, g.left + g.side - 0.5))


@pytest.mark.parametrize("shape", [(1955, 1841), (1841, 1955), (601, 1000)])
@pytest.mark.parametrize("spot", [(40, 170), (112, 112), (200, 15)])
def test_hot_spot_goes_back_to_its_source_location(shape, spot: tuple[int, int]):
    g = Geometry.for_source(*shape, SIZE)
    heat = np.zeros((SIZE, SIZE), dtype=np.float32)
    heat[spot] = 1.0
    on_source = g.to_source(heat, fill=-1.0)
    assert on_source.shape == shape and on_source.dtype == np.float32
    peak = np.unravel_index(np.argmax(on_source), shape)
    expected = g.model_to_source(*spot)
    assert abs(peak[0] - expected[0]) <= 1 and abs(peak[1] - expected[1]) <= 1, (peak, expected)
    # What the crop cut off, the model never saw: it gets the fill value.
    outside = np.ones(shape, dtype=bool)
    outside[g.top:g.top + g.side, g.left:g.left + g.side] = False
    assert (on_source[outside] == -1.0).all()
    assert (on_source[~outside] >= 0).all()


@pytest.mark.parametrize("shape", [(977, 920), (920, 977), (601, 1000)])
def test_source_spot_lands_where_geometry_says(shape: tuple[int, int]):
    """A bright square in the source shows up in pre_process's output at source_to_model."""
    rows, columns = shape
    g = Geometry.for_source(rows, columns, SIZE)
    for centre in [(g.top + g.side // 4, g.left + g.side // 3),
                   (g.top + g.side - 40, g.left + g.side - 60)]:
        pixels = np.zeros(shape, dtype=np.uint16)
        half = int(g.scale * 2)  # a few model pixels across
        pixels[centre[0] - half:centre[0] + half + 1, centre[1] - half:centre[1] + half + 1] = 65535
        x, _ = pre_process(pixels, 65535, Preprocessing())
        peak = np.unravel_index(np.argmax(x[0]), (SIZE, SIZE))
        expected = g.source_to_model(*centre)
        assert abs(peak[0] - expected[0]) <= 1 and abs(peak[1] - expected[1]) <= 1


def test_smooth_map_survives_source_round_trip():
    g = Geometry.for_source(1955, 1841, SIZE)
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    heat = np.exp(-((r - 90.0) ** 2 + (c - 140.0) ** 2) / (2 * 20.0**2)).astype(np.float32)
    back = g.to_model(g.to_source(heat))
    assert np.abs(back - heat).max() < 0.01


# --- 8-bit NIH PNGs -------------------------------------------------------------------------


def test_cxr14_8_bit_png(cxr14_dir: Path):
    """NIH_Dataset reads the same PNGs with normalize(img, 255); for the few RGBA ones in
    ChestX-ray14 both it and the node take channel 0."""
    from PIL import Image

    pngs = sorted(cxr14_dir.rglob("*.png"))
    assert pngs
    several_channels = [p for p in pngs if Image.open(p).mode not in ("L", "I;16", "I")]
    for png in pngs[:3] + several_channels[:2]:
        image = dicom_io.load(png)
        assert image.maxval == 255 and image.pixels.dtype == np.uint8
        assert image.pixels.ndim == 2
        assert image.header is None and image.key == png.stem
        x = node_input(image)
        assert x.shape == (1, SIZE, SIZE) and x.dtype == np.float32
        assert x.min() >= -1024 and x.max() <= 1024
        assert_training(x, training_input(png, 255))
