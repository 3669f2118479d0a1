"""The core every front calls: images in, prediction, explanation and DICOM results out.

Built once per loaded model, so everything constant (predictor, explainer state, result
templates and codes) is made once, not per image.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from domain import HeatMap, Region, ResultSet, SourceImage
from inference import LoadedModel, Predictor, Scored

#: Positive findings explained and outlined per image, most probable first (a setting).
EXPLAINED_FINDINGS = 3

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Everything one image yields: scoring, the explanations (most probable finding first),
    the regions of the positive ones, and the DICOM result objects."""

    scored: Scored
    heatmaps: list[HeatMap] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    explain_error: str | None = None
    results: ResultSet | None = None

    @property
    def heatmap(self) -> HeatMap | None:
        """The first explanation: the most probable positive finding's, else the top one's."""
        return self.heatmaps[0] if self.heatmaps else None

    @property
    def objects(self) -> dict[str, Dataset]:
        """The DICOM result objects by type ("sr", "sc", "pm")."""
        return dict(self.results.items()) if self.results is not None else {}


class Pipeline:
    """Predict, explain (``method`` or ``"none"``) and build the SR, capture (and parametric
    map when ``parametric_map``)."""

    def __init__(self, model: LoadedModel, method: str = "gradcam", *, sanity: bool = False,
                 batch_size: int = 8, build_dicom: bool = True,
                 explained_findings: int = EXPLAINED_FINDINGS, parametric_map: bool = False,
                 capture_syntax: str | None = None) -> None:
        if explained_findings < 0:
            raise ValueError(f"explained_findings {explained_findings!r} must be >= 0")
        self.model = model
        self.method = method
        self.sanity = sanity
        self.explained_findings = explained_findings
        self.predictor = Predictor(model, batch_size)
        self.builder = None
        if build_dicom:
            from dicom_io.results import builder_for

            options = {"capture_syntax": capture_syntax} if capture_syntax else {}
            self.builder = builder_for(model, parametric_map=parametric_map, **options)

    def score(self, images: Sequence[SourceImage]) -> list[Scored]:
        return self.predictor(images)

    def run(self, image: SourceImage, method: str | None = None,
            build_dicom: bool = True) -> Outcome:
        """One image all the way: score, explain, build the result objects."""
        [scored] = self.score([image])
        return self.complete(scored, method, build_dicom)

    def complete(self, scored: Scored, method: str | None = None, build_dicom: bool = True,
                 timestamp: datetime.datetime | None = None) -> Outcome:
        """Explain (``method``, default the pipeline's), outline and build the results, dated
        ``timestamp`` (default now; the receive time makes a repeat identical)."""
        outcome = Outcome(scored)
        method = method or self.method
        if method != "none":
            from explain import ExplainError, explain_labels
            from explain.regions import region_of

            # the positive findings, most probable first; none positive: the top one's map
            labels = scored.prediction.labels_to_explain(self.explained_findings)
            try:
                with self.model.compute:
                    outcome.heatmaps = explain_labels(self.model, scored, labels, method,
                                                      sanity=self.sanity)
            except ExplainError as e:
                logger.warning("explanation failed for %s: %s", scored.image.sop_uid, e)
                outcome.explain_error = str(e)
            findings = {f.label: f for f in scored.prediction.findings}
            for heatmap in outcome.heatmaps:
                finding = findings[heatmap.label]
                if finding.positive and self.explained_findings > 0:
                    region = region_of(heatmap, finding.probability, finding.threshold)
                    if region is not None:
                        outcome.regions.append(region)
        if build_dicom and self.builder is not None and scored.image.header is not None:
            outcome.results = self.builder.build(scored.image, scored.prediction,
                                                 outcome.heatmaps, regions=outcome.regions,
                                                 timestamp=timestamp)
        return outcome
