"""The model as the data scientist trained it: loading, preprocessing, batched prediction."""

from inference.card import PADCHEST_LABELS, ModelCard, Preprocessing, default_card, read_card
from inference.errors import InferenceError, ModelCardError, ModelLoadError
from inference.factory import LoadedModel, configure_threads, load_model, sha256_file
from inference.predict import (
    Predictor,
    Scored,
    post_process,
    predict,
    result_document,
)
from inference.preprocess import Geometry, pre_process, pre_process_batch

__all__ = [
    "PADCHEST_LABELS",
    "Geometry",
    "InferenceError",
    "LoadedModel",
    "ModelCard",
    "ModelCardError",
    "ModelLoadError",
    "Predictor",
    "Preprocessing",
    "Scored",
    "configure_threads",
    "default_card",
    "load_model",
    "post_process",
    "pre_process",
    "pre_process_batch",
    "predict",
    "read_card",
    "result_document",
    "sha256_file",
]
