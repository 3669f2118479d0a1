"""One call from a scored image to its result objects: SR, heat-map capture, parametric map."""

from __future__ import annotations

import datetime
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset

from dicom_io.errors import DicomIOError, ResultBuildError
from dicom_io.image import SourceImage
from dicom_io.results import uids
from dicom_io.results._common import (
    ModelIdentity,
    SourceContext,
    normalise_timestamp,
    source_context,
)
from dicom_io.results.pm import build_pm
from dicom_io.results.sc import build_sc
from dicom_io.results.sr import FindingsReportTemplate, finding_values

if TYPE_CHECKING:  # dicom_io does not import inference or explain at run time
    from explain.heatmap import HeatMap
    from inference.factory import LoadedModel
    from inference.predict import Prediction

logger = logging.getLogger(__name__)

#: Series Number of each result type (all results of one source series share a series).
SERIES_NUMBERS: dict[str, int] = {"sr": 9001, "sc": 9002, "pm": 9003}
#: File name of each result type in :meth:`ResultSet.write`.
FILE_NAMES: dict[str, str] = {"sr": "sr.dcm", "sc": "heatmap_sc.dcm", "pm": "heatmap_pm.dcm"}
NOT_FOR_DIAGNOSTIC_USE = "not for diagnostic use"
#: Heat-map values may exceed their range by this much (float noise) before being refused.
RANGE_TOLERANCE = 1e-3


@dataclass
class ResultSet:
    """The result objects of one image: ``sr`` always, ``sc``/``pm`` when a heat map is shown.

    ``heatmap_note`` says why there is no capture or map (no heat map, or suppressed).
    """

    sr: Dataset
    sc: Dataset | None = None
    pm: Dataset | None = None
    heatmap_note: str | None = None
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def part10(self, kind: str) -> bytes:
        """The ``kind`` object as a DICOM Part 10 file (Explicit VR LE), encoded once."""
        data = self._encoded.get(kind)
        if data is None:
            ds = dict(self.items()).get(kind)
            if ds is None:
                raise KeyError(f"no {kind!r} object in this result set")
            buffer = io.BytesIO()
            dcmwrite(buffer, ds, enforce_file_format=True)
            data = self._encoded[kind] = buffer.getvalue()
        return data

    def items(self) -> list[tuple[str, Dataset]]:
        """``(type, dataset)`` of the objects present, SR first."""
        return [(k, ds) for k, ds in (("sr", self.sr), ("sc", self.sc), ("pm", self.pm))
                if ds is not None]

    @property
    def datasets(self) -> list[Dataset]:
        return [ds for _, ds in self.items()]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``sr.dcm``, ``heatmap_sc.dcm``, ``heatmap_pm.dcm`` (those present) as
        DICOM Part 10 files into ``out_dir`` (created); return ``{type: path}``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for kind, _ in self.items():
            path = out / FILE_NAMES[kind]
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(self.part10(kind))
            tmp.replace(path)
            written[kind] = path
        return written


def _heatmap_values(heatmap: Any, source: SourceContext) -> tuple[np.ndarray, bool]:
    """The heat map's values as float32 on the source grid, checked and clipped."""
    values = getattr(heatmap, "values", None)
    if not isinstance(values, np.ndarray):
        raise TypeError(
            f"heatmap must be a HeatMap (with .values ndarray), not {type(heatmap).__name__}"
        )
    if values.shape != (source.rows, source.columns):
        raise ValueError(
            f"heat map shape {values.shape} is not the source grid "
            f"{(source.rows, source.columns)}"
        )
    values = values.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError("heat map values contain NaN or infinity")
    signed = bool(getattr(heatmap, "signed", False))
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


def _heatmap_text(heatmap: Any, name: str) -> str:
    value = getattr(heatmap, name, None)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"heat map {name} {value!r} must be a non-empty str")
    return value.strip()


