"""``pre_process`` / ``predict`` / ``post_process``: plain functions that run without a server.

:class:`Predictor` strings them together for batches of images; every front (CLI, DIMSE,
DICOMweb, HTTP, Azure) calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.image import SourceImage
from domain.prediction import Finding, Prediction
from inference.card import ModelCard
from inference.factory import LoadedModel
from inference.preprocess import Geometry, pre_process_batch

logger = logging.getLogger(__name__)


def predict(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """Probabilities ``(N, outputs)`` for a preprocessed batch."""
    return model.probabilities(batch)


def post_process(probabilities: np.ndarray, card: ModelCard) -> Prediction:
    """One row of probabilities to a :class:`Prediction` (unreported outputs dropped)."""
    return Prediction(tuple(
        Finding(label, float(probabilities[i]), float(t)) for i, label, t in card.reported
    ))


@dataclass
class Scored:
    """One image through the model: the prediction and the geometry of its model input."""

    image: SourceImage
    prediction: Prediction
    geometry: Geometry
    model_input: np.ndarray  # (1, size, size) float32

    def result(self, model: LoadedModel) -> dict[str, Any]:
        """The result document (``result.json``, HTTP ``/score`` core)."""
        return result_document(model, self.image, self.prediction)


def result_document(model: LoadedModel, image: SourceImage, prediction: Prediction) -> dict:
    top = prediction.top(3)
    return {
        "model": model.info,
        "source": {"name": image.name, **image.source_uids()},
        "findings": [f.to_dict() for f in prediction.findings],
        "positive_labels": [f.label for f in prediction.positives],
        "top_three_labels": [f.label for f in top],
        "preprocessing": image.steps,
    }


class Predictor:
    """Runs images through one loaded model in batches of at most ``batch_size``."""

    def __init__(self, model: LoadedModel, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self.model = model
        self.batch_size = batch_size

    def __call__(self, images: Sequence[SourceImage]) -> list[Scored]:
        out: list[Scored] = []
        card = self.model.card
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch, geometries = pre_process_batch(
                [(im.pixels, im.maxval) for im in chunk], card.preprocessing
            )
            probabilities = predict(self.model, batch)
            for i, image in enumerate(chunk):
                out.append(Scored(image, post_process(probabilities[i], card), geometries[i],
                                  batch[i]))
        return out
