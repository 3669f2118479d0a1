"""Files for people and programs: ``heatmap.png`` (overlay) and ``heatmap.npy`` (the map).

``heatmap.npy`` is always the full map: float32, the source image's rows x columns.
``heatmap.png`` is the source image in grey with the map in colour over it, blended in
proportion to the map's magnitude (0 = the radiograph alone): Grad-CAM-like maps with the
"jet" colour map, signed maps red (positive, for the label) and blue (negative). It has the
source resolution, unless the longer side exceeds ``max_side`` (default 2048 pixels), when it is
downscaled (area averaging) to fit: a full-resolution 3000 x 3000 colour PNG is tens of
megabytes and no easier to read. The peak is marked with a small cross.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domain import HeatMap, SourceImage

logger = logging.getLogger(__name__)

MAX_SIDE = 2048
ALPHA = 0.5


def _grey(image: SourceImage) -> np.ndarray:
    pixels = np.asarray(image.pixels, dtype=np.float32) * (255.0 / max(int(image.maxval), 1))
    return np.clip(pixels, 0, 255)


def _colours(values: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(BGR colours float32 0..255, blending weight 0..1) for each pixel."""
    import cv2

    v = np.nan_to_num(values.astype(np.float32))
    if signed:
        positive = np.clip(v, 0, 1)
        negative = np.clip(-v, 0, 1)
        bgr = np.zeros((*v.shape, 3), np.float32)
        bgr[..., 2] = 255 * (positive > 0)  # red where the map supports the label
        bgr[..., 0] = 255 * (negative > 0)  # blue where it speaks against
        return bgr, np.maximum(positive, negative)
    v = np.clip(v, 0, 1)
    bgr = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    return bgr, v


def overlay(heatmap: HeatMap, image: SourceImage, *, max_side: int = MAX_SIDE,
            alpha: float = ALPHA) -> np.ndarray:
    """The overlay as a BGR ``uint8`` image (downscaled when larger than ``max_side``)."""
    import cv2

    if heatmap.values.shape != (image.rows, image.columns):
        raise ValueError(f"heat map shape {heatmap.values.shape} is not the image's "
                         f"{(image.rows, image.columns)}")
    grey = _grey(image)
    values = heatmap.values
    scale = min(1.0, max_side / max(image.rows, image.columns))
    if scale < 1.0:
        size = (max(1, round(image.columns * scale)), max(1, round(image.rows * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        values = cv2.resize(values.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    bgr, weight = _colours(values, heatmap.signed)
    weight = (alpha * weight)[..., None]
    out = grey[..., None] * (1 - weight) + bgr * weight
    out = np.clip(out, 0, 255).astype(np.uint8)
    if not heatmap.suppressed:
        peak = heatmap.peak
        centre = (round(peak["column"] * scale), round(peak["row"] * scale))
        arm = max(4, round(0.01 * max(out.shape[:2])))
        cv2.drawMarker(out, centre, (255, 255, 255), cv2.MARKER_CROSS, 2 * arm,
                       max(1, arm // 4))
    return out


def write_outputs(heatmap: HeatMap, image: SourceImage, out_dir: str | Path, *,
                  max_side: int = MAX_SIDE, include_suppressed: bool = False) -> list[Path]:
    """Write ``heatmap.png`` and ``heatmap.npy`` into ``out_dir``; return their paths.

    A suppressed map (a sanity check failed) must not be shown: nothing is written, unless
    ``include_suppressed`` asks for the ``.npy`` (for audit; still no picture).
    """
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if heatmap.suppressed and not include_suppressed:
        logger.info("heat map of %s not written: %s", image.name, heatmap.suppressed_reason)
        return written
    npy = out_dir / "heatmap.npy"
    np.save(npy, np.ascontiguousarray(heatmap.values, dtype=np.float32))
    written.append(npy)
    if not heatmap.suppressed:
        png = out_dir / "heatmap.png"
        if not cv2.imwrite(str(png), overlay(heatmap, image, max_side=max_side)):
            raise OSError(f"could not write {png}")
        written.append(png)
    return written
