"""The scoring response: one JSON document for ``/score``, Azure ``score.py`` and STOW-RS.

The seed's contract is kept (``top_three_labels`` and ``probability``, in percent), next to
the full per-label result.
"""

from __future__ import annotations

import base64
from typing import Any

from dicom_io import from_dataset, read_dataset
from dicom_io.results.uids import instance_uid
from domain import Region, SourceImage
from inference import LoadedModel
from node.core.pipeline import Outcome


def read_upload(data: bytes, name: str = "request") -> SourceImage:
    """Parse, gate and decode an uploaded object, once (each step turns pydicom's many
    exception types into its own ``DicomIOError``).

    Raises:
        DicomIOError: empty, unreadable or broken (``DeclinedError``: the gate declined it).
    """
    return from_dataset(read_dataset(data), name=name)


def result_uids(model: LoadedModel, sop_instance_uid: str | None,
                parametric_map: bool = False) -> dict[str, str] | None:
    """The UIDs the node gives (or would give) this image's SR and capture, and its parametric
    map where the node makes one: a caller may look each of them up in its archive."""
    if not sop_instance_uid:
        return None
    kinds = ("sr", "sc", "pm") if parametric_map else ("sr", "sc")
    return {kind: instance_uid(kind, sop_instance_uid, model.sha256) for kind in kinds}


def overlay_png(outcome: Outcome, max_side: int = 1024) -> bytes | None:
    """The heat map over the image as PNG bytes (for people; not for diagnosis)."""
    import cv2

    from explain.outputs import overlay

    if outcome.heatmap is None or outcome.heatmap.suppressed:
        return None
    bgr = overlay(outcome.heatmap, outcome.scored.image, max_side=max_side)
    ok, png = cv2.imencode(".png", bgr)
    return png.tobytes() if ok else None


def region_document(region: Region) -> dict[str, Any]:
    """A finding's outline for HTTP callers: source pixels, (column, row), closed."""
    return {"label": region.label, "probability": round(region.probability, 6),
            "fraction_of_peak": region.fraction, "method": region.method,
            "points": [[round(float(c), 2), round(float(r), 2)] for c, r in region.points]}


def score_document(model: LoadedModel, outcome: Outcome, with_overlay: bool = False,
                   parametric_map: bool = False) -> dict:
    """The JSON answer for one scored image (``parametric_map``: the node makes one)."""
    scored = outcome.scored
    doc: dict[str, Any] = scored.result(model)
    doc["probability"] = [round(f.probability * 100, 2) for f in scored.prediction.top(3)]
    doc["result_uids"] = result_uids(model, scored.image.sop_uid, parametric_map)
    if outcome.heatmap is not None:
        doc["explanation"] = outcome.heatmap.summary()
        doc["regions"] = [region_document(r) for r in outcome.regions]
        if with_overlay:
            png = overlay_png(outcome)
            if png is not None:
                doc["explanation"]["overlay_png_base64"] = base64.b64encode(png).decode()
    elif outcome.explain_error:
        doc["explanation"] = {"error": outcome.explain_error}
    return doc
