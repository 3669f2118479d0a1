"""The heat map alpha-blended over the source image, with its legend, as a Secondary Capture.

Radiologists read the capture in a viewer that shows pixels, so it speaks for itself: the
regions are outlined on the image and a legend band below it (:mod:`legend`) names the
findings with their probabilities, the colour scale, the model and "not for diagnostic use"
(Burned In Annotation ``YES``). Above the band, pixel (r, c) of the capture is pixel (r, c) of
the source: the capture keeps the source's columns and (valid) pixel spacing; the band adds
rows. The transfer syntax is a choice (:data:`SC_TRANSFER_SYNTAXES`); by default JPEG baseline,
colour as YBR_FULL_422 (chroma 4:2:2, as the value says): 0.47 MB for the 1955 x 1841 NEMA
CR against 12.4 MB uncompressed; lossless JPEG 2000 is ~3x larger (1.3 MB) and ~7x slower to
build, JPEG-LS lossless 3.5 MB, RLE larger than uncompressed.
"""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Sequence

import numpy as np
from highdicom.frame import get_lossy_compression_attributes
from highdicom.sc import SCImage
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.valuerep import DS

from dicom_io.results import legend
from dicom_io.results._common import (
    ModelIdentity,
    clip_lo,
    date_time_kwargs,
    finish,
    source_image_item,
)
from dicom_io.results.source import SourceContext
from domain import Region

logger = logging.getLogger(__name__)

#: Transfer syntaxes a capture may be written in.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
SC_TRANSFER_SYNTAXES = (JPEG_BASELINE, JPEG_2000_LOSSLESS, EXPLICIT_VR_LITTLE_ENDIAN)
#: Photometric Interpretation of the colour pixels in each (JPEG 2000 lossless: the
#: reversible colour transform, as highdicom encodes it).
_PHOTOMETRIC = {JPEG_BASELINE: "YBR_FULL_422", JPEG_2000_LOSSLESS: "YBR_RCT",
                EXPLICIT_VR_LITTLE_ENDIAN: "RGB"}
#: JPEG quality: edges of text and outlines stay clean; 90 is ~40 % smaller than 95.
JPEG_QUALITY = 90

#: Opacity of the colour where the heat map is 1 (it falls linearly to 0 with the map).
ALPHA_MAX = 0.6

#: Anchors of the "jet" colour map: value -> (r, g, b) in [0, 1].
_JET = np.array([
    [0.0, 0.0, 0.0, 0.5],
    [0.11, 0.0, 0.0, 1.0],
    [0.125, 0.0, 0.0, 1.0],
    [0.34, 0.0, 0.85, 1.0],
    [0.35, 0.0, 0.9, 0.97],
    [0.64, 1.0, 1.0, 0.0],
    [0.65, 1.0, 0.9, 0.0],
    [0.89, 1.0, 0.0, 0.0],
    [1.0, 0.5, 0.0, 0.0],
], dtype=np.float32)


def jet(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] (any shape) to RGB in [0, 1] (shape + (3,))."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack(
        [np.interp(v, _JET[:, 0], _JET[:, k]).astype(np.float32) for k in (1, 2, 3)], axis=-1
    )


#: Entries of the colour look-up tables: the map is quantised to 1/255 steps (signed maps:
#: 2/254, an odd count so that 0 is an entry and leaves the source untouched).
_LEVELS = {False: 256, True: 255}


