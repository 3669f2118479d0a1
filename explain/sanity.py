"""Sanity checks on every explanation; a failed one suppresses the map.

Cheap checks (always): the map is finite, and not constant. They look at the map on the model
grid: on the source grid the region outside the centre crop is 0, which would make a constant
map look varied.

Costly check (``sanity=True``): model randomisation (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps"). The top layers of a copy of the network are re-drawn at random
(:func:`explain.target.randomise_top_layers`) and the map is made again; if the two maps are
still alike (Spearman rank correlation above ``max_similarity``), the map does not depend on
what the model learned and is suppressed. It costs one more explanation.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Check = dict[str, Any]


@dataclass(frozen=True)
class Randomisation:
    """Settings of the model-randomisation check.

    ``n_layers``: how many parameterised modules, counted from the output, are re-drawn (for a
    DenseNet: classifier, ``norm5``, the last dense layer's convolution and norm).
    ``max_similarity``: the largest Spearman correlation between the trained and randomised
    maps that still counts as "changed". ``grid``: the maps are compared after area-averaging
    to ``grid`` x ``grid`` (neighbouring pixels of an upsampled map are not independent).
    """

    n_layers: int = 4
    seed: int = 0
    max_similarity: float = 0.5
    grid: int = 56

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"n_layers {self.n_layers!r} must be >= 1")
        if not -1.0 <= self.max_similarity <= 1.0:
            raise ValueError(f"max_similarity {self.max_similarity!r} must be in [-1, 1]")
        if self.grid < 2:
            raise ValueError(f"grid {self.grid!r} must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(passed: bool, detail: str, **extra: Any) -> Check:
    return {"passed": bool(passed), "detail": detail, **extra}


def cheap_checks(model_map: np.ndarray, *, tolerance: float = 1e-6) -> dict[str, Check]:
    """``finite`` and ``not_constant`` on the map on the model grid."""
    model_map = np.asarray(model_map)
    bad = int(np.size(model_map) - np.count_nonzero(np.isfinite(model_map)))
    checks = {"finite": _check(bad == 0, "all values finite" if bad == 0 else
                               f"{bad} of {model_map.size} values are NaN or infinite")}
    finite = model_map[np.isfinite(model_map)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    scale = max(float(np.abs(finite).max()) if finite.size else 0.0, 1.0)
    if spread > tolerance * scale:
        checks["not_constant"] = _check(True, f"values span {spread:.3g}")
    else:
        value = float(finite.flat[0]) if finite.size else float("nan")
        checks["not_constant"] = _check(False, f"map is constant (every value {value:.3g}): the "
                                        "label's score does not depend on this layer/input")
    return checks


def _downsample(model_map: np.ndarray, grid: int) -> np.ndarray:
    import cv2

    m = np.nan_to_num(np.asarray(model_map, dtype=np.float32))
    if m.shape[0] <= grid:
        return m
    return cv2.resize(m, (grid, grid), interpolation=cv2.INTER_AREA)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` (ties get their average rank), as Spearman's correlation needs."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.arange(values.size, dtype=np.float64)
    _, groups, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(groups, weights=ranks) / counts)[groups]


def similarity(a: np.ndarray, b: np.ndarray, grid: int = 56) -> float:
    """Spearman rank correlation of two maps after area-averaging to ``grid``; 0 if flat."""
    x = _ranks(_downsample(a, grid).ravel())
    y = _ranks(_downsample(b, grid).ravel())
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def randomisation_check(trained: np.ndarray, randomised: np.ndarray, config: Randomisation,
                        layers: list[str]) -> Check:
    """Compare the maps of the trained and the top-randomised network (model grid)."""
    rho = similarity(trained, randomised, config.grid)
    passed = rho <= config.max_similarity
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    if passed:
        detail = (f"map changed when {len(layers)} top layers were randomised "
                  f"(Spearman {rho:.2f} <= {config.max_similarity})")
    else:
        detail = (f"map barely changed when the top layers ({shown}) were randomised "
                  f"(Spearman {rho:.2f} > {config.max_similarity}): it does not reflect what "
                  "the model learned")
    return _check(passed, detail, spearman=round(rho, 4), randomised_layers=layers,
                  **config.to_dict())


def verdict(checks: dict[str, Check]) -> tuple[bool, str | None]:
    """(suppressed, reason) from the checks: suppressed when any failed."""
    failed = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["passed"]]
    return (bool(failed), "; ".join(failed) if failed else None)
