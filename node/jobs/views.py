"""What the operators' page keeps of a done job: its findings, explanation figures, result
UIDs, a thumbnail and heat-map overlays, for ``ui_retention_days`` (after the job's files are
deleted by ``purge_delivered``).

The figures are rows of the job records (:func:`node.jobs.browse.keep_view`); the images are
small PNG files in ``views/<job id>/`` of the store's folder. A thumbnail is kept only where
``ui_thumbnails`` allows it (by default: Burned In Annotation is ``NO``), and patient
identifiers only with ``ui_show_patient``. Keeping a view never fails a job.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from node.core.pipeline import Outcome
from node.jobs.browse import expired_views, keep_view
from node.jobs.intake import Work
from node.jobs.model import JobOutcome
from node.jobs.worker import Worker
from node.metrics import FINDING_PROBABILITY, FINDINGS
from node.settings import Settings

logger = logging.getLogger(__name__)

#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 512
#: Expired views are looked for at most this often (seconds), by the worker that keeps one.
PRUNE_EVERY_S = 3600
#: Days the model monitor shows: findings are kept this long even with a shorter retention.
MONITOR_DAYS = 31
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")


def views_folder(settings: Settings) -> Path:
    return Path(settings.store or settings.spool) / "views"


def thumbnails_allowed(settings: Settings, burned_in: str | None) -> bool:
    """Whether a source with this Burned In Annotation may be shown as a thumbnail."""
    if settings.ui_thumbnails == "all":
        return True
    return settings.ui_thumbnails == "no-burned-in" and burned_in == "NO"


def _png(image: Image.Image) -> bytes:
    """PNG at zlib's fastest level: made for every job in the worker, read by a few; the
    default level cost the worker several times the CPU for files a third smaller."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def thumbnail(pixels: np.ndarray, maxval: int) -> np.ndarray:
    """8-bit grey, at most :data:`THUMB_SIDE` pixels, stretched between the 1st and 99th
    percentiles so that a radiograph is readable."""
    rows, cols = pixels.shape
    step = max(1, int(np.ceil(max(rows, cols) / THUMB_SIDE)))
    small = pixels[::step, ::step].astype(np.float32)
    low, high = np.percentile(small, (1, 99)) if small.size else (0, maxval)
    scaled = (small - low) / max(float(high - low), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


#: The overlay's colours by heat level 0..255 (a PNG palette with alpha): red to yellow,
#: transparent where cold.
_LEVELS = np.arange(256, dtype=np.float32) / 255
OVERLAY_PALETTE = np.stack([
    np.full(256, 255.0), np.clip(_LEVELS * 2 - 1, 0, 1) * 255, np.zeros(256),
    np.where(_LEVELS < 0.3, 0, _LEVELS**1.5) * 150], axis=1).astype(np.uint8)


def overlay(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heat map's levels (0..255) on the thumbnail's grid, for :data:`OVERLAY_PALETTE`.

    The map (on the source grid, smooth: upsampled from the network's feature grid) is
    subsampled to about the thumbnail's size first, so that no full-size pass is made; one
    byte a pixel (a palette PNG) encodes in a quarter of the time of RGBA."""
    step = max(1, min(values.shape[0] // shape[0], values.shape[1] // shape[1]))
    v = np.clip(np.abs(values[::step, ::step].astype(np.float32)), 0, 1)
    img = Image.fromarray((v * 255).astype(np.uint8), "L").resize((shape[1], shape[0]),
                                                                  Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _overlay_png(levels: np.ndarray) -> bytes:
    img = Image.fromarray(levels, "P")
    img.putpalette(OVERLAY_PALETTE.tobytes(), rawmode="RGBA")
    return _png(img)


def make_view(result: Outcome, settings: Settings
              ) -> tuple[dict[str, Any], list[tuple[str, float, bool]], dict[str, bytes]]:
    """The summary, findings and image files of a done job."""
    image = result.scored.image
    header = image.header
    value = (lambda k: str(header.get(k, "")) or None) if header is not None else (
        lambda k: None)
    burned_in = value("BurnedInAnnotation")
    findings = result.scored.prediction.findings
    files: dict[str, bytes] = {}
    scale = 1.0
    shown = thumbnails_allowed(settings, burned_in)
    thumb_shape = None
    if shown:
        thumb = thumbnail(image.pixels, image.maxval)
        thumb_shape = thumb.shape
        scale = thumb.shape[1] / image.columns
        files["thumb.png"] = _png(Image.fromarray(thumb, "L"))
    explained = []
    for i, heatmap in enumerate(result.heatmaps):
        name = None
        if thumb_shape is not None and not heatmap.suppressed:
            name = f"overlay-{i}.png"
            files[name] = _overlay_png(overlay(heatmap.values, thumb_shape))
        explained.append({"label": heatmap.label, "method": heatmap.method,
                          "sanity": heatmap.sanity, "suppressed": heatmap.suppressed,
                          "suppressed_reason": heatmap.suppressed_reason, "overlay": name})
    summary: dict[str, Any] = {
        "findings": [f.to_dict() for f in findings],
        "explained": explained,
        "explain_error": result.explain_error,
        "regions": [{"label": r.label, "fraction": float(r.fraction),
                     "points": [[round(float(x) * scale, 1), round(float(y) * scale, 1)]
                                for x, y in r.points]} for r in result.regions],
        "results": {kind: str(ds.SOPInstanceUID) for kind, ds in result.objects.items()},
        "source": {**image.source_uids(), "modality": value("Modality"),
                   "study_date": value("StudyDate"), "burned_in_annotation": burned_in},
        "thumbnail": None if thumb_shape is None else {"width": int(thumb_shape[1]),
                                                       "height": int(thumb_shape[0])},
    }
    if settings.ui_show_patient:
        summary["patient"] = {k: value(k) for k in PATIENT_KEYWORDS}
    return summary, [(f.label, f.probability, f.positive) for f in findings], files


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


class ViewWorker(Worker):
    """A :class:`~node.jobs.worker.Worker` that keeps each done job's view for ``/ui``."""

    _pruned = 0.0
    _prune_lock = threading.Lock()

    def closed(self, work: Work, outcome: JobOutcome, result: Outcome | None) -> None:
        super().closed(work, outcome, result)
        if result is None or outcome.state != "done":
            return
        try:
            summary, findings, files = make_view(result, self.settings)
            for label, probability, positive in findings:
                FINDINGS.labels(label, "true" if positive else "false").inc()
                FINDING_PROBABILITY.labels(label).inc(float(probability))
            if files:
                write_files(views_folder(self.settings) / str(work.ticket.job_id), files)
            keep_view(self.records, work.ticket.job_id,  # type: ignore[arg-type]
                      work.ticket.received_at or time.time(), summary, findings)
            self.prune()
        except Exception:  # the page's copy is a convenience: the job is done all the same
            logger.exception("job %d: keeping its view for /ui failed", work.ticket.job_id)

    def prune(self) -> None:
        """Forget views older than ``ui_retention_days`` (at most once per hour)."""
        now = time.time()
        with ViewWorker._prune_lock:
            if now - ViewWorker._pruned < PRUNE_EVERY_S:
                return
            ViewWorker._pruned = now
        before = now - self.settings.ui_retention_days * 86400
        findings_before = min(before, now - MONITOR_DAYS * 86400)  # the monitor's days
        for job_id in expired_views(self.records, before,  # type: ignore[arg-type]
                                    findings_before):
            shutil.rmtree(views_folder(self.settings) / str(job_id), ignore_errors=True)