def _luts(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per level: the colour times its opacity (RGB, 0..1), and one minus the opacity."""
    levels = _LEVELS[signed]
    if signed:
        v = np.linspace(-1.0, 1.0, levels, dtype=np.float32)
        colour = np.zeros((levels, 3), np.float32)
        colour[:, 0] = v > 0
        colour[:, 2] = v < 0
    else:
        v = np.linspace(0.0, 1.0, levels, dtype=np.float32)
        colour = jet(v)
    alpha = ALPHA_MAX * np.abs(v)
    return colour * alpha[:, None], (1.0 - alpha).astype(np.float32)


_LUTS = {signed: _luts(signed) for signed in (False, True)}


def overlay(gray: np.ndarray, maxval: int, values: np.ndarray, signed: bool,
            out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 of ``gray`` (0..maxval, MONOCHROME2) with ``values`` blended over it.

    Unsigned maps (``[0, 1]``) use the jet colours, signed maps (``[-1, 1]``) red for
    positive and blue for negative values; the opacity is ``ALPHA_MAX`` times the map's
    magnitude, so where the map is 0 the capture is the source image unchanged. ``out``: where
    to write it (uint8, the image's shape x 3; the capture's rows above the legend).
    """
    if gray.shape != values.shape:
        raise ValueError(f"map shape {values.shape} is not the image's {gray.shape}")
    if out is None:
        out = np.empty((*gray.shape, 3), np.uint8)
    elif out.shape != (*gray.shape, 3) or out.dtype != np.uint8:
        raise ValueError(f"out is {out.dtype} {out.shape}, not uint8 {(*gray.shape, 3)}")
    for start in range(0, gray.shape[0], _ROWS):  # in bands that stay in the CPU's cache
        rows = slice(start, start + _ROWS)
        out[rows] = _blend(gray[rows], maxval, values[rows], signed)
    return out


#: Rows blended at a time by :func:`overlay`.
_ROWS = 64


def _blend_table(signed: bool) -> np.ndarray:
    """Every blended colour: row ``level * 256 + grey`` is the RGB (uint8) of the map's
    ``level`` over the 8-bit ``grey``, computed once in float32 and rounded."""
    premultiplied, keep = _LUTS[signed]
    grey = np.arange(256, dtype=np.float32)
    table = premultiplied[:, None, :] * np.float32(255.0) + (keep[:, None] * grey)[..., None]
    np.rint(table, out=table)
    np.clip(table, 0, 255, out=table)
    return table.astype(np.uint8).reshape(-1, 3)


_TABLES = {signed: _blend_table(signed) for signed in (False, True)}


def _blend(gray: np.ndarray, maxval: int, values: np.ndarray, signed: bool) -> np.ndarray:
    """One band: the map's level and the source's 8-bit grey of each pixel index a table of
    blended colours (one gather, no per-pixel float RGB). Where the map is 0 the result is
    the source's grey, rounded to 8 bits."""
    low = -1.0 if signed else 0.0
    scale = (_LEVELS[signed] - 1) / (1.0 - low)
    level = np.clip(values, low, 1.0)
    level -= low
    level *= scale
    index = np.rint(level, out=level).astype(np.uint16)
    index <<= 8
    if maxval == 255 and gray.dtype == np.uint8:
        index |= gray
    else:
        grey = gray.astype(np.float32)
        grey *= np.float32(255.0 / maxval)
        np.rint(grey, out=grey)
        np.clip(grey, 0, 255, out=grey)
        index |= grey.astype(np.uint16)
    return np.take(_TABLES[signed], index, axis=0)


#: The colour scale of each kind of map as the capture shows it: blended over mid-grey.
_SCALES = {
    signed: overlay(np.full((1, levels), 128, np.uint8), 255,
                    np.linspace(-1.0 if signed else 0.0, 1.0, levels, dtype=np.float32)[None],
                    signed)[0]
    for signed, levels in _LEVELS.items()
}
_SCALE_ENDS = {False: ("0", "1"), True: ("-1", "+1")}


def check_transfer_syntax(uid: object) -> str:
    """``uid`` if the capture can be written in it (:data:`SC_TRANSFER_SYNTAXES`)."""
    if not isinstance(uid, str):
        raise TypeError(f"transfer syntax must be a str UID, not {type(uid).__name__}")
    if uid.strip() not in SC_TRANSFER_SYNTAXES:
        raise ValueError(f"capture transfer syntax {uid!r}: use one of {SC_TRANSFER_SYNTAXES}")
    return uid.strip()


def capture_pixels(
    source: SourceContext,
    values: np.ndarray,
    *,
    label: str,
    method: str,
    signed: bool,
    model: ModelIdentity,
    regions: Sequence[Region] = (),
    findings_above_threshold: bool = True,
    probability: float | None = None,
) -> np.ndarray:
    """The capture's RGB pixels: the overlay with the regions outlined, the legend below."""
    image = source.image
    colours = legend.region_colours(len(regions))
    band = legend.legend_band(
        source.columns, regions=regions, colours=colours, label=label, method=method,
        probability=probability, findings_above_threshold=findings_above_threshold,
        scale=_SCALES[signed], scale_ends=_SCALE_ENDS[signed],
        model=f"{model.name} {model.version}",
    )
    rgb = np.empty((source.rows + len(band), source.columns, 3), np.uint8)
    picture = rgb[: source.rows]  # a C-contiguous view: drawn in place
    overlay(image.pixels, image.maxval, values, signed, out=picture)
    legend.outline(picture, regions, colours)
    rgb[source.rows:] = band
    return rgb


def _jpeg_baseline(sc: SCImage, rgb: np.ndarray) -> float:
    """Put the capture's pixels in ``sc`` as JPEG baseline, YCbCr 4:2:2; the compression ratio.

    Encoded here, not by highdicom: its encoder subsamples chroma 4:2:0 at a fixed quality,
    and YBR_FULL_422 says 4:2:2.
    """
    buffer = io.BytesIO()
    rows, columns = rgb.shape[:2]
    # frombuffer shares the array's memory: no second full-size copy to encode from
    picture = Image.frombuffer("RGB", (columns, rows), np.ascontiguousarray(rgb), "raw", "RGB",
                               0, 1)
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:2")
    frame = buffer.getvalue()
    sc.file_meta.TransferSyntaxUID = JPEG_BASELINE
    sc.PhotometricInterpretation = _PHOTOMETRIC[JPEG_BASELINE]
    sc.PixelData = encapsulate([frame])
    sc["PixelData"].VR = "OB"
    return rgb.nbytes / len(frame)


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes, float, int)):
        return [str(value)]
    return [str(v) for v in value]  # type: ignore[union-attr]


