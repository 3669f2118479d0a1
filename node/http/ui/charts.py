"""Small charts drawn on the server as SVG geometry (the templates write the elements)."""

from __future__ import annotations

import datetime
from typing import Any

WIDTH, HEIGHT = 360, 90


def hour_chart(bins: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars of jobs closed per bin, and a line of the mean latency of those done."""
    most = max([b["closed"] for b in bins] + [1])
    slowest = max([b["latency_s"] or 0 for b in bins] + [1e-9])
    step = WIDTH / len(bins)
    bars, points = [], []
    for i, b in enumerate(bins):
        h = HEIGHT * b["closed"] / most
        start = datetime.datetime.fromtimestamp(b["start"], datetime.UTC).strftime("%H:%M")
        bars.append({"x": round(i * step + 1, 1), "y": round(HEIGHT - h, 1),
                     "w": round(step - 2, 1), "h": round(h, 1), "n": b["closed"],
                     "title": f"{start} UTC: {b['closed']} closed" + (
                         f", mean latency {b['latency_s']:.1f} s" if b["latency_s"] else "")})
        if b["latency_s"] is not None:
            points.append((round(i * step + step / 2, 1),
                           round(HEIGHT - HEIGHT * b["latency_s"] / slowest, 1)))
    return {"width": WIDTH, "height": HEIGHT, "bars": bars, "points": points,
            "line": " ".join(f"{x},{y}" for x, y in points),
            "most": most, "slowest": slowest if points else None,
            "total": sum(b["closed"] for b in bins)}


def sparkline(values: list[float | None], top: float = 1.0, width: int = 240,
              height: int = 28) -> list[tuple[float, float]]:
    """The points of a line through ``values`` (``None``: no point) in ``[0, top]``, a
    margin of 2 pixels all round (a point is drawn as a dot too: one day is a line)."""
    step = (width - 4) / max(len(values) - 1, 1)
    return [(round(2 + i * step, 1), round(2 + (height - 4) * (1 - min(v / top, 1)), 1))
            for i, v in enumerate(values) if v is not None]
