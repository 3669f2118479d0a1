"""The bench's default radiographs: the images a PACS really sends, not one uncompressed file.

Made from pydicom-data's NEMA CR chest (``RG1_UNCR.dcm`` as it is, ``RG1_J2KR.dcm``, and the CR
re-encoded) and, when ``../shared/data/cxr14`` is beside the repository, the NIH chest X-rays
wrapped as CR or DX (MONOCHROME1 and 2, 8 and 12-in-16 bits) and re-encoded, about
:data:`TARGET` images in all: uncompressed, JPEG baseline (8-bit), JPEG lossless, JPEG-LS,
JPEG 2000, RLE and deflate. Re-encoding uses the tests' own means: dcmtk's tools (as
``tests/test_dicom_io_codecs.py`` and ``tests/system/scaled.py`` run them) where installed,
otherwise pydicom's encoders (Pillow for JPEG baseline); what neither can make is left out and
named in the manifest.

Generated once into a cache folder keyed by a hash of the recipe, the sources and the tools
found, then read from there: every phase and every later run sends the same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Bump when the recipe changes: older cached sets are then not reused.
RECIPE = 1
#: Images in the default set when the NIH sample is present.
TARGET = 45
CR_FILE = "RG1_UNCR.dcm"
CR_J2K_FILE = "RG1_J2KR.dcm"
#: The NIH sample (see its README), beside the repository's root.
CXR14 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cxr14"
MANIFEST = "manifest.json"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class Encoding:
    """One transfer syntax and how to make it: a dcmtk command (the tests'), else pydicom."""

    name: str
    dcmtk: tuple[str, ...] = ()
    #: pydicom's way when dcmtk is missing: ``compress`` (with the syntax), ``deflate``,
    #: ``pillow`` (JPEG baseline), or "" for none
    fallback: str = ""
    syntax: str = ""
    eight_bit_only: bool = False


ENCODINGS: tuple[Encoding, ...] = (
    Encoding("explicit", fallback="none-needed"),
    Encoding("jpeg-baseline", ("dcmcjpeg", "+eb"), "pillow", "1.2.840.10008.1.2.4.50", True),
    Encoding("jpeg-lossless", ("dcmcjpeg", "+e1")),
    Encoding("jpeg-ls", ("dcmcjpls", "+el"), "compress", "1.2.840.10008.1.2.4.80"),
    Encoding("j2k", (), "compress", "1.2.840.10008.1.2.4.90"),
    Encoding("rle", ("dcmcrle",), "compress", "1.2.840.10008.1.2.5"),
    Encoding("deflate", ("dcmconv", "+td"), "deflate", "1.2.840.10008.1.2.1.99"),
)
BY_NAME = {e.name: e for e in ENCODINGS}
#: The CR's own variants (its 16 bits stored as 15 fit every lossless syntax).
CR_VARIANTS = ("explicit", "j2k-nema", "jpeg-lossless", "jpeg-ls", "rle", "deflate")
#: Without the NIH sample: the CR also at 8 bits, so that JPEG baseline is in the set.
CR_8BIT_VARIANTS = ("explicit", "jpeg-baseline")


@dataclass(frozen=True)
class Variant:
    """One image of the set: which source, as what, in which encoding."""

    source: str  # CR_FILE or a PNG's file name
    modality: str
    photometric: str
    bits: int
    encoding: str

    @property
    def name(self) -> str:
        stem = Path(self.source).stem
        return f"{stem}-{self.modality.lower()}-{self.photometric[-1]}-{self.bits}-{self.encoding}"


#: The uncompressed NEMA CR, first in every default set.
OVERHEAD = Variant(CR_FILE, "CR", "MONOCHROME1", 16, "explicit")


def usable(encoding: Encoding) -> str | None:
    """How ``encoding`` can be made here (``dcmtk``, ``pydicom``, ``pillow``), or None."""
    if encoding.name == "explicit":
        return "pydicom"
    if encoding.dcmtk and shutil.which(encoding.dcmtk[0]):
        return "dcmtk"
    if encoding.fallback == "pillow":
        return "pillow"
    if encoding.fallback == "deflate":
        return "pydicom"
    if encoding.fallback == "compress":
        from pydicom.pixels import get_encoder

        return "pydicom" if get_encoder(encoding.syntax).is_available else None
    return None


def recipe(pngs: list[Path]) -> tuple[list[Variant], list[str]]:
    """The variants to make and what is left out (encodings nothing here can write)."""
    means = {e.name: usable(e) for e in ENCODINGS}
    left_out = [f"{name}: no encoder here (dcmtk's {' '.join(BY_NAME[name].dcmtk)} is "
                "not installed and pydicom cannot write it)"
                for name, how in means.items() if how is None]
    variants = [Variant(CR_FILE, "CR", "MONOCHROME1", 16, name) for name in CR_VARIANTS
                if name == "j2k-nema" or means[name]]
    if not pngs:
        variants += [Variant(CR_FILE, "CR", "MONOCHROME1", 8, name) for name in CR_8BIT_VARIANTS
                     if means[name]]
        return variants, left_out
    cr, pngs_as = variants, []
    cycle = [e for e in ENCODINGS if means[e.name]]
    for i in range(TARGET - len(cr)):
        encoding = cycle[i % len(cycle)]
        k = i // len(cycle)  # each encoding in turn: 16 then 8 bits, MONOCHROME2 then 1
        bits = 8 if encoding.eight_bit_only or k % 2 else 16
        photometric = "MONOCHROME1" if (k // 2) % 2 else "MONOCHROME2"
        pngs_as.append(Variant(pngs[i % len(pngs)].name, "CR" if i % 3 == 0 else "DX",
                               photometric, bits, encoding.name))
    # the overhead image first, the CR's other encodings spread through the set: any
    # prefix (the model-only phase decodes the first few) mixes sources and encodings
    ordered = list(pngs_as)
    for k, v in enumerate(cr):  # later insertions land after: each keeps its place
        ordered.insert(round(k * TARGET / len(cr)), v)
    return ordered, left_out


def _labels(folder: Path) -> dict[str, dict[str, str]]:
    try:
        with (folder / "labels.csv").open(newline="") as f:
            return {row["Image Index"]: row for row in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["cxr-node bench set", *parts]))


def _png_base(path: Path, v: Variant, label: dict[str, str]) -> Any:
    """An uncompressed CR or DX object around an NIH PNG, as ``v`` says."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from dicom_io import load_png

    pixels = load_png(path).pixels
    if pixels.dtype != np.uint8:
        pixels = (pixels >> 8).astype(np.uint8)
    if v.bits == 16:  # as a 12-bit detector stores it
        stored = (pixels.astype(np.uint16) << 4) | (pixels.astype(np.uint16) >> 4)
        stored_bits = 12
    else:
        stored, stored_bits = pixels, 8
    if v.photometric == "MONOCHROME1":
        stored = (2**stored_bits - 1) - stored
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
        CR_STORAGE if v.modality == "CR" else DX_STORAGE)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(v.name)
    ds.StudyInstanceUID = _uid("study", path.name)
    ds.SeriesInstanceUID = _uid("series", v.name)
    ds.PatientName, ds.PatientID = "BENCH^CXR14", f"CXR14-{path.stem}"[:64]
    sex = label.get("Patient Gender", "")
    ds.PatientSex = sex if sex in ("M", "F") else ""
    age = label.get("Patient Age", "")
    if age.isdigit():
        ds.PatientAge = f"{int(age):03d}Y"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality, ds.BodyPartExamined = v.modality, "CHEST"
    ds.ViewPosition = label.get("View Position") or "PA"
    if v.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    try:  # NIH downscaled the acquisition to 1024 wide: the spacing grows as much
        scale = float(label["OriginalImage[Width"]) / pixels.shape[1]
        spacing = float(label["OriginalImagePixelSpacing[x"]) * scale
        ds.ImagerPixelSpacing = [round(spacing, 6)] * 2
    except (KeyError, ValueError):
        pass
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, v.photometric
    ds.BitsAllocated, ds.BitsStored = v.bits, stored_bits
    ds.HighBit, ds.PixelRepresentation = stored_bits - 1, 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _cr_base(cr: Path, v: Variant) -> Any:
    """The NEMA CR as it is (16 bits allocated, 15 stored) or cut to 8 bits."""
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(cr)
    if v.bits == 8:
        pixels = (ds.pixel_array >> (int(ds.BitsStored) - 8)).astype(np.uint8)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(v.name)
    return ds


def _write(ds: Any, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def _encode(base: Any, v: Variant, folder: Path) -> tuple[bytes, str]:
    """``base`` (uncompressed) in ``v``'s encoding: its bytes and what made them."""
    import pydicom

    encoding = BY_NAME[v.encoding]
    out = folder / "out.dcm"
    if v.encoding == "explicit":
        _write(base, out)
        return out.read_bytes(), "pydicom"
    how = usable(encoding)
    if how == "dcmtk":
        src = folder / "src.dcm"
        _write(base, src)
        subprocess.run([*encoding.dcmtk, str(src), str(out)], check=True, capture_output=True,
                       timeout=120)
        return out.read_bytes(), "dcmtk " + " ".join(encoding.dcmtk)
    if how == "pillow":
        _pillow_jpeg(base)
    elif encoding.fallback == "deflate":
        base.file_meta.TransferSyntaxUID = pydicom.uid.UID(encoding.syntax)
    else:
        base.compress(encoding.syntax)
    _write(base, out)
    return out.read_bytes(), how or "?"


def _pillow_jpeg(ds: Any) -> None:
    """JPEG baseline (lossy, quality 90) of an 8-bit image with Pillow, encapsulated."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(ds.pixel_array).save(buffer, "JPEG", quality=90)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def _digest(paths: list[Path], variants: list[Variant], left_out: list[str]) -> str:
    h = hashlib.sha256(json.dumps([RECIPE, [v.name for v in variants], left_out]).encode())
    for path in paths:
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/cxr-node/bench-images`` (``~/.cache`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "cxr-node" / "bench-images"


def nema_file(name: str) -> Path | None:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    return Path(str(found)) if found else None


def default_set(cache: Path | None = None, cxr14: Path | None = None,
                progress: Callable[[str], None] = logger.info) -> tuple[list[Path], dict]:
    """The default set's files (made now unless cached) and its manifest."""
    cr, j2k = nema_file(CR_FILE), nema_file(CR_J2K_FILE)
    if cr is None or j2k is None:
        raise ValueError(f"no --images given and pydicom-data's {CR_FILE} / {CR_J2K_FILE} "
                         "are not available: install pydicom-data or pass --images")
    folder = CXR14 if cxr14 is None else cxr14
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    variants, left_out = recipe(pngs)
    if not pngs:
        left_out.append(f"NIH chest X-rays: {folder} not found (the CR only)")
    sources = [cr, j2k, *pngs] + ([folder / "labels.csv"] if pngs else [])
    target = (cache or default_cache()) / _digest(sources, variants, left_out)
    manifest_path = target / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = [target / item["file"] for item in manifest["images"]]
        if all(f.is_file() for f in files):
            return files, manifest
    progress(f"making the bench's image set ({len(variants)} images) in {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".making-", dir=target.parent))
    try:
        manifest = _make(staging, variants, left_out, cr, j2k, folder)
        if target.exists():  # made meanwhile by another run: keep that one
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target / item["file"] for item in manifest["images"]], manifest


def _make(staging: Path, variants: list[Variant], left_out: list[str], cr: Path, j2k: Path,
          folder: Path) -> dict:
    import pydicom

    from dicom_io import from_dataset, read_dataset

    labels = _labels(folder)
    images = []
    for i, v in enumerate(variants):
        work = staging / "work"
        work.mkdir(exist_ok=True)
        try:
            if v.encoding == "j2k-nema":
                data, how = j2k.read_bytes(), "as pydicom-data has it"
            elif v == OVERHEAD:  # the overhead target's image itself, byte for byte
                data, how = cr.read_bytes(), "as pydicom-data has it"
            else:
                base = (_cr_base(cr, v) if v.source == CR_FILE
                        else _png_base(folder / v.source, v, labels.get(v.source, {})))
                data, how = _encode(base, v, work)
            ds = read_dataset(data)
            from_dataset(ds, v.name)  # the node must take it: gate and decode
        except Exception as e:  # an encoder's or the gate's refusal: left out, named
            left_out.append(f"{v.name}: {type(e).__name__}: {str(e)[:200]}")
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        name = f"{i:02d}-{v.name}.dcm"
        (staging / name).write_bytes(data)
        images.append({"file": name, "source": v.source,
                       "modality": v.modality, "photometric": v.photometric,
                       "bits_allocated": v.bits, "encoding": v.encoding, "made_by": how,
                       "transfer_syntax": pydicom.uid.UID(ds.file_meta.TransferSyntaxUID).name})
    manifest = {"recipe": RECIPE, "images": images, "left_out": left_out}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