def _source_compression(source: SourceContext) -> tuple[list[str], list[str]]:
    """The source's lossy compression steps as (ratios, methods), or ``([], [])`` when they
    do not pair up. A missing method of one step is the source's transfer syntax's."""
    reference = source.reference
    ratios = _values(reference.get("LossyImageCompressionRatio"))
    methods = _values(reference.get("LossyImageCompressionMethod"))
    if len(ratios) == 1 and not methods:
        meta = getattr(source.image.header, "file_meta", None)
        tsuid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        _, method = get_lossy_compression_attributes(tsuid)
        methods = [method] if method else []
    if len(ratios) != len(methods):
        logger.debug("source lossy compression %s by %s: unpaired, not carried", ratios, methods)
        return [], []
    return ratios, methods


def build_sc(
    source: SourceContext,
    values: np.ndarray,
    *,
    label: str,
    method: str,
    signed: bool,
    model: ModelIdentity,
    when: datetime.datetime,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    series_description: str,
    regions: Sequence[Region] = (),
    findings_above_threshold: bool = True,
    probability: float | None = None,
    transfer_syntax: str = JPEG_BASELINE,
) -> SCImage:
    """The capture of checked heat-map ``values`` (float32, source grid) of ``label``.

    ``regions`` are outlined and listed in this order (most probable first);
    ``findings_above_threshold`` False says that no finding is above its threshold (the map
    is then the top finding's); ``probability`` is the mapped finding's.
    """
    transfer_syntax = check_transfer_syntax(transfer_syntax)
    rgb = capture_pixels(
        source, values, label=label, method=method, signed=signed, model=model,
        regions=regions, findings_above_threshold=findings_above_threshold,
        probability=probability,
    )
    reference = source.for_result()  # its own patient, study and lossy elements (copied below)
    jpeg = transfer_syntax == JPEG_BASELINE
    sc = SCImage(
        # JPEG baseline is encoded here (_jpeg_baseline): highdicom gets one pixel, so that
        # it does not encode (and copy twice) a full frame that is thrown away; Rows and
        # Columns are the capture's, set below.
        pixel_array=np.ascontiguousarray(rgb[:1, :1]) if jpeg else rgb,
        photometric_interpretation="RGB" if jpeg else _PHOTOMETRIC[transfer_syntax],
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.study_uid,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=source.instance_number,
        # Patient and study attributes are copied verbatim below (highdicom would reject
        # valid single-component person names such as a referring physician "ward").
        # highdicom takes single letters only; the source's value is set below.
        patient_orientation=("L", "F"),
        pixel_spacing=source.pixel_spacing,  # checked: None unless two finite, positive
        # JPEG baseline: encoded here (_jpeg_baseline), from the native pixels.
        transfer_syntax_uid=EXPLICIT_VR_LITTLE_ENDIAN if jpeg else transfer_syntax,
        series_description=clip_lo(series_description),
        specific_character_set=reference.get("SpecificCharacterSet"),
        contributing_equipment=[model.contributing_equipment(when)],
        **model.equipment_kwargs(),
        **date_time_kwargs(when),
    )
    sc.copy_patient_and_study_information(reference)
    source.name(sc)
    # Type 2: the source's (possibly oblique, e.g. "LF"), or empty when unknown.
    sc.PatientOrientation = list(source.patient_orientation or ()) or None
    sc.DateOfSecondaryCapture = sc.ContentDate
    sc.TimeOfSecondaryCapture = sc.ContentTime
    sc.BurnedInAnnotation = "YES"  # the legend's text (and any the source carries)
    sc.RecognizableVisualFeatures = "NO"
    sc.BodyPartExamined = source.body_part
    description = clip_lo(f"{method} heat map of {label} over the source; not for diagnostic use")
    sc.DerivationDescription = description
    sc.ImageComments = (
        f"AI explanation ({method}) of the finding '{label}' by {model.name} {model.version}, "
        "alpha-blended over the source image, regions outlined, legend below the image. "
        "Not for diagnostic use."
    )
    sc.SourceImageSequence = [source_image_item(source)]
    if jpeg:
        sc.Rows, sc.Columns = rgb.shape[:2]
        ratio = _jpeg_baseline(sc, rgb)
        ratios, methods = _source_compression(source) if source.lossy else ([], [])
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionRatio = [*ratios, DS(f"{ratio:.2f}")]
        sc.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]
    elif source.lossy:
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in reference:
                sc[keyword] = reference[keyword]
    else:
        sc.LossyImageCompression = "00"
    finish(sc, model, when)
    return sc
