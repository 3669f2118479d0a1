"""One call from a scored image to its result objects: SR, heat-map capture, parametric map.

The SR always; the capture when a heat map may be shown; the parametric map only when asked
for (``parametric_map``): no viewer tried shows one for a projection radiograph, and it was
most of the bytes the node sent per image.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from dicom_io.errors import DicomIOError, ResultBuildError
from dicom_io.results import uids
from dicom_io.results._common import (
    ModelIdentity,
    ModelLike,
    check_heatmap,
    normalise_timestamp,
)
from dicom_io.results.pm import build_pm
from dicom_io.results.sc import JPEG_BASELINE, build_sc, check_transfer_syntax
from dicom_io.results.source import SourceContext, source_context
from dicom_io.results.sr import FindingsReportTemplate, finding_values
from domain import HeatMap, Prediction, Region, ResultSet, SourceImage

logger = logging.getLogger(__name__)

#: Series Number of each result type (all results of one source series share a series).
SERIES_NUMBERS: dict[str, int] = {"sr": 9001, "sc": 9002, "pm": 9003}
NOT_FOR_DIAGNOSTIC_USE = "not for diagnostic use"
#: Heat-map values may exceed their range by this much (float noise) before being refused.
RANGE_TOLERANCE = 1e-3


def _heatmap_values(heatmap: HeatMap, source: SourceContext) -> tuple[np.ndarray, bool]:
    """The values of a checked heat map as float32 on the source grid, checked and clipped."""
    values = heatmap.values
    if values.shape != (source.rows, source.columns):
        raise ValueError(
            f"heat map shape {values.shape} is not the source grid "
            f"{(source.rows, source.columns)}"
        )
    values = values.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError("heat map values contain NaN or infinity")
    signed = bool(heatmap.signed)
    low = -1.0 if signed else 0.0
    vmin, vmax = float(values.min()), float(values.max())
    if vmin < low - RANGE_TOLERANCE or vmax > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"heat map values span [{vmin:.4g}, {vmax:.4g}]; a "
            f"{'signed' if signed else 'unsigned'} map must lie in [{low:g}, 1]"
        )
    if vmin < low or vmax > 1.0:  # within the tolerance: clipped (a copy)
        values = np.clip(values, low, 1.0)
    return np.ascontiguousarray(values, dtype=np.float32), signed


class ResultBuilder:
    """Builds the result objects of images scored by one model.

    Create one per loaded model: the SR parts that do not change (codes, observer and device
    context, algorithm identification, coding scheme declarations) are built here, once.
    ``build`` is thread-safe.
    """

    def __init__(self, model: ModelIdentity | ModelLike, *,
                 series_numbers: dict[str, int] | None = None, parametric_map: bool = False,
                 capture_syntax: str = JPEG_BASELINE) -> None:
        """``model``: a :class:`ModelIdentity`, or a loaded model (``inference.LoadedModel``,
        read through its ``card`` and ``sha256``). ``parametric_map``: also build the float
        parametric map; ``capture_syntax``: the capture's transfer syntax (one of
        :data:`~dicom_io.results.sc.SC_TRANSFER_SYNTAXES`)."""
        self.parametric_map = bool(parametric_map)
        self.capture_syntax = check_transfer_syntax(capture_syntax)
        self.model = ModelIdentity.of(model)
        self.template = FindingsReportTemplate(self.model, self.model.labels)
        numbers = dict(SERIES_NUMBERS)
        for kind, number in (series_numbers or {}).items():
            if kind not in SERIES_NUMBERS:
                raise ValueError(f"series_numbers key {kind!r}: use one of {tuple(SERIES_NUMBERS)}")
            if not isinstance(number, int) or not 1 <= number <= 2**31 - 1:
                raise ValueError(f"series number {number!r} of {kind!r} must be a positive int")
            numbers[kind] = number
        self.series_numbers = numbers

    def prepare(self) -> bool:
        """Build what the first SR would otherwise build (the label stencils); True if the
        SRs will be filled from stencils."""
        return self.template.prepare()

    def series_description(self, kind: str, label: str | None = None) -> str:
        model = self.model.name
        if kind == "sr":
            text = f"AI findings {model}"
        elif kind == "sc":
            text = f"AI heat map {label}"
        else:
            text = f"AI heat map values {label}"
        suffix = f" - {NOT_FOR_DIAGNOSTIC_USE}"
        return text[: 64 - len(suffix)].rstrip() + suffix

    def _uids(self, kind: str, source: SourceContext) -> dict[str, Any]:
        return {
            "series_instance_uid": uids.series_uid(kind, source.series_uid, self.model.sha256),
            "sop_instance_uid": uids.instance_uid(kind, source.sop_uid, self.model.sha256),
            "series_number": self.series_numbers[kind],
        }

    def build(
        self,
        image: SourceImage,
        prediction: Prediction,
        heatmaps: HeatMap | Sequence[HeatMap] | None = None,
        *,
        regions: Sequence[Region] = (),
        timestamp: datetime.datetime | None = None,
    ) -> ResultSet:
        """The SR (always, with ``regions`` as planar ROI groups) and, when a heat map passed
        its checks, the capture (the first such map, outlined ``regions``) and, if asked
        for, the parametric map of that map.

        ``heatmaps``: the explained findings' maps, most probable first.

        Raises:
            TypeError, ValueError: bad arguments (the message names the value).
            ResultBuildError: the source cannot carry results (PNG, missing UIDs), or
                highdicom refused to build an object.
        """
        when = normalise_timestamp(timestamp)
        # Once per image: the header is read, trimmed and copied here, the findings checked
        # here; the objects share both.
        source = source_context(image)
        findings = finding_values(prediction)
        maps = _as_list(heatmaps)
        for heatmap in maps:
            check_heatmap(heatmap)
        by_label = _regions_by_label(regions)
        shown = next((h for h in maps if not h.suppressed), None)
        if shown is None:
            note = ("no heat map" if not maps else
                    f"heat map suppressed: {maps[0].suppressed_reason or 'sanity check failed'}")
        else:
            note = None
            values, signed = _heatmap_values(shown, source)
        try:
            sr = self.template.build(
                source, prediction, maps, regions=by_label,
                parametric_map=self.parametric_map and shown is not None, when=when,
                findings=findings, series_description=self.series_description("sr"),
                **self._uids("sr", source),
            )
            sc = pm = None
            if shown is not None:
                label, method = shown.label.strip(), shown.method.strip()
                common = {"label": label, "method": method, "signed": bool(signed),
                          "model": self.model, "when": when}
                sc = build_sc(source, values, **common,
                              regions=list(by_label.values()),
                              findings_above_threshold=any(f[3] for f in findings),
                              probability=prediction.probability(label),
                              transfer_syntax=self.capture_syntax,
                              series_description=self.series_description("sc", label),
                              **self._uids("sc", source))
                if self.parametric_map:
                    pm = build_pm(source, values, **common,
                                  series_description=self.series_description("pm", label),
                                  **self._uids("pm", source))
        except DicomIOError:
            raise
        except Exception as e:  # arguments are checked above: this is highdicom or pydicom
            raise ResultBuildError("result-build", f"{type(e).__name__}: {e}") from e
        return ResultSet(sr=sr, sc=sc, pm=pm, heatmap_note=note)


def _as_list(heatmaps: HeatMap | Sequence[HeatMap] | None) -> list[HeatMap]:
    if heatmaps is None:
        return []
    if isinstance(heatmaps, HeatMap):
        return [heatmaps]
    if isinstance(heatmaps, (str, bytes)) or not isinstance(heatmaps, Sequence):
        raise TypeError(f"heatmaps must be a HeatMap or a sequence of them, not "
                        f"{type(heatmaps).__name__}")
    return list(heatmaps)


def _regions_by_label(regions: Sequence[Region]) -> dict[str, Region]:
    out: dict[str, Region] = {}
    for region in regions:
        if not isinstance(region, Region):
            raise TypeError(f"region {region!r} must be a Region, not {type(region).__name__}")
        if region.label in out:
            raise ValueError(f"two regions for label {region.label!r}")
        out[region.label] = region
    return out


_BUILDERS: OrderedDict[tuple[ModelIdentity, bool, str], ResultBuilder] = OrderedDict()
_BUILDERS_LOCK = threading.Lock()
_BUILDERS_MAX = 8


def builder_for(model: ModelIdentity | ModelLike, *, parametric_map: bool = False,
                capture_syntax: str = JPEG_BASELINE) -> ResultBuilder:
    """The cached :class:`ResultBuilder` of ``model`` (keyed by its :class:`ModelIdentity`:
    weights hash, name, version, manufacturer, intended use, labels) and the options."""
    key = (ModelIdentity.of(model), bool(parametric_map), capture_syntax)
    with _BUILDERS_LOCK:
        builder = _BUILDERS.get(key)
        if builder is not None:
            _BUILDERS.move_to_end(key)
            return builder
    builder = ResultBuilder(key[0], parametric_map=key[1], capture_syntax=capture_syntax)
    with _BUILDERS_LOCK:
        _BUILDERS[key] = builder
        while len(_BUILDERS) > _BUILDERS_MAX:
            _BUILDERS.popitem(last=False)
    return builder


def build_results(
    image: SourceImage,
    prediction: Prediction,
    model: ModelIdentity | ModelLike,
    heatmaps: HeatMap | Sequence[HeatMap] | None = None,
    *,
    regions: Sequence[Region] = (),
    parametric_map: bool = False,
    timestamp: datetime.datetime | None = None,
) -> ResultSet:
    """:meth:`ResultBuilder.build` with the builder cached per model and options."""
    return builder_for(model, parametric_map=parametric_map).build(
        image, prediction, heatmaps, regions=regions, timestamp=timestamp)
