"""Where on the source image a finding's explanation points: one closed outline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A finding's region on the *source* pixel grid.

    ``points`` is float32 ``(n, 2)``, each row ``(column, row)`` in source pixels (DICOM's
    SCOORD order, pixel centres at integer + 0.5 as in PS3.3 C.18.6.1.1), closed: the first
    point equals the last, ``n >= 4``. The outline is where the finding's heat map exceeds
    ``fraction`` of its peak (a degenerate outline is a 5-point box); ``probability`` is the
    finding's, ``threshold`` its decision threshold.
    """

    label: str
    probability: float
    threshold: float
    points: np.ndarray
    fraction: float
    method: str = "gradcam"

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 4:
            raise ValueError(f"region points of shape {points.shape}: need (n >= 4, 2)")
        if not np.array_equal(points[0], points[-1]):
            raise ValueError("region outline is not closed (first point != last point)")
        if not np.all(np.isfinite(points)):
            raise ValueError("region points contain NaN or infinity")
        if not 0.0 < float(self.fraction) < 1.0:
            raise ValueError(f"region fraction {self.fraction!r} must lie in (0, 1)")
        object.__setattr__(self, "points", points)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(column_min, row_min, column_max, row_max)`` of the outline."""
        c, r = self.points[:, 0], self.points[:, 1]
        return float(c.min()), float(r.min()), float(c.max()), float(r.max())

    def contains(self, row: float, column: float) -> bool:
        """Whether the source pixel position ``(row, column)`` lies inside the outline
        (even-odd rule)."""
        x0, y0 = self.points[:-1, 0], self.points[:-1, 1]
        x1, y1 = self.points[1:, 0], self.points[1:, 1]
        crosses = (y0 > row) != (y1 > row)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (row - y0) * (x1 - x0) / (y1 - y0)
        return bool(np.count_nonzero(crosses & (column < at)) % 2)
