"""A finding's region: where its heat map exceeds a fraction of its peak, as one outline.

What the SR (TID 1410 planar ROI) and the capture draw. The outline is the boundary of the
connected area around the map's peak where the map is at least ``fraction`` of that peak
(default :data:`REGION_FRACTION`, one half: the map's "full width at half maximum"),
simplified (Douglas-Peucker) to at most :data:`MAX_POINTS` points, in source pixel
coordinates ``(column, row)`` with pixel centres at ``+ 0.5`` (PS3.3 C.18.6.1.1), closed.
An outline that degenerates (fewer than three distinct points, no area) becomes the 5-point
box around the area. Large maps are traced reduced (:data:`TRACE_SIDE`).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from domain import HeatMap, Region

logger = logging.getLogger(__name__)

#: Fraction of the map's peak that bounds a region (half maximum).
REGION_FRACTION = 0.5
#: Most points of an outline (closing point included): viewers draw it; a radiologist reads it.
MAX_POINTS = 40
#: The outline is traced on the map reduced (area average) to about this many pixels a side:
#: a map up-sampled from a 7 x 7 grid has no detail finer than that, and tracing a 2048 x
#: 2048 map costs ~16 ms against ~1 ms.
TRACE_SIDE = 512


def region_of(heatmap: HeatMap, probability: float, threshold: float, *,
              fraction: float = REGION_FRACTION, max_points: int = MAX_POINTS) -> Region | None:
    """The region of ``heatmap`` (on the source grid), or None for a map with no positive value
    or a suppressed map (which must not be shown)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"region fraction {fraction!r} must lie in (0, 1)")
    if max_points < 5:
        raise ValueError(f"max_points {max_points!r} must be at least 5")
    if heatmap.suppressed:
        return None
    values = np.asarray(heatmap.values, dtype=np.float32)
    if not values.size or not float(values.max()) > 0:
        return None
    step = max(1, max(values.shape) // TRACE_SIDE)
    if step > 1:  # whole steps: a traced pixel is step x step source pixels
        rows, columns = values.shape[0] // step, values.shape[1] // step
        values = cv2.resize(values[:rows * step, :columns * step], (columns, rows),
                            interpolation=cv2.INTER_AREA)
    peak = float(values.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    mask = (values >= fraction * peak).astype(np.uint8)
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    area = (labels == labels[row, column]).astype(np.uint8)
    points = _outline(area, max_points)
    if points is None:
        points = _box(area)
    return Region(label=heatmap.label, probability=float(probability),
                  threshold=float(threshold), points=points * np.float32(step),
                  fraction=float(fraction), method=heatmap.method)


def _outline(area: np.ndarray, max_points: int) -> np.ndarray | None:
    """The simplified, closed outline of ``area`` in (column, row) pixel-centre coordinates."""
    contours, _ = cv2.findContours(area, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=len)
    side = max(area.shape)
    epsilon = max(1.0, side / 1000)
    simplified = cv2.approxPolyDP(contour, epsilon, True)
    while len(simplified) > max_points - 1:
        epsilon *= 1.5
        simplified = cv2.approxPolyDP(contour, epsilon, True)
    points = simplified.reshape(-1, 2).astype(np.float32) + 0.5
    if len(np.unique(points, axis=0)) < 3 or cv2.contourArea(points) <= 0:
        return None
    return np.vstack([points, points[:1]])


def _box(area: np.ndarray) -> np.ndarray:
    """The 5-point closed box around ``area``'s pixels (their outer edges)."""
    rows, columns = np.nonzero(area)
    c0, c1 = float(columns.min()), float(columns.max()) + 1
    r0, r1 = float(rows.min()), float(rows.max()) + 1
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float32)
