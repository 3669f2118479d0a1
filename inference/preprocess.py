"""Preprocessing exactly as torchxrayvision training did it, and its inverse for heat maps.

Training (torchxrayvision datasets, e.g. PadChest 16-bit PNGs) did, per image:
``xrv.datasets.normalize(img, maxval, reshape=True)`` (scale to [-1024, 1024], add channel),
``XRayCenterCrop()`` (square crop of the short side, centred), ``XRayResizer(224)``
(``skimage.transform.resize``, anti-aliased). :func:`pre_process` does the same, with the
resize computed only where the model reads it (:mod:`inference.resize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torchxrayvision as xrv

from inference.card import Preprocessing
from inference.resize import resize_square, resize_square_lookup


@dataclass(frozen=True)
class Geometry:
    """How a source image (rows x columns) maps onto the model's size x size input.

    The centre crop keeps source rows ``top..top+side`` and columns ``left..left+side``;
    that square is resized to ``size`` x ``size``.
    """

    rows: int
    columns: int
    top: int
    left: int
    side: int
    size: int

    @classmethod
    def for_source(cls, rows: int, columns: int, size: int) -> Geometry:
        side = min(rows, columns)
        # XRayCenterCrop: start = dim // 2 - side // 2
        return cls(rows, columns, rows // 2 - side // 2, columns // 2 - side // 2, side, size)

    @property
    def scale(self) -> float:
        """Source pixels per model pixel."""
        return self.side / self.size

    def model_to_source(self, row: float, column: float) -> tuple[float, float]:
        """Centre of model pixel (row, column) in source pixel coordinates."""
        s = self.scale
        return self.top + (row + 0.5) * s - 0.5, self.left + (column + 0.5) * s - 0.5

    def source_to_model(self, row: float, column: float) -> tuple[float, float]:
        s = self.scale
        return (row - self.top + 0.5) / s - 0.5, (column - self.left + 0.5) / s - 0.5

    def to_source(self, model_map: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put a size x size map back on the source grid (float32, rows x columns).

        The crop square gets the map resized (bilinear) to side x side; pixels the crop cut
        off, which the model never saw, get ``fill``.
        """
        return self.place(self.to_crop(model_map), fill)

    def to_crop(self, model_map: np.ndarray) -> np.ndarray:
        """A size x size map resized (bilinear) to the crop square, side x side (float32)."""
        import cv2

        model_map = np.asarray(model_map, dtype=np.float32)
        if model_map.shape != (self.size, self.size):
            raise ValueError(f"map shape {model_map.shape} is not ({self.size}, {self.size})")
        return cv2.resize(model_map, (self.side, self.side), interpolation=cv2.INTER_LINEAR)

    def place(self, square: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """The source grid (float32) with ``square`` at the crop and ``fill`` elsewhere."""
        if square.shape != (self.side, self.side):
            raise ValueError(f"square shape {square.shape} is not ({self.side}, {self.side})")
        out = np.full((self.rows, self.columns), fill, dtype=np.float32)
        out[self.top:self.top + self.side, self.left:self.left + self.side] = square
        return out

    def to_model(self, source_map: np.ndarray) -> np.ndarray:
        """Crop and resize a source-grid map to the model grid (area averaging)."""
        import cv2

        source_map = np.asarray(source_map, dtype=np.float32)
        crop = source_map[self.top:self.top + self.side, self.left:self.left + self.side]
        return cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)


def _normalise(values: np.ndarray, maxval: int, scale: float) -> np.ndarray:
    """``xrv.datasets.normalize`` (float32 operations, in its order), then ``scale``."""
    return ((2 * (values.astype(np.float32) / maxval) - 1.0) * 1024) * (scale / 1024.0)


@lru_cache(maxsize=8)
def _normalised(dtype: str, maxval: int, scale: float) -> np.ndarray:
    """:func:`_normalise` of every value of an unsigned ``dtype``, held as float64."""
    values = np.arange(np.iinfo(np.dtype(dtype)).max + 1, dtype=np.dtype(dtype))
    table = _normalise(values, maxval, scale).astype(np.float64)
    table.flags.writeable = False
    return table


def pre_process(pixels: np.ndarray, maxval: int, pre: Preprocessing) -> tuple[np.ndarray, Geometry]:
    """One display image (``0..maxval``) to the model input ``(1, size, size)`` float32.

    ``pre.resize``: ``"skimage"`` crops first, then scales exactly as
    ``xrv.datasets.normalize`` does (the same float32 operations, so the same values) and
    resizes with :func:`inference.resize.resize_square` (skimage's operator, within one
    float32 rounding step of it); ``"skimage-reference"`` and ``"cv2"`` call torchxrayvision's
    functions literally, in training's order.
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2-D, got shape {pixels.shape}")
    geometry = Geometry.for_source(*pixels.shape, pre.size)
    if pre.resize == "skimage":
        # normalize's own check, on the whole image (needless when the type cannot exceed)
        bounded = pixels.dtype.kind in "ui" and np.iinfo(pixels.dtype).max <= maxval
        if not bounded and pixels.max() > maxval:
            raise ValueError(f"max image value ({pixels.max()}) higher than expected "
                             f"bound ({maxval}).")
        crop = pixels[geometry.top:geometry.top + geometry.side,
                      geometry.left:geometry.left + geometry.side]
        if pixels.dtype in (np.uint8, np.uint16):  # every value once, then a lookup
            table = _normalised(pixels.dtype.str, maxval, pre.scale)
            return resize_square_lookup(crop, table, pre.size), geometry
        return resize_square(_normalise(crop, maxval, pre.scale)[None], pre.size), geometry
    img = xrv.datasets.normalize(pixels, maxval, reshape=True) * (pre.scale / 1024.0)
    img = xrv.datasets.XRayCenterCrop()(img)
    engine = "skimage" if pre.resize == "skimage-reference" else pre.resize
    img = xrv.datasets.XRayResizer(pre.size, engine=engine)(img)
    return img.astype(np.float32, copy=False), geometry


def pre_process_batch(
    images: Sequence[tuple[np.ndarray, int]], pre: Preprocessing
) -> tuple[np.ndarray, list[Geometry]]:
    """Several images to one ``(N, 1, size, size)`` batch."""
    out = np.empty((len(images), 1, pre.size, pre.size), dtype=np.float32)
    geometries = []
    for i, (pixels, maxval) in enumerate(images):
        out[i], geometry = pre_process(pixels, maxval, pre)
        geometries.append(geometry)
    return out, geometries
