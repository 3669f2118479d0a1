"""The core every front calls: images in, prediction, explanation and DICOM results out.

Built once per loaded model, so everything constant (predictor, explainer state, result
templates and codes) is made once, not per image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from domain import HeatMap, ResultSet, SourceImage
from inference import LoadedModel, Predictor, Scored

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Everything one image yields: scoring, the explanation and the DICOM result objects."""

    scored: Scored
    heatmap: HeatMap | None = None
    explain_error: str | None = None
    results: ResultSet | None = None

    @property
    def objects(self) -> dict[str, Dataset]:
        """The DICOM result objects by type ("sr", "sc", "pm")."""
        return dict(self.results.items()) if self.results is not None else {}


class Pipeline:
    """Predict, explain (``method`` or ``"none"``) and build SR / SC / parametric map."""

    def __init__(self, model: LoadedModel, method: str = "gradcam", *, sanity: bool = False,
                 batch_size: int = 8, build_dicom: bool = True) -> None:
        self.model = model
        self.method = method
        self.sanity = sanity
        self.predictor = Predictor(model, batch_size)
        self.builder = None
        if build_dicom:
            from dicom_io.results import builder_for

            self.builder = builder_for(model)

    def score(self, images: Sequence[SourceImage]) -> list[Scored]:
        return self.predictor(images)

    def run(self, image: SourceImage, method: str | None = None,
            build_dicom: bool = True) -> Outcome:
        """One image all the way: score, explain, build the result objects."""
        [scored] = self.score([image])
        return self.complete(scored, method, build_dicom)

    def complete(self, scored: Scored, method: str | None = None,
                 build_dicom: bool = True) -> Outcome:
        """Explain (``method``, default the pipeline's) and build the result objects."""
        outcome = Outcome(scored)
        if (method or self.method) != "none":
            from explain import ExplainError, explain

            try:
                with self.model.compute:
                    outcome.heatmap = explain(self.model, scored, method=method or self.method,
                                              sanity=self.sanity)
            except ExplainError as e:
                logger.warning("explanation failed for %s: %s", scored.image.sop_uid, e)
                outcome.explain_error = str(e)
        if build_dicom and self.builder is not None and scored.image.header is not None:
            outcome.results = self.builder.build(scored.image, scored.prediction,
                                                 outcome.heatmap)
        return outcome