class ResultBuilder:
    """Builds the result objects of images scored by one model.

    Create one per loaded model: the SR parts that do not change (codes, observer and device
    context, algorithm identification, coding scheme declarations) are built here, once.
    ``build`` is thread-safe.
    """

    def __init__(self, model: LoadedModel, *, series_numbers: dict[str, int] | None = None) -> None:
        self.model = ModelIdentity.from_model(model)
        labels = tuple(getattr(model.card, "labels", ()) or ())
        self.template = FindingsReportTemplate(self.model, labels)
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
        heatmap: HeatMap | None = None,
        *,
        timestamp: datetime.datetime | None = None,
    ) -> ResultSet:
        """The SR (always) and, for a heat map that passed its checks, the overlay capture
        and the parametric map.

        Raises:
            TypeError, ValueError: bad arguments (the message names the value).
            ResultBuildError: the source cannot carry results (PNG, missing UIDs), or
                highdicom refused to build an object.
        """
        when = normalise_timestamp(timestamp)
        source = source_context(image)
        finding_values(prediction)
        values = signed = None
        note = "no heat map"
        label = method = ""
        if heatmap is not None:
            if not isinstance(getattr(heatmap, "values", None), np.ndarray):
                raise TypeError(
                    f"heatmap must be a HeatMap (with .values ndarray), "
                    f"not {type(heatmap).__name__}"
                )
            label = _heatmap_text(heatmap, "label")
            method = _heatmap_text(heatmap, "method")
            if getattr(heatmap, "suppressed", False):
                reason = getattr(heatmap, "suppressed_reason", None) or "sanity check failed"
                note = f"heat map suppressed: {reason}"
            else:
                values, signed = _heatmap_values(heatmap, source)
                note = None
        try:
            sr = self.template.build(
                source, prediction, heatmap, when=when,
                series_description=self.series_description("sr"), **self._uids("sr", source),
            )
            sc = pm = None
            if values is not None:
                common = {"label": label, "method": method, "signed": bool(signed),
                          "model": self.model, "when": when}
                sc = build_sc(source, values, **common,
                              series_description=self.series_description("sc", label),
                              **self._uids("sc", source))
                pm = build_pm(source, values, **common,
                              series_description=self.series_description("pm", label),
                              **self._uids("pm", source))
        except DicomIOError:
            raise
        except Exception as e:  # arguments are checked above: this is highdicom or pydicom
            raise ResultBuildError("result-build", f"{type(e).__name__}: {e}") from e
        return ResultSet(sr=sr, sc=sc, pm=pm, heatmap_note=note)


_BUILDERS: OrderedDict[tuple[str, Any], ResultBuilder] = OrderedDict()
_BUILDERS_LOCK = threading.Lock()
_BUILDERS_MAX = 8


def builder_for(model: LoadedModel) -> ResultBuilder:
    """The cached :class:`ResultBuilder` of ``model`` (keyed by weights hash and card)."""
    card, sha = getattr(model, "card", None), getattr(model, "sha256", None)
    if card is None or sha is None:
        raise TypeError(
            f"model must be a LoadedModel (with .card and .sha256), not {type(model).__name__}"
        )
    key = (str(sha), card)
    with _BUILDERS_LOCK:
        builder = _BUILDERS.get(key)
        if builder is not None:
            _BUILDERS.move_to_end(key)
            return builder
    builder = ResultBuilder(model)
    with _BUILDERS_LOCK:
        _BUILDERS[key] = builder
        while len(_BUILDERS) > _BUILDERS_MAX:
            _BUILDERS.popitem(last=False)
    return builder


def build_results(
    image: SourceImage,
    prediction: Prediction,
    model: LoadedModel,
    heatmap: HeatMap | None = None,
    *,
    timestamp: datetime.datetime | None = None,
) -> ResultSet:
    """:meth:`ResultBuilder.build` with the builder cached per model."""
    return builder_for(model).build(image, prediction, heatmap, timestamp=timestamp)
