"""The one result type of every explanation method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class HeatMap:
    """An attribution map on the *source image's* pixel grid.

    ``values`` is float32, shape (rows, columns) of the source image, normalised: in
    ``[0, 1]`` for Grad-CAM-like methods (``signed`` False), in ``[-1, 1]`` for signed methods
    such as SHAP (``signed`` True). Pixels outside the model's centre crop are 0.
    ``sanity`` maps each check's name to ``{"passed": bool, "detail": str}``; when any failed,
    ``suppressed`` is True and ``suppressed_reason`` says why: the map must not be shown.
    """

    values: np.ndarray
    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    signed: bool = False
    sanity: dict[str, dict[str, Any]] = field(default_factory=dict)
    suppressed: bool = False
    suppressed_reason: str | None = None

    @property
    def peak(self) -> dict[str, int]:
        """Source-pixel position of the map's maximum, as ``{"row": r, "column": c}``."""
        r, c = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return {"row": int(r), "column": int(c)}

    def summary(self) -> dict[str, Any]:
        """What ``result.json`` (and later the SR) records about the explanation."""
        return {
            "method": self.method,
            "label": self.label,
            "params": self.params,
            "signed": self.signed,
            "sanity": self.sanity,
            "suppressed": self.suppressed,
            "suppressed_reason": self.suppressed_reason,
            "peak": None if self.suppressed else self.peak,
        }
