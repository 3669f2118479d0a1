"""What the heat-map capture says in its pixels: region outlines and a legend band below.

A radiologist sees the capture in a viewer that shows pixels, not attributes, so what the
colours mean travels with them: the outlined findings with their probabilities (each in its
outline's colour), the colour scale with its ends labelled, the model and "not for diagnostic
use". Sizes scale with the image's columns so the text stays readable at zoom-to-fit.

Pure numpy and OpenCV: its fonts are built in (Hershey strokes in OpenCV 4, an embedded sans
in OpenCV 5), so no font file or system font is needed; the band takes a few milliseconds.
Text is drawn as ASCII (accents dropped, other characters ``?``): all OpenCV 4 can draw.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from domain import Region

logger = logging.getLogger(__name__)

Colour = tuple[int, int, int]

#: Outline colours (RGB), in the order regions get them: distinct from each other, bright on
#: the black band, and (the first ones) apart from the heat map's jet colours.
PALETTE: tuple[Colour, ...] = (
    (255, 0, 255),  # magenta
    (255, 255, 255),  # white
    (0, 255, 0),  # green
    (255, 160, 0),  # orange
    (0, 255, 255),  # cyan
    (255, 255, 0),  # yellow
    (255, 120, 180),  # pink
    (150, 170, 255),  # light blue
    (170, 255, 120),  # light green
    (200, 140, 255),  # lilac
)
WHITE: Colour = (255, 255, 255)
GREY: Colour = (200, 200, 200)
NOTICE: Colour = (255, 220, 120)  # "no finding above its threshold"
BACKGROUND: Colour = (0, 0, 0)
HALO: Colour = (0, 0, 0)

#: Text height (capitals, pixels) as a share of the columns, and its least value.
TEXT_SHARE, TEXT_MIN = 0.022, 16
#: Outline thickness as a share of the columns, and its least value (pixels).
OUTLINE_SHARE, OUTLINE_MIN = 0.003, 2
#: Width of the colour-scale bar as a share of the columns.
BAR_SHARE = 0.25

_FONT = cv2.FONT_HERSHEY_DUPLEX
_SHIFT = 4  # outline points in 1/16 pixel (cv2's fixed-point coordinates)


def _check_columns(columns: object) -> int:
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)):
        raise TypeError(f"columns must be an int, not {type(columns).__name__}")
    if columns < 1:
        raise ValueError(f"columns {columns!r} must be positive")
    return int(columns)


def text_height(columns: int) -> int:
    """Height of capitals in pixels: ~2.2 % of the columns (readable at zoom-to-fit), >= 16."""
    return max(TEXT_MIN, round(TEXT_SHARE * _check_columns(columns)))


def outline_thickness(columns: int) -> int:
    """Outline width in pixels: ~0.3 % of the columns (visible at zoom-to-fit), at least 2."""
    return max(OUTLINE_MIN, round(OUTLINE_SHARE * _check_columns(columns)))


def region_colours(count: int) -> list[Colour]:
    """The outline colour of each of ``count`` regions (the palette repeats past its end)."""
    if count > len(PALETTE):
        logger.debug("%d regions, %d colours: colours repeat", count, len(PALETTE))
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def percent(probability: float) -> str:
    """``0.913`` -> ``"91 %"``; never "0 %" or "100 %" for a probability strictly inside."""
    value = 100.0 * float(probability)
    if 0.0 < value < 1.0:
        return "<1 %"
    if 99.0 < value < 100.0:
        return ">99 %"
    return f"{value:.0f} %"


def ascii_text(text: str) -> str:
    """``text`` as OpenCV's fonts can draw it: accents dropped, other characters ``?``."""
    decomposed = unicodedata.normalize("NFKD", str(text))
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(ch if " " <= ch <= "~" else "?" for ch in kept)


def _check_colour(colour: object) -> Colour:
    try:
        rgb = tuple(int(v) for v in colour)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"colour {colour!r} must be three ints") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {colour!r} must be three ints in 0..255")
    return rgb  # type: ignore[return-value]


def _check_regions(regions: object, colours: object) -> tuple[list[Region], list[Colour]]:
    if isinstance(regions, (str, bytes)) or not isinstance(regions, Sequence):
        raise TypeError(f"regions must be a sequence of Region, not {type(regions).__name__}")
    for region in regions:
        if not isinstance(region, Region):
            raise TypeError(f"region {region!r} must be a Region, not {type(region).__name__}")
    if isinstance(colours, (str, bytes)) or not isinstance(colours, Sequence):
        raise TypeError(f"colours must be a sequence of RGB, not {type(colours).__name__}")
    if len(colours) != len(regions):
        raise ValueError(f"{len(colours)} colours for {len(regions)} regions")
    return list(regions), [_check_colour(c) for c in colours]


