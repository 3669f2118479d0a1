"""The types every layer shares: a source image, a prediction, a heat map, a result set.

At the bottom of the project: imports nothing of it (numpy and pydicom only), so ``dicom_io``,
``inference``, ``explain``, the core and every front can name them without importing each
other.
"""

from domain.heatmap import HeatMap
from domain.image import SourceImage
from domain.methods import EXPLAIN_CHOICES, SERVED_METHODS, ExplainChoice, check_explain
from domain.prediction import Finding, Prediction
from domain.region import Region
from domain.results import FILE_NAMES, ResultSet

__all__ = [
    "EXPLAIN_CHOICES",
    "FILE_NAMES",
    "SERVED_METHODS",
    "ExplainChoice",
    "Finding",
    "HeatMap",
    "Prediction",
    "Region",
    "ResultSet",
    "SourceImage",
    "check_explain",
]
