"""The input gate on the real NEMA CR radiograph, changed one attribute at a time.

Every broken or unsuitable input is refused with its own code and a reason naming the offending
value; ``load`` and ``from_dataset`` raise nothing but :class:`dicom_io.DicomIOError`.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    JPEG2000Lossless,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

import dicom_io
from dicom_io import DeclinedError, DicomIOError, InvalidInputError
from dicom_io.gate import check_header, check_identity, uid_problem
from dicom_io.uids import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    DX_PROCESSING_STORAGE,
    NODE_MANUFACTURER,
)

Mutation = Callable[[Dataset], None]

# pydicom warns about the broken headers these tests make on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cr(cr_path: Path) -> Dataset:
    return pydicom.dcmread(cr_path)


@pytest.fixture(scope="module")
def cr_pixels(cr_path: Path) -> np.ndarray:
    return dicom_io.load(cr_path).pixels


def changed(ds: Dataset, mutate: Mutation) -> Dataset:
    out = copy.deepcopy(ds)
    mutate(out)
    return out


def setting(**attributes: object) -> Mutation:
    def mutate(ds: Dataset) -> None:
        for keyword, value in attributes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return mutate


def raw(tag: int, vr: str, value: bytes) -> Mutation:
    """Put undecoded bytes into an element, as a file with a broken value would have them."""
    def mutate(ds: Dataset) -> None:
        ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return mutate


def view_code(meaning: str, value: str) -> Mutation:
    def mutate(ds: Dataset) -> None:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
        ds.ViewCodeSequence = Sequence([item])
        del ds.ViewPosition
    return mutate


def contributing_node(ds: Dataset) -> None:
    item = Dataset()
    item.Manufacturer = NODE_MANUFACTURER
    ds.ContributingEquipmentSequence = Sequence([item])


def modality_lut_without_data(ds: Dataset) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    ds.ModalityLUTSequence = Sequence([item])


def slope_not_a_number(ds: Dataset) -> None:
    raw(0x00281053, "DS", b"abc ")(ds)
    ds.RescaleIntercept = 0


def short_pixel_data(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: 1000 * 1841 * 2]


def as_file(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# (id, change to RG1_UNCR, error class, code, words the reason must contain, file-writable)
REFUSED: list[tuple[str, Mutation, type[DicomIOError], str, tuple[str, ...], bool]] = [
    ("ct", setting(SOPClassUID=CTImageStorage, Modality="CT"), DeclinedError, "sop-class",
     ("CT Image Storage",), True),
    ("mr", setting(SOPClassUID=MRImageStorage, Modality="MR"), DeclinedError, "sop-class",
     ("MR Image Storage",), True),
    ("rgb", setting(PhotometricInterpretation="RGB", SamplesPerPixel=3, PlanarConfiguration=0),
     DeclinedError, "colour", ("RGB", "3 samples"), True),
    ("ybr", setting(PhotometricInterpretation="YBR_FULL_422", SamplesPerPixel=3),
     DeclinedError, "colour", ("YBR_FULL_422",), True),
    ("multi-frame", setting(NumberOfFrames=2), DeclinedError, "multi-frame", ("2 frames",), True),
    ("hand", setting(BodyPartExamined="HAND"), DeclinedError, "body-part", ("HAND",), True),
    ("knee", setting(BodyPartExamined="KNEE"), DeclinedError, "body-part", ("KNEE",), True),
    ("view-ll", setting(ViewPosition="LL"), DeclinedError, "view", ("LL", "frontal"), True),
    ("view-lateral", setting(ViewPosition="LATERAL"), DeclinedError, "view",
     ("LATERAL", "frontal"), True),
    ("view-code-lateral", view_code("left lateral", "399198007"), DeclinedError, "view",
     ("left lateral", "frontal"), True),
    ("sc-ot", setting(SOPClassUID=SecondaryCaptureImageStorage, Modality="OT"), DeclinedError,
     "modality", ("OT",), True),
    ("cr-mg", setting(Modality="MG"), DeclinedError, "modality", ("MG",), True),
    ("own-manufacturer", setting(Manufacturer=NODE_MANUFACTURER), DeclinedError, "own-result",
     (NODE_MANUFACTURER,), True),
    ("own-contributing", contributing_node, DeclinedError, "own-result", (NODE_MANUFACTURER,),
     True),
    ("no-pixel-data", setting(PixelData=None), InvalidInputError, "no-pixel-data",
     ("PixelData",), True),
    ("bits-allocated-12", setting(BitsAllocated=12), InvalidInputError, "bits-allocated",
     ("12",), True),
    ("bits-allocated-32", setting(BitsAllocated=32), InvalidInputError, "bits-allocated",
     ("32",), True),
    ("bits-stored-17", setting(BitsStored=17), InvalidInputError, "bits-stored", ("17",), True),
    ("pixel-representation-2", setting(PixelRepresentation=2), InvalidInputError,
     "pixel-representation", ("2",), True),
    ("rows-0", setting(Rows=0), InvalidInputError, "dimensions", ("Rows 0",), True),
    ("rows-100000", setting(Rows=100000), InvalidInputError, "dimensions", ("Rows 100000",),
     False),  # US cannot hold 100000: in memory only
    ("columns-65535", setting(Columns=65535), InvalidInputError, "dimensions",
     ("Columns 65535",), True),
    ("short-pixel-data", short_pixel_data, InvalidInputError, "short-pixel-data",
     ("3682000 bytes", "1955x1841"), True),
    ("claims-j2k", lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", JPEG2000Lossless),
     InvalidInputError, "decode-failed", ("JPEG 2000",), False),
    ("unknown-transfer-syntax", lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4"),
     InvalidInputError, "decode-failed", ("1.2.3.4",), False),
    ("modality-lut-without-data", modality_lut_without_data, InvalidInputError, "corrupt",
     ("modality LUT",), True),
    ("slope-not-a-number", slope_not_a_number, InvalidInputError, "corrupt",
     ("rescale",), True),
    ("rows-wrong-length", raw(0x00280010, "US", b"\x01"), InvalidInputError, "corrupt",
     ("(0028,0010)",), True),
    ("frames-not-a-number", raw(0x00280008, "IS", b"abc "), InvalidInputError, "bad-frames",
     ("abc",), True),
    # identity: the UIDs every result references, checked where the object arrives
    ("sop-instance-uid-empty", raw(0x00080018, "UI", b""), InvalidInputError, "missing-uid",
     ("SOPInstanceUID",), True),
    ("sop-instance-uid-absent", setting(SOPInstanceUID=None), InvalidInputError, "missing-uid",
     ("SOPInstanceUID",), True),
    ("sop-instance-uid-blank", raw(0x00080018, "UI", b"\x00\x00"), InvalidInputError,
     "missing-uid", ("SOPInstanceUID",), True),
    ("sop-instance-uid-letters", raw(0x00080018, "UI", b"1.2.840.anon.42\x00"),
     InvalidInputError, "invalid-uid", ("SOPInstanceUID", "digits"), True),
    ("sop-instance-uid-too-long", raw(0x00080018, "UI", b"1.2." + b"3" * 70),
     InvalidInputError, "invalid-uid", ("SOPInstanceUID", "74 characters"), True),
    ("sop-instance-uid-two-values", raw(0x00080018, "UI", b"1.2.3\\1.2.4"),
     InvalidInputError, "invalid-uid", ("SOPInstanceUID",), True),
    ("study-instance-uid-absent", setting(StudyInstanceUID=None), InvalidInputError,
     "missing-uid", ("StudyInstanceUID",), True),
    ("study-instance-uid-leading-zero", raw(0x0020000D, "UI", b"1.2.840.01.5\x00"),
     InvalidInputError, "invalid-uid", ("StudyInstanceUID", "1.2.840.01.5", "leading zero"),
     True),
    ("study-instance-uid-no-oid-root", raw(0x0020000D, "UI", b"62"), InvalidInputError,
     "invalid-uid", ("StudyInstanceUID", "'62'", "OID root"), True),  # dciodvfy refuses it
    ("series-instance-uid-empty", raw(0x0020000E, "UI", b""), InvalidInputError,
     "missing-uid", ("SeriesInstanceUID",), True),
    ("series-instance-uid-empty-component", raw(0x0020000E, "UI", b"1.2..3\x00"),
     InvalidInputError, "invalid-uid", ("SeriesInstanceUID", "empty component"), True),
    # Rows (or Columns) says less than Pixel Data holds: read cut or sheared
    ("rows-too-small", setting(Rows=1000), InvalidInputError, "long-pixel-data",
     ("7198310 bytes", "1000x1841"), True),
    ("columns-one-too-few", setting(Columns=1840), InvalidInputError, "long-pixel-data",
     ("1955x1840",), True),
]


def check_refusal(error: DicomIOError, cls: type[DicomIOError], code: str, words: tuple[str, ...]):
    assert type(error) is cls, f"{type(error).__name__} {error}"
    assert error.code == code, str(error)
    for word in words:
        assert word in error.reason, f"{word!r} not in {error.reason!r}"


@pytest.mark.parametrize(("mutate", "cls", "code", "words"),
                         [pytest.param(*case[1:5], id=case[0]) for case in REFUSED])
def test_refused_dataset(cr: Dataset, mutate: Mutation, cls, code: str, words):
    with pytest.raises(DicomIOError) as e:
        dicom_io.from_dataset(changed(cr, mutate))
    check_refusal(e.value, cls, code, words)


@pytest.mark.parametrize(("mutate", "cls", "code", "words"),
                         [pytest.param(*case[1:5], id=case[0]) for case in REFUSED if case[5]])
def test_refused_file(cr: Dataset, tmp_path: Path, mutate: Mutation, cls, code: str, words):
    path = as_file(changed(cr, mutate), tmp_path / "in.dcm")
    with pytest.raises(DicomIOError) as e:
        dicom_io.load(path)
    check_refusal(e.value, cls, code, words)


def test_lateral_reason_says_frontal_only(cr: Dataset):
    for view in ("LL", "RL", "LATERAL", "LAT"):
        with pytest.raises(DeclinedError) as e:
            dicom_io.check_acceptable(changed(cr, setting(ViewPosition=view)))
        assert "frontal (PA/AP) views only" in e.value.reason


ACCEPTED: list[tuple[str, Mutation]] = [
    ("cr", setting()),
    ("dx-presentation", setting(SOPClassUID=DX_PRESENTATION_STORAGE, Modality="DX")),
    ("dx-processing", setting(SOPClassUID=DX_PROCESSING_STORAGE, Modality="DX")),
    ("sc-cr", setting(SOPClassUID=SecondaryCaptureImageStorage, Modality="CR")),
    ("sc-dx", setting(SOPClassUID=SecondaryCaptureImageStorage, Modality="DX")),
    ("body-part-chest", setting(BodyPartExamined="CHEST")),
    ("body-part-absent", setting(BodyPartExamined=None)),
    ("view-ap", setting(ViewPosition="AP")),
    ("view-pa", setting(ViewPosition="PA")),
    ("view-absent", setting(ViewPosition=None)),
    ("view-code-pa", view_code("postero-anterior", "399348003")),
    ("one-frame", setting(NumberOfFrames=1)),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in ACCEPTED])
def test_accepted(cr: Dataset, cr_pixels: np.ndarray, mutate: Mutation):
    ds = changed(cr, mutate)
    dicom_io.check_acceptable(ds)
    dicom_io.check_pixel_header(ds)
    image = dicom_io.from_dataset(ds, "x")
    assert image.maxval == 65535 and image.pixels.dtype == np.uint16
    assert np.array_equal(image.pixels, cr_pixels)  # header changes leave the pixels alone
    assert "PixelData" not in image.header
    assert image.sop_class_uid == ds.SOPClassUID


def test_accepted_file_keeps_uids(cr_path: Path):
    image = dicom_io.load(cr_path)
    assert image.sop_class_uid == CR_IMAGE_STORAGE
    assert image.key == image.sop_uid == "1.3.6.1.4.1.5962.1.1.9.1.1.20040826185059.5457"


# --- bytes that are not (whole) DICOM -------------------------------------------------------


def j2k_codestream_offset(data: bytes) -> int:
    offset = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: the start of the J2K codestream
    assert offset > 0
    return offset


def flipped(data: bytes, start: int, length: int) -> bytes:
    out = bytearray(data)
    out[start:start + length] = bytes(b ^ 0xFF for b in out[start:start + length])
    return bytes(out)


def test_garbage_is_not_dicom(tmp_path: Path):
    rng = random.Random(2)
    for i, data in enumerate([rng.randbytes(5000), b"hello, not DICOM\n" * 300, b"",
                              bytes(4096), b"DICM" * 100]):
        path = tmp_path / f"garbage{i}"
        path.write_bytes(data)
        with pytest.raises(InvalidInputError) as e:
            dicom_io.load(path)
        assert e.value.code == "not-dicom", (i, str(e.value))
    with pytest.raises(InvalidInputError) as e:
        dicom_io.read_dataset(b"\x00\x01garbage")
    assert e.value.code == "not-dicom"


def test_truncated_native_file(cr_path: Path, tmp_path: Path):
    path = tmp_path / "truncated.dcm"
    path.write_bytes(cr_path.read_bytes()[:2000])
    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(path)
    assert e.value.code == "short-pixel-data"
    assert "392 bytes" in e.value.reason


def test_truncated_j2k_file_is_corrupt(cr_j2k_lossless_path: Path, tmp_path: Path):
    """A transfer cut inside encapsulated pixel data: a DICOM file, but corrupt."""
    data = cr_j2k_lossless_path.read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(path)
    assert e.value.code == "corrupt" and "truncated" in e.value.reason


@pytest.mark.parametrize("where", ["siz-marker", "main-header", "first-tiles"])
def test_corrupt_j2k_stream_is_decode_failed(cr_j2k_lossless_path: Path, tmp_path: Path,
                                             where: str):
    data = cr_j2k_lossless_path.read_bytes()
    start = j2k_codestream_offset(data)
    start, length = {"siz-marker": (start + 2, 8), "main-header": (start + 4, 64),
                     "first-tiles": (start + 100, 5000)}[where]
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(flipped(data, start, length))
    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(path)
    assert e.value.code == "decode-failed"
    assert "JPEG 2000" in e.value.reason


def test_corrupt_j2k_body_never_crashes(cr_j2k_lossy_path: Path, tmp_path: Path):
    """J2K has no checksum: damage deep in the stream may decode to a damaged image.

    Whatever happens, the caller gets an image or a DicomIOError, nothing else.
    """
    data = cr_j2k_lossy_path.read_bytes()
    start = j2k_codestream_offset(data)
    path = tmp_path / "corrupt.dcm"
    for offset in (start + 300, (start + len(data)) // 2, len(data) - 200):
        path.write_bytes(flipped(data, offset, 64))
        try:
            image = dicom_io.load(path)
        except DicomIOError as e:
            assert isinstance(e, InvalidInputError), str(e)
            assert e.code in {"decode-failed", "corrupt"}, str(e)
        else:
            assert image.pixels.shape == (1955, 1841)


def test_load_raises_only_dicom_io_errors(cr: Dataset, tmp_path: Path):
    """Truncations at every structural boundary and seeded byte damage in the header.

    The real header over a 64 x 64 corner of the image, so that each variant is quick.
    """
    small = copy.deepcopy(cr)
    small.Rows = small.Columns = 64
    small.PixelData = np.ascontiguousarray(cr.pixel_array[:64, :64]).tobytes()
    source = as_file(small, tmp_path / "small.dcm")
    assert dicom_io.load(source).pixels.shape == (64, 64)
    data = source.read_bytes()
    pixel_start = data.index(b"\xe0\x7f\x10\x00OW")
    cuts = [0, 1, 128, 132, 140, 200, 330, 500, 1000, 1500, pixel_start, pixel_start + 7,
            pixel_start + 12, pixel_start + 13, len(data) - 1]
    variants = [data[:cut] for cut in cuts]
    rng = random.Random(7)
    for _ in range(40):
        start = rng.randrange(132, pixel_start + 12)
        variants.append(flipped(data, start, rng.randrange(1, 16)))
    path = tmp_path / "damaged.dcm"
    outcomes = set()
    for variant in variants:
        path.write_bytes(variant)
        try:
            dicom_io.load(path)
            outcomes.add("loaded")
        except DicomIOError as e:
            assert isinstance(e, DeclinedError | InvalidInputError) and e.reason, e.code
            outcomes.add(e.code)
    assert {"not-dicom", "short-pixel-data"} <= outcomes


# --- identity: what results reference is checked where the object arrives ------------------


#: REFUSED cases refused only once the pixels are decoded (not by the header alone).
DECODE_REFUSALS = {"claims-j2k", "unknown-transfer-syntax", "modality-lut-without-data",
                   "slope-not-a-number"}


@pytest.mark.parametrize(("mutate", "cls", "code", "words"),
                         [pytest.param(*case[1:5], id=case[0]) for case in REFUSED
                          if case[0] not in DECODE_REFUSALS])
def test_check_header_refuses_what_from_dataset_refuses(cr: Dataset, mutate: Mutation, cls,
                                                        code: str, words):
    """The header gate a front runs where an object arrives is that of ``from_dataset``."""
    with pytest.raises(DicomIOError) as e:
        check_header(changed(cr, mutate))
    check_refusal(e.value, cls, code, words)


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in ACCEPTED])
def test_check_header_passes_what_from_dataset_passes(cr: Dataset, mutate: Mutation):
    check_header(changed(cr, mutate))


def test_identity_uids_with_padding_pass(cr: Dataset):
    """Senders pad odd-length UIDs with NUL (PS3.5 9.1) or, wrongly, a space: still valid."""
    for padding in (b"\x00", b" "):
        ds = changed(cr, raw(0x00080018, "UI", b"1.2.840.10008.42" + padding))
        check_identity(ds)


def test_identity_reason_never_quotes_what_is_not_a_uid(cr: Dataset):
    """A UID element holding anything but digits and dots may hold anything: not echoed."""
    ds = changed(cr, raw(0x0020000D, "UI", b"DOE^JOHN 1970"))
    with pytest.raises(InvalidInputError) as e:
        check_identity(ds)
    assert e.value.code == "invalid-uid"
    assert "DOE" not in str(e.value) and "1970" not in str(e.value)


def test_declined_before_identity(cr: Dataset):
    """An object the model must not see is declined (skipped) whatever its UIDs."""
    ds = changed(cr, setting(SOPInstanceUID=None, ViewPosition="LL"))
    with pytest.raises(DeclinedError) as e:
        dicom_io.from_dataset(ds)
    assert e.value.code == "view"


@pytest.mark.parametrize("value", [
    "1.2.3", "0", "1.0.2", "2.25.329800735698586629295641978511506172918",
    "1.2." + "3" * 60, "1.2." + "3" * 61, "1.02.3", "1..2", ".1.2", "1.2.", "1.2.a", "1,2,3",
    "", " ", "1.2.3 4", "１.２",
])
def test_gate_and_results_agree_on_uids(value: str):
    """Whatever the gate lets through, the results can reference; what it refuses, they
    could not."""
    from dicom_io.results.uids import check_uid

    try:
        check_uid("uid", value)
        builds = True
    except ValueError:
        builds = False
    stripped = value.strip()
    assert (bool(stripped) and uid_problem(stripped) is None) == builds, value


def test_gate_passes_only_what_results_can_reference(cr: Dataset):
    """Everything ``from_dataset`` returns can carry results: the source context of each
    image that passes the gate builds (the result objects' own checks are tests/test_results)."""
    from dicom_io.results._common import source_context

    for mutate in (setting(), raw(0x00080018, "UI", b"1.2.840.10008.42\x00"),
                   raw(0x00101010, "AS", b"62"), raw(0x00280030, "DS", b"0\\0 ")):
        source_context(dicom_io.from_dataset(changed(cr, mutate), "x"))


def test_every_broken_file_has_its_outcome(tmp_path: Path):
    """tests/broken_files.py: each file loads (and can carry results) or is refused with the
    code it names, by path and from bytes alike."""
    from broken_files import OK, all_files

    from dicom_io.results._common import source_context

    for case in all_files():
        path = tmp_path / f"{case.name}.dcm"
        path.write_bytes(case.data)
        try:
            image = dicom_io.load(path)
        except DicomIOError as e:
            assert e.code == case.code, (case.name, str(e))
            assert e.reason
        else:
            assert case.code == OK, (case.name, "loaded")
            source_context(image)
            if case.data[:8] != b"\x89PNG\r\n\x1a\n":
                dicom_io.from_dataset(dicom_io.read_dataset(case.data), case.name)


def test_not_a_regular_file_is_unreadable(tmp_path: Path):
    """A folder or a FIFO where a file was expected: refused, never waited on."""
    import os

    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(tmp_path)
    assert e.value.code == "unreadable"
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(fifo)
    assert e.value.code == "unreadable" and "regular" in e.value.reason
    with pytest.raises(InvalidInputError) as e:
        dicom_io.load(tmp_path / "absent.dcm")
    assert e.value.code == "unreadable"
