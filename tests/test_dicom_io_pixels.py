"""display_pixels on synthetic datasets: modality LUT, VOI (window / LUT), inversion, depths.

Every expected value here is computed from the DICOM formulas (PS3.3 C.11.1, C.11.2, C.8.11.3)
written out in the test, not by calling the code under test or pydicom's LUT functions.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io import DISPLAY_MAX, InvalidInputError, display_pixels
from dicom_io.uids import CR_IMAGE_STORAGE

ROWS, COLUMNS = 32, 64


def make_ds(
    values: np.ndarray,
    bits_stored: int,
    *,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    **attributes: object,
) -> Dataset:
    """A single-frame grayscale CR dataset holding ``values`` (native, explicit VR LE)."""
    values = np.asarray(values).reshape(ROWS, COLUMNS)
    bits_allocated = 8 if bits_stored <= 8 else 16
    dtype = f"{'i' if signed else 'u'}{bits_allocated // 8}"
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (
        0, 2**bits_stored - 1)
    assert lo <= values.min() and values.max() <= hi, "test values do not fit BitsStored"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = values.astype(f"<{dtype}").tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def ramp(lo: int, hi: int) -> np.ndarray:
    """ROWS x COLUMNS integers from lo to hi inclusive (both ends present)."""
    return np.rint(np.linspace(lo, hi, ROWS * COLUMNS)).astype(np.int64).reshape(ROWS, COLUMNS)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) with output 0..DISPLAY_MAX, as float."""
    x = np.asarray(x, dtype=np.float64)
    c, w = center - 0.5, width - 1.0
    y = ((x - c) / w + 0.5) * DISPLAY_MAX
    y[x <= c - w / 2] = 0
    y[x > c + w / 2] = DISPLAY_MAX
    return y


def min_max(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min()) * DISPLAY_MAX


def voi_lut_item(table: np.ndarray, first_mapped: int, bits: int, ow: bool = False) -> Dataset:
    """A VOI LUT Sequence item; LUT Data as US values, or as OW words (little endian)."""
    item = Dataset()
    item.LUTDescriptor = [len(table) % 65536, first_mapped, bits]
    if ow:
        item.add_new("LUTData", "OW", np.asarray(table, dtype="<u2").tobytes())
    else:
        item.add_new("LUTData", "US", [int(v) for v in table])
    item.LUTExplanation = "test"
    return item


def assert_display(out, expected: np.ndarray, atol: int = 1) -> None:
    assert out.array.dtype == np.uint16
    assert out.array.shape == (ROWS, COLUMNS)
    diff = np.abs(out.array.astype(np.int64) - np.asarray(expected, dtype=np.float64))
    assert diff.max() <= atol, f"display differs by up to {diff.max()}"


# --- bit depths and signedness, no VOI: full range min..max ---------------------------------


@pytest.mark.parametrize(
    ("bits", "signed", "lo", "hi"),
    [
        (8, False, 3, 250),
        (12, False, 0, 4095),
        (12, False, 1000, 3000),
        (15, False, 874, 26479),
        (16, False, 0, 65535),
        (16, False, 1, 2),
        (8, True, -128, 127),
        (12, True, -2048, 2047),
        (12, True, -700, -100),
        (16, True, -32768, 32767),
    ],
)
def test_no_voi_maps_min_to_0_and_max_to_full_scale(bits: int, signed: bool, lo: int, hi: int):
    values = ramp(lo, hi)
    out = display_pixels(make_ds(values, bits, signed=signed))
    assert out.maxval == DISPLAY_MAX == 65535
    assert out.array.min() == 0 and out.array.max() == DISPLAY_MAX
    assert out.array[0, 0] == 0 and out.array[-1, -1] == DISPLAY_MAX
    assert_display(out, min_max(values), atol=1)
    assert any("min to max" in step for step in out.steps)