def outline(rgb: np.ndarray, regions: Sequence[Region], colours: Sequence[Colour],
            thickness: int | None = None) -> np.ndarray:
    """Draw each region's closed outline on ``rgb`` (uint8, rows x columns x 3) in place.

    Points are (column, row) with pixel centres at integer + 0.5 (:class:`Region`), drawn with
    sub-pixel precision; ``thickness`` defaults to :func:`outline_thickness`. Returns ``rgb``.
    """
    regions, checked = _check_regions(regions, colours)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3:
        raise ValueError(
            f"image must be a uint8 rows x columns x 3 array, not "
            f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
        )
    if not rgb.flags.c_contiguous:
        raise ValueError("image must be C-contiguous (drawn in place)")
    width = outline_thickness(rgb.shape[1]) if thickness is None else int(thickness)
    if width < 1:
        raise ValueError(f"outline thickness {thickness!r} must be positive")
    scale = float(1 << _SHIFT)
    halo = width + 2 * max(1, width // 3)
    # Later regions first: the most probable one's outline stays on top where they cross.
    for region, colour in reversed(list(zip(regions, checked, strict=True))):
        points = np.rint((region.points.astype(np.float64) - 0.5) * scale).astype(np.int32)
        curve = [points.reshape(-1, 1, 2)]
        # A dark rim keeps light outlines visible over bright bone.
        cv2.polylines(rgb, curve, True, HALO, halo, cv2.LINE_AA, _SHIFT)
        cv2.polylines(rgb, curve, True, colour, width, cv2.LINE_AA, _SHIFT)
    return rgb


@dataclass(frozen=True)
class _Text:
    text: str
    colour: Colour = WHITE
    spaces: int = 1  # before the next item: 1 between words, more between entries


@dataclass(frozen=True)
class _Bar:
    """The colour scale: ``low`` label, the bar, ``high`` label (kept on one line)."""

    colours: np.ndarray
    low: str
    high: str


_Item = _Text | _Bar


@dataclass(frozen=True)
class _Style:
    height: int  # capitals, pixels
    scale: float
    weight: int  # stroke, pixels
    gap: int  # between words: a space's width
    line: int  # baseline to baseline
    margin: int
    bar_width: int


def _style(columns: int) -> _Style:
    height = text_height(columns)
    weight = max(1, round(height / 16))
    scale = cv2.getFontScaleFromHeight(_FONT, height, weight)
    (space, _), _ = cv2.getTextSize("a b", _FONT, scale, weight)
    (letters, _), _ = cv2.getTextSize("ab", _FONT, scale, weight)
    return _Style(
        height=height,
        scale=scale,
        weight=weight,
        gap=max(4, space - letters),
        line=round(1.6 * height),
        margin=max(4, height // 2),
        bar_width=max(height * 3, round(BAR_SHARE * columns)),
    )


def _text_width(text: str, style: _Style) -> int:
    (width, _), _ = cv2.getTextSize(text, _FONT, style.scale, style.weight)
    return int(width)


def _width(item: _Item, style: _Style) -> int:
    if isinstance(item, _Text):
        return _text_width(item.text, style)
    return (_text_width(item.low, style) + style.bar_width + _text_width(item.high, style)
            + 2 * style.gap)


def _words(text: str, colour: Colour = WHITE) -> list[_Item]:
    """A sentence as items that may wrap between words."""
    return [_Text(word, colour) for word in ascii_text(text).split()]


def _layout(paragraphs: Sequence[Sequence[_Item]], columns: int,
            style: _Style) -> list[tuple[int, int, _Item]]:
    """``(line, x, item)`` of every item: left to right, wrapping at the band's width, each
    paragraph on a new line. An item wider than the band gets a line of its own (clipped)."""
    placed: list[tuple[int, int, _Item]] = []
    right = columns - style.margin
    line = -1
    for paragraph in paragraphs:
        line += 1
        x = style.margin
        for item in _fitted(paragraph, right - style.margin, style):
            width = _width(item, style)
            if x > style.margin and x + width > right:
                line += 1
                x = style.margin
            placed.append((line, x, item))
            x += width + style.gap * (item.spaces if isinstance(item, _Text) else 1)
    return placed


def _fitted(paragraph: Sequence[_Item], room: int, style: _Style) -> list[_Item]:
    """``paragraph`` with each text wider than ``room`` split into words (they may wrap)."""
    out: list[_Item] = []
    for item in paragraph:
        if isinstance(item, _Text) and " " in item.text and _width(item, style) > room:
            words = item.text.split()
            out += [_Text(word, item.colour) for word in words[:-1]]
            out.append(_Text(words[-1], item.colour, item.spaces))
        else:
            out.append(item)
    return out


def _draw(band: np.ndarray, placed: list[tuple[int, int, _Item]], style: _Style) -> None:
    for line, x, item in placed:
        baseline = style.margin + style.height + line * style.line
        if isinstance(item, _Text):
            cv2.putText(band, item.text, (x, baseline), _FONT, style.scale, item.colour,
                        style.weight, cv2.LINE_AA)
            continue
        cv2.putText(band, item.low, (x, baseline), _FONT, style.scale, GREY, style.weight,
                    cv2.LINE_AA)
        x0 = x + _text_width(item.low, style) + style.gap
        x1 = min(x0 + style.bar_width, band.shape[1])
        if x1 > x0:
            samples = np.linspace(0, len(item.colours) - 1, x1 - x0)
            strip = item.colours[np.rint(samples).astype(np.intp)]
            band[baseline - style.height:baseline, x0:x1] = strip[None, :, :]
        cv2.putText(band, item.high, (x0 + style.bar_width + style.gap, baseline), _FONT,
                    style.scale, GREY, style.weight, cv2.LINE_AA)


def legend_band(
    columns: int,
    *,
    regions: Sequence[Region],
    colours: Sequence[Colour],
    label: str,
    method: str,
    probability: float | None,
    findings_above_threshold: bool,
    scale: np.ndarray,
    scale_ends: tuple[str, str],
    model: str,
) -> np.ndarray:
    """The legend appended below the capture: uint8 RGB, ``columns`` wide.

    Lines: what the map shows (or that no finding is above its threshold and whose map it
    is), the outlined regions with their probabilities in their outline colours, the colour
    scale ``scale`` (uint8 RGB, low to high end) labelled ``scale_ends``, then ``model`` and
    "not for diagnostic use". Rows: as many lines as the text needs at this width.
    """
    columns = _check_columns(columns)
    regions, checked = _check_regions(regions, colours)
    for name, value in (("label", label), ("method", method), ("model", model)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"legend {name} {value!r} must be a non-empty str")
    if not isinstance(findings_above_threshold, (bool, np.bool_)):
        raise TypeError(f"findings_above_threshold must be a bool, not "
                        f"{type(findings_above_threshold).__name__}")
    findings_above_threshold = bool(findings_above_threshold)
    if probability is not None and (isinstance(probability, (bool, np.bool_)) or not isinstance(
            probability, (int, float, np.integer, np.floating))
            or not 0.0 <= float(probability) <= 1.0):
        raise ValueError(f"probability {probability!r} must be a number in [0, 1] or None")
    colour_scale = np.asarray(scale)
    if colour_scale.dtype != np.uint8 or colour_scale.ndim != 2 or colour_scale.shape[1] != 3 \
            or len(colour_scale) < 2:
        raise ValueError(f"scale must be uint8 (n >= 2, 3), not {colour_scale.dtype} "
                         f"{colour_scale.shape}")
    if len(scale_ends) != 2 or not all(isinstance(end, str) for end in scale_ends):
        raise ValueError(f"scale_ends {scale_ends!r} must be two str")

    shown = ascii_text(label.strip())
    chance = f" ({percent(probability)})" if probability is not None else ""
    if findings_above_threshold:
        mapped = f"{shown} {percent(probability)}" if probability is not None else shown
        status = [*_words(f"AI heat map ({method.strip()}) of"),
                  _Text(mapped, checked[0] if _maps(regions, label) else WHITE)]
    else:
        status = [*_words("No finding above its threshold; map of", NOTICE),
                  _Text(f"{shown}{chance}", NOTICE)]
    paragraphs: list[list[_Item]] = [status]
    if regions:
        entries: list[_Item] = [_Text("Outlined:", GREY, 2)]
        for region, colour in zip(regions, checked, strict=True):
            below = "" if region.probability >= region.threshold else " (below threshold)"
            name = ascii_text(region.label.strip())
            entries.append(_Text(f"{name} {percent(region.probability)}{below}", colour, 3))
        paragraphs.append(entries)
    paragraphs.append([_Text("Map value", GREY, 2),
                       _Bar(colour_scale, ascii_text(scale_ends[0]), ascii_text(scale_ends[1]))])
    paragraphs.append(_words(f"{model.strip()} - not for diagnostic use"))

    style = _style(columns)
    placed = _layout(paragraphs, columns, style)
    lines = 1 + max(line for line, _, _ in placed)
    rows = 2 * style.margin + style.height + (lines - 1) * style.line + _descent(style)
    band = np.empty((rows, columns, 3), np.uint8)
    band[...] = BACKGROUND
    _draw(band, placed, style)
    return band


def _maps(regions: Sequence[Region], label: str) -> bool:
    """Whether the first region is the mapped finding's (the status line takes its colour)."""
    return bool(regions) and regions[0].label.strip() == label.strip()


def _descent(style: _Style) -> int:
    """Pixels below the baseline that letters such as ``g`` and ``y`` reach."""
    _, baseline = cv2.getTextSize("gjpqy", _FONT, style.scale, style.weight)
    return math.ceil(baseline + style.weight)
