"""Explanations of a model's findings: Grad-CAM (torch hooks; Grad-CAM++ and guided methods
through medcam) and SHAP, checked for sanity.

``explain(model, scored, label, method) -> HeatMap`` is the one entry point; the map lies on
the source image's pixel grid. ``write_outputs`` writes ``heatmap.png`` and ``heatmap.npy``.
"""

from explain.api import BACKENDS, METHODS, explain, explain_batch, explain_labels, method_name
from explain.errors import ExplainError
from explain.outputs import overlay, write_outputs
from explain.sanity import Randomisation
from explain.target import default_layer

__all__ = [
    "BACKENDS",
    "METHODS",
    "ExplainError",
    "Randomisation",
    "default_layer",
    "explain",
    "explain_batch",
    "explain_labels",
    "method_name",
    "overlay",
    "write_outputs",
]