def test_signed_12_bit_is_sign_extended_not_read_as_large_unsigned():
    """-1 stored in 12 of 16 bits is 0x0FFF on disk: it must sort below 0, not above 2047."""
    values = np.zeros((ROWS, COLUMNS), dtype=np.int64)
    values[:, : COLUMNS // 2] = -1
    values[:, COLUMNS // 2:] = 5
    ds = make_ds(values, 12, signed=True)
    ds.PixelData = (values & 0x0FFF).astype("<u2").tobytes()  # high bits zero, as many writers do
    out = display_pixels(ds)
    assert out.array[0, 0] == 0 and out.array[0, -1] == DISPLAY_MAX


def test_unsigned_ignores_bits_above_high_bit():
    """Garbage in the unused high bits (overlay remnants) must not change the image."""
    values = ramp(0, 4095)
    ds = make_ds(values, 12, WindowCenter=2048, WindowWidth=4096)
    clean = display_pixels(ds).array
    ds.PixelData = (values | 0xF000).astype("<u2").tobytes()
    assert np.array_equal(display_pixels(ds).array, clean)


# --- windows --------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "signed"), [(8, False), (12, False), (16, False), (12, True)])
def test_window_spans_output_range(bits: int, signed: bool):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = ramp(lo, hi)
    center = (lo + hi) / 2 + (hi - lo) / 8
    width = (hi - lo) / 3
    out = display_pixels(make_ds(values, bits, signed=signed, WindowCenter=center,
                                 WindowWidth=width))
    assert_display(out, linear_window(values, center, width))
    below = values <= center - width / 2 - 1
    above = values > center + width / 2
    assert below.any() and above.any()
    assert (out.array[below] == 0).all()
    assert (out.array[above] == DISPLAY_MAX).all()
    middle = out.array[(values > center - width / 4) & (values < center + width / 4)]
    assert middle.min() > 0 and middle.max() < DISPLAY_MAX


def test_first_of_several_windows_is_used():
    values = ramp(0, 4095)
    both = make_ds(values, 12, WindowCenter=[1000, 3000], WindowWidth=[500, 2000])
    first = make_ds(values, 12, WindowCenter=1000, WindowWidth=500)
    second = make_ds(values, 12, WindowCenter=3000, WindowWidth=2000)
    out = display_pixels(both)
    assert np.array_equal(out.array, display_pixels(first).array)
    assert not np.array_equal(out.array, display_pixels(second).array)
    assert_display(out, linear_window(values, 1000, 500))
    assert any("first of 2" in step for step in out.steps)


def test_rescale_slope_and_intercept_applied_before_window():
    """The window is in rescaled units: stored 0..4095 -> 2*x - 1000 = -1000..7190."""
    values = ramp(0, 4095)
    ds = make_ds(values, 12, RescaleSlope=2, RescaleIntercept=-1000,
                 WindowCenter=3000, WindowWidth=4000)
    out = display_pixels(ds)
    assert_display(out, linear_window(2 * values - 1000, 3000, 4000))
    assert any("rescale slope" in step for step in out.steps)
    # Without the rescale the same window would cut at different stored values.
    assert not np.array_equal(out.array, display_pixels(
        make_ds(values, 12, WindowCenter=3000, WindowWidth=4000)).array)


def test_rescale_without_window_is_linear():
    values = ramp(0, 4095)
    out = display_pixels(make_ds(values, 12, RescaleSlope=0.5, RescaleIntercept=100))
    assert_display(out, min_max(0.5 * values + 100))


def test_negative_rescale_slope_keeps_window_orientation():
    """PS3.3 C.11.2.1.2.1: values below the window give the minimum output (black), whatever
    the sign of the rescale slope that produced them."""
    values = ramp(0, 4095)
    ds = make_ds(values, 12, RescaleSlope=-1, RescaleIntercept=4095,
                 WindowCenter=2048, WindowWidth=1024)
    out = display_pixels(ds)
    rescaled = 4095 - values
    assert_display(out, linear_window(rescaled, 2048, 1024))
    assert (out.array[rescaled < 1500] == 0).all()
    assert (out.array[rescaled > 2600] == DISPLAY_MAX).all()


def test_linear_exact_and_sigmoid_functions():
    values = ramp(0, 4095)
    exact = display_pixels(make_ds(values, 12, WindowCenter=2000, WindowWidth=1000,
                                   VOILUTFunction="LINEAR_EXACT"))
    x = values.astype(np.float64)
    expected = np.clip((x - 2000) / 1000 + 0.5, 0, 1) * DISPLAY_MAX
    assert_display(exact, expected)
    sigmoid = display_pixels(make_ds(values, 12, WindowCenter=2000, WindowWidth=1000,
                                     VOILUTFunction="SIGMOID"))
    assert_display(sigmoid, DISPLAY_MAX / (1 + np.exp(-4 * (x - 2000) / 1000)))


def test_unusable_window_falls_back_to_min_max():
    values = ramp(100, 900)
    out = display_pixels(make_ds(values, 12, WindowCenter=500, WindowWidth=0))
    assert_display(out, min_max(values))


# --- VOI LUT sequence -----------------------------------------------------------------------


@pytest.mark.parametrize("ow", [False, True], ids=["US", "OW"])
@pytest.mark.parametrize("lut_bits", [16, 12, 10, 8])
def test_voi_lut_sequence_preferred_over_window(lut_bits: int, ow: bool):
    """A non-linear 4096-entry LUT, first mapped value 100; a window is present but ignored.

    8-bit entries with more than 256 of them are legal (PS3.3 C.11.2.1.1); pydicom 3.0's
    ``apply_voi`` wraps such inputs modulo 256.
    """
    values = ramp(0, 4095)
    n, first = 4096, 100
    top = 2**lut_bits - 1
    table = np.rint(top * (np.arange(n) / (n - 1)) ** 2).astype(np.int64)
    ds = make_ds(values, 12, WindowCenter=1000, WindowWidth=200,
                 RescaleSlope=1, RescaleIntercept=0)  # DX always carries a rescale
    ds.VOILUTSequence = Sequence([voi_lut_item(table, first, lut_bits, ow)])
    out = display_pixels(ds)
    index = np.clip(values - first, 0, n - 1)
    assert_display(out, table[index] * (DISPLAY_MAX / top), atol=1)
    assert any("VOI LUT" in step for step in out.steps)


def test_voi_lut_after_rescale_indexes_rescaled_values():
    """The VOI LUT input is the modality LUT output: 65536 entries (descriptor 0), first -1000."""
    values = ramp(0, 4095)
    table = np.arange(65536)[::-1]
    ds = make_ds(values, 12, RescaleSlope=1, RescaleIntercept=-1024)
    ds.VOILUTSequence = Sequence([voi_lut_item(table, -1000, 16)])
    index = np.clip(values - 1024 + 1000, 0, 65535)
    assert_display(display_pixels(ds), table[index], atol=0)


def test_broken_voi_lut_falls_back_to_window():
    values = ramp(0, 4095)
    ds = make_ds(values, 12, WindowCenter=1000, WindowWidth=500)
    ds.VOILUTSequence = Sequence([voi_lut_item(np.arange(10), 0, 16)])
    ds.VOILUTSequence[0].LUTDescriptor = [4096, 0, 16]  # claims more entries than it holds
    assert_display(display_pixels(ds), linear_window(values, 1000, 500))


def test_first_voi_lut_item_is_used():
    values = ramp(0, 1023)
    up = np.arange(1024) * 64
    down = up[::-1]
    ds = make_ds(values, 10)
    ds.VOILUTSequence = Sequence([voi_lut_item(up, 0, 16), voi_lut_item(down, 0, 16)])
    assert_display(display_pixels(ds), up[values])


# --- photometric interpretation -------------------------------------------------------------


def test_monochrome1_is_inverted():
    values = ramp(0, 4095)
    kwargs = {"WindowCenter": 2000, "WindowWidth": 3000}
    mono2 = display_pixels(make_ds(values, 12, **kwargs)).array.astype(np.int64)
    mono1 = display_pixels(make_ds(values, 12, photometric="MONOCHROME1", **kwargs))
    assert np.array_equal(mono1.array.astype(np.int64), DISPLAY_MAX - mono2)
    assert mono1.array[0, 0] == DISPLAY_MAX  # lowest stored value is white in MONOCHROME1
    assert any("inverted" in step for step in mono1.steps)


def test_monochrome1_with_inverse_presentation_lut_is_inverted_once():
    values = ramp(0, 255)
    mono1 = display_pixels(make_ds(values, 8, photometric="MONOCHROME1"))
    both = display_pixels(make_ds(values, 8, photometric="MONOCHROME1",
                                  PresentationLUTShape="INVERSE"))
    assert np.array_equal(mono1.array, both.array)
    identity = display_pixels(make_ds(values, 8, PresentationLUTShape="IDENTITY"))
    assert identity.array[0, 0] == 0 and mono1.array[0, 0] == DISPLAY_MAX


# --- failures -------------------------------------------------------------------------------


def test_blank_image_is_invalid():
    with pytest.raises(InvalidInputError) as e:
        display_pixels(make_ds(np.full((ROWS, COLUMNS), 77), 12))
    assert e.value.code == "blank-image"


def test_undecodable_pixel_data_is_decode_failed():
    ds = make_ds(ramp(0, 255), 8)
    ds.PixelData = b"\x00" * 10
    with pytest.raises(InvalidInputError) as e:
        display_pixels(ds)
    assert e.value.code == "decode-failed"


# --- the lookup table over stored values equals the per-pixel pipeline ---------------------


def _sparse_values(rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    """Random values with gaps (values absent from the image must not shift min..max)."""
    picks = rng.choice(np.arange(lo, hi + 1), size=7, replace=False)
    return rng.choice(picks, size=(ROWS, COLUMNS))


@pytest.mark.parametrize(
    ("bits", "signed", "attributes"),
    [
        (15, False, {"photometric": "MONOCHROME1"}),
        (12, False, {"WindowCenter": 2000, "WindowWidth": 1000}),
        (12, False, {"WindowCenter": 2000, "WindowWidth": 1000, "VOILUTFunction": "SIGMOID"}),
        (12, False, {"WindowCenter": 2000, "WindowWidth": 1000,
                     "VOILUTFunction": "LINEAR_EXACT", "RescaleSlope": -1,
                     "RescaleIntercept": 4095}),
        (16, True, {"RescaleSlope": 0.25, "RescaleIntercept": -100}),
        (16, True, {}),
        (8, False, {"PresentationLUTShape": "INVERSE"}),
        (12, False, {"VOILUTSequence": "lut"}),
        (12, False, {"WindowCenter": 500, "WindowWidth": 0}),
    ],
)
def test_table_lookup_equals_the_pixelwise_pipeline(bits: int, signed: bool, attributes: dict):
    rng = np.random.default_rng(bits * 7 + len(attributes))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if attributes.get("VOILUTSequence") == "lut":
        attributes = {"VOILUTSequence": [voi_lut_item(rng.integers(0, 4096, 4096), 0, 12)]}
    for values in (rng.integers(lo, hi + 1, size=(ROWS, COLUMNS)),
                   _sparse_values(rng, lo, hi)):
        ds = make_ds(values, bits, signed=signed, **attributes)
        table, direct = display_pixels(ds), display_pixels(ds, table=False)
        assert np.array_equal(table.array, direct.array)
        assert table.steps == direct.steps


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits", [9, 12, 15, 16])
@pytest.mark.parametrize("voi", [{}, {"WindowCenter": 100, "WindowWidth": 300}],
                         ids=["min-max", "window"])
def test_lookup_by_raw_word_equals_decoding_with_garbage_high_bits(bits: int, signed: bool,
                                                                   voi: dict):
    """Uncompressed 16-bit images are looked up by the word on disk, without pixel_array:
    bits above BitsStored (overlay remnants, or a sign the writer extended) are ignored and
    the sign is taken from bit BitsStored - 1, exactly as pixel_array does."""
    rng = np.random.default_rng(bits + 100 * signed)
    ds = make_ds(np.zeros((ROWS, COLUMNS), dtype=np.int64), bits, signed=signed, **voi)
    ds.PixelData = rng.integers(0, 2**16, size=ROWS * COLUMNS).astype("<u2").tobytes()
    table, direct = display_pixels(ds), display_pixels(ds, table=False)
    assert np.array_equal(table.array, direct.array)
    assert table.steps == direct.steps
    assert len(np.unique(table.array)) > 5  # not one saturated value
