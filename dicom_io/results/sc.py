"""The heat map alpha-blended over the source image, as an RGB Secondary Capture.

The image has the source's rows, columns and pixel spacing: pixel (r, c) of the capture is
pixel (r, c) of the source. No text is burned into the pixels; Burned In Annotation is
``YES`` only when the source itself says it has burned-in annotation (it is in the capture
too). The finding, the method and "not for diagnostic use" are in the Series Description,
Derivation Description and Image Comments.
"""

from __future__ import annotations

import datetime

import numpy as np
from highdicom.sc import SCImage
from pydicom.uid import ExplicitVRLittleEndian

from dicom_io.results._common import (
    ModelIdentity,
    clip_lo,
    date_time_kwargs,
    finish,
    source_image_item,
)
from dicom_io.results.source import SourceContext

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


def overlay(gray: np.ndarray, maxval: int, values: np.ndarray, signed: bool) -> np.ndarray:
    """RGB uint8 of ``gray`` (0..maxval, MONOCHROME2) with ``values`` blended over it.

    Unsigned maps (``[0, 1]``) use the jet colours, signed maps (``[-1, 1]``) red for
    positive and blue for negative values; the opacity is ``ALPHA_MAX`` times the map's
    magnitude, so where the map is 0 the capture is the source image unchanged.
    """
    if gray.shape != values.shape:
        raise ValueError(f"map shape {values.shape} is not the image's {gray.shape}")
    out = np.empty((*gray.shape, 3), np.uint8)
    for start in range(0, gray.shape[0], _ROWS):  # in bands that stay in the CPU's cache
        rows = slice(start, start + _ROWS)
        out[rows] = _blend(gray[rows], maxval, values[rows], signed)
    return out


#: Rows blended at a time by :func:`overlay`.
_ROWS = 64


def _blend(gray: np.ndarray, maxval: int, values: np.ndarray, signed: bool) -> np.ndarray:
    low = -1.0 if signed else 0.0
    scale = (_LEVELS[signed] - 1) / (1.0 - low)
    level = np.clip(values, low, 1.0)
    level -= low
    level *= scale
    index = np.rint(level, out=level).astype(np.uint8)
    premultiplied, keep = _LUTS[signed]
    base = gray.astype(np.float32)
    base *= np.float32(255.0 / maxval)
    base *= keep[index]
    rgb = np.take(premultiplied * np.float32(255.0), index, axis=0)  # the same float32 products
    rgb += base[..., None]
    np.rint(rgb, out=rgb)
    np.clip(rgb, 0, 255, out=rgb)
    return rgb


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
) -> SCImage:
    """The overlay capture of checked heat-map ``values`` (float32, source grid)."""
    image = source.image
    rgb = overlay(image.pixels, image.maxval, values, signed)
    reference = source.for_result()  # its own patient, study and lossy elements (copied below)
    sc = SCImage(
        pixel_array=rgb,
        photometric_interpretation="RGB",
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
        pixel_spacing=source.pixel_spacing,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=clip_lo(series_description),
        specific_character_set=reference.get("SpecificCharacterSet"),
        contributing_equipment=[model.contributing_equipment(when)],
        **model.equipment_kwargs(),
        **date_time_kwargs(when),
    )
    sc.copy_patient_and_study_information(reference)
    # Type 2: the source's (possibly oblique, e.g. "LF"), or empty when unknown.
    sc.PatientOrientation = list(source.patient_orientation or ()) or None
    sc.DateOfSecondaryCapture = sc.ContentDate
    sc.TimeOfSecondaryCapture = sc.ContentTime
    sc.BurnedInAnnotation = "YES" if source.burned_in_annotation else "NO"
    sc.RecognizableVisualFeatures = "NO"
    sc.BodyPartExamined = source.body_part
    description = clip_lo(f"{method} heat map of {label} over the source; not for diagnostic use")
    sc.DerivationDescription = description
    sc.ImageComments = (
        f"AI explanation ({method}) of the finding '{label}' by {model.name} {model.version}, "
        "alpha-blended over the source image. Not for diagnostic use."
    )
    sc.SourceImageSequence = [source_image_item(source)]
    if source.lossy:
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in reference:
                sc[keyword] = reference[keyword]
    else:
        sc.LossyImageCompression = "00"
    finish(sc, model, when)
    return sc
